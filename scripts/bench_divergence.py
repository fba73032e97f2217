"""Benchmark the eps estimators of gmcert.eps on held-out-sized synthetic latents.

For each dimension d (default 64 and 768), on n = 10k latents:

* each estimator alone on one class of n points against a known Gaussian (worst case: the
  neighbour searches are n x n): knn (float32 search + float64 refinement, and pure float64
  for comparison), plugin, dv (generative), dv_logistic, Mardia's test;
* ``estimate_eps`` for a K = 10 class Student-t mixture (n / K per class) with its bootstrap.

The data are Student-t classes (gmcert.data.student_t) against the moment-matched Gaussian, so
every estimate is printed beside the exact KL. Timings are wall-clock seconds on the device
given (CPU by default); the load average is recorded because a shared machine inflates them.

With ``--calibrated``: the run's whole eps stage (knn, plugin, dv with the bootstrap, n_boot 50,
and the null calibration, 5 samples of Q) on 60,000 latents of dimension 32 in 10 classes,
with and without the null, all points and max_per_class=2000
(outputs/bench/divergence_calibrated.json; target: under 60 s on 2 cores).

Usage::

    python scripts/bench_divergence.py [--dims 64 768] [--n 10000] [--out outputs/bench/...]
    python scripts/bench_divergence.py --calibrated [--null 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gmcert.data.student_t import (
    kl_student_t_to_gaussian,
    moment_matched_covariance,
    sample_student_t_mixture,
)
from gmcert.eps import (
    NeighbourSearch,
    estimate_eps,
    kl_dv_gaussian,
    kl_knn,
    kl_plugin_gaussian,
    label_kl,
    mardia_test,
)

DEFAULT_OUT = Path("outputs/bench/divergence.json")
CALIBRATED_OUT = Path("outputs/bench/divergence_calibrated.json")


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _write_json_atomic(obj: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def bench_dimension(
    d: int, n: int, *, nu: float, device: str, seed: int, n_boot: int, skip: set[str]
) -> dict:
    rng = np.random.default_rng(seed + d)
    scale = np.eye(d)
    cov = moment_matched_covariance(scale, nu)
    truth_class = kl_student_t_to_gaussian(scale, nu)
    out: dict = {"d": d, "n": n, "nu": nu, "true_kl_per_class": truth_class, "single_class": {}}

    # One class of n points: the neighbour searches are n x n (K classes cost ~1/K of this).
    X, _ = sample_student_t_mixture(n, np.zeros((1, d)), scale, nu, random_state=rng)
    mean = np.zeros(d)
    Y = rng.standard_normal((n, d)) @ np.linalg.cholesky(cov).T
    single = out["single_class"]
    search = NeighbourSearch(device=device)
    search64 = NeighbourSearch(device=device, precision="float64")
    runs = {
        "knn": lambda: kl_knn(X, Y, search=search),
        "knn_float64_search": lambda: kl_knn(X, Y, search=search64),
        "plugin": lambda: kl_plugin_gaussian(X, mean, cov, search=search),
        "dv": lambda: kl_dv_gaussian(X, mean, cov, random_state=0),
        "dv_logistic": lambda: kl_dv_gaussian(
            X, mean, cov, discriminator="logistic", random_state=0
        ),
    }
    for name, fn in runs.items():
        if name in skip:
            continue
        est, sec = _timed(fn)
        single[name] = {"seconds": round(sec, 3), "estimate": est.estimate}
        print(
            f"d={d:4d} {name:20s} {sec:8.2f} s  estimate {est.estimate:9.4f}"
            f"  (true {truth_class:.4f})",
            flush=True,
        )
    if "mardia" not in skip:
        res, sec = _timed(lambda: mardia_test(X, device=device))
        single["mardia"] = {
            "seconds": round(sec, 3),
            "kurtosis_z": res.get("kurtosis_z"),
            "skewness_pvalue": res.get("skewness_pvalue"),
        }
        print(f"d={d:4d} {'mardia':20s} {sec:8.2f} s", flush=True)

    # estimate_eps on a K = 10 mixture with n / K points per class.
    K = 10
    means = 3.0 * rng.standard_normal((K, d))  # separation is irrelevant to per-class KL
    priors = np.full(K, 1.0 / K)
    Z, y = sample_student_t_mixture(n, means, scale, nu, priors, random_state=rng)
    res, sec = _timed(
        lambda: estimate_eps(
            Z,
            y,
            means=means,
            covariances=np.stack([cov] * K),
            priors=priors,
            n_boot=n_boot,
            random_state=seed,
            device=device,
        )
    )
    truth_joint = label_kl(y, priors) + truth_class
    out["estimate_eps_K10"] = {
        "seconds": round(sec, 3),
        "n_boot": n_boot,
        "true_joint_kl": truth_joint,
        "joint": res["joint"],
        "label_term": res["label_term"],
    }
    print(
        f"d={d:4d} {'estimate_eps K=10':20s} {sec:8.2f} s  joint "
        + ", ".join(f"{k} {v['estimate']:.4f}" for k, v in res["joint"].items())
        + f"  (true {truth_joint:.4f})",
        flush=True,
    )
    return out


def bench_calibrated(
    n: int, d: int, *, K: int, nu: float, n_boot: int, null: int, seed: int, device: str
) -> dict:
    """The run's whole eps stage at one size: every default estimator (knn, plugin, dv) with its
    bootstrap and the null calibration, on n latents of dimension d in K Student-t classes
    against the moment-matched Gaussians, all points used (max_per_class=None) and subsampled
    as a run does by default (max_per_class=2000); the same without the null, to give the
    calibration's own cost."""
    rng = np.random.default_rng(seed)
    scale = np.eye(d) * (nu - 2) / nu  # class covariance I
    means = 3.0 * rng.standard_normal((K, d))
    priors = np.full(K, 1.0 / K)
    Z, y = sample_student_t_mixture(n, means, scale, nu, priors, random_state=rng)
    truth = label_kl(y, priors) + kl_student_t_to_gaussian(scale, nu)
    cases = []
    for max_per_class in (None, 2000):
        for replicates in (null, 0):
            load = os.getloadavg()[0]
            start, cpu_start = time.perf_counter(), time.process_time()
            res = estimate_eps(
                Z,
                y,
                means=means,
                covariances=np.eye(d),
                priors=priors,
                n_boot=n_boot,
                random_state=seed,
                device=device,
                max_per_class=max_per_class,
                null_replicates=replicates,
            )
            sec = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            case = {
                "max_per_class": max_per_class,
                "null_replicates": replicates,
                "seconds": round(sec, 2),
                # CPU seconds of this process, all threads: with 2 cores, cpu / 2 is about the
                # wall time an idle machine would show; the load average says how busy it was
                "cpu_seconds": round(cpu, 2),
                "loadavg_1min_before_after": [load, os.getloadavg()[0]],
                "true_eps": truth,
                "raw": {e: v["estimate"] for e, v in res["joint"].items()},
            }
            if res["null"]:
                case["corrected"] = {e: v["corrected"] for e, v in res["null"]["joint"].items()}
            cases.append(case)
            print(
                f"n={n} d={d} max_per_class={max_per_class} null={replicates}: {sec:6.1f} s, "
                f"cpu {cpu:6.1f} s "
                f"(load {case['loadavg_1min_before_after'][0]:.1f} -> "
                f"{case['loadavg_1min_before_after'][1]:.1f})",
                flush=True,
            )
    return {
        "n": n,
        "d": d,
        "K": K,
        "nu": nu,
        "n_boot": n_boot,
        "target_seconds": 60,
        "cases": cases,
    }


def run(
    dims: list[int],
    n: int,
    out_path: Path,
    *,
    nu: float = 10.0,
    device: str = "cpu",
    seed: int = 0,
    n_boot: int = 500,
    skip: set[str] | None = None,
    blas_threads: int | None = None,
) -> dict:
    skip = skip or set()
    report = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "blas_threads_cap": blas_threads,
            "device": device,
            "loadavg_start": list(os.getloadavg()),
        },
        "settings": {"n": n, "nu": nu, "seed": seed, "n_boot": n_boot, "skipped": sorted(skip)},
        "results": [],
    }
    for d in dims:
        report["results"].append(
            bench_dimension(d, n, nu=nu, device=device, seed=seed, n_boot=n_boot, skip=skip)
        )
        report["host"]["loadavg_end"] = list(os.getloadavg())
        _write_json_atomic(report, out_path)  # partial results survive a later failure
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 768])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--nu", type=float, default=10.0)
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="single-class runs to skip, e.g. dv_logistic knn_float64_search",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="cap BLAS/OpenMP threads (threadpoolctl): on an oversubscribed "
        "machine multithreaded LAPACK spin-waits and slows down ~10x",
    )
    parser.add_argument(
        "--calibrated",
        action="store_true",
        help="instead: the whole eps stage (3 estimators, bootstrap, null calibration) on "
        "--n latents (default here 60,000) of dimension --dims[0] (default 32), K = 10",
    )
    parser.add_argument("--null", type=int, default=5, help="null replicates (--calibrated)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.calibrated:
        n = 60_000 if args.n == parser.get_default("n") else args.n
        d = 32 if args.dims == parser.get_default("dims") else args.dims[0]
        out = args.out or CALIBRATED_OUT
        report = {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "device": args.device,
            },
            "result": bench_calibrated(
                n,
                d,
                K=10,
                nu=args.nu,
                n_boot=50 if args.n_boot == parser.get_default("n_boot") else args.n_boot,
                null=args.null,
                seed=args.seed,
                device=args.device,
            ),
        }
        _write_json_atomic(report, out)
        print(f"wrote {out}")
        return
    args.out = args.out or DEFAULT_OUT
    kwargs = dict(
        nu=args.nu,
        device=args.device,
        seed=args.seed,
        n_boot=args.n_boot,
        skip=set(args.skip),
        blas_threads=args.blas_threads,
    )
    if args.blas_threads is None:
        run(args.dims, args.n, args.out, **kwargs)
    else:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.blas_threads):
            run(args.dims, args.n, args.out, **kwargs)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
