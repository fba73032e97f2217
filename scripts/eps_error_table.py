"""Each eps estimator's error against the exact KL, raw and null-corrected, over dimension and
points per class: experiment=eps_controlled's Student-t classes at the scale of real latents.

The data are eps_controlled's (dataset ``distorted``: K Student-t classes t_nu(mu_k, S) with
identity covariance, the experiment's class count and separation), drawn with ``n`` points per
class in ``d`` dimensions. Q is the moment-matched mixture pi_k N(mu_k, I), so the true
KL(P || Q) is known in closed form: the label term of the drawn labels plus the Student t's
negentropy (gmcert.data.student_t), with nu chosen per d so that the per-class KL equals
``--target`` nats (the same difficulty at every d). Every estimator is run with its bootstrap
and ``--null`` samples of Q (gmcert.eps.null), as a run with divergence.enabled=true does.

An estimator is marked trustworthy in a cell when its corrected error is within
``--tolerance`` nats of the truth (and, for the whole column, when it also resolves eps: its
null spread is below the eps it reports).

Usage::

    python scripts/eps_error_table.py [--dims 4 10 32 128] [--n 500 1000 2000 6000]
        [--target 0.5] [--null 3] [--out outputs/eps_error_table.json]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from scipy import optimize

from gmcert.data.student_t import kl_student_t_to_gaussian, sample_student_t_mixture
from gmcert.data.synthetic import synthetic_parameters
from gmcert.eps import estimate_eps, label_kl
from gmcert.io import write_json

EXPERIMENT = Path(__file__).resolve().parents[1] / "configs/experiment/eps_controlled.yaml"
DEFAULT_OUT = Path("outputs/eps_error_table.json")
ESTIMATORS = ("knn", "plugin", "dv")


def nu_for_kl(d: int, target: float) -> float:
    """Degrees of freedom whose Student t is ``target`` nats from its moment-matched Gaussian
    (the negentropy decreases in nu, from +inf at nu -> 2 to 0 at nu = inf)."""
    eye = np.eye(d)
    return float(
        optimize.brentq(
            lambda nu: kl_student_t_to_gaussian(eye, nu) - target, 2.0 + 1e-6, 1e7, xtol=1e-6
        )
    )


def one_cell(d: int, n: int, *, target: float, null: int, n_boot: int, seed: int) -> dict:
    experiment = OmegaConf.load(EXPERIMENT).dataset
    K = int(experiment.num_classes)
    nu = nu_for_kl(d, target)
    means, _ = synthetic_parameters(
        num_classes=K,
        dim=d,
        separation=float(experiment.separation),
        covariance="isotropic",
        seed=seed,
    )
    scale = np.eye(d) * (nu - 2) / nu  # class covariance = I, as dataset=distorted makes it
    priors = np.full(K, 1.0 / K)
    Z, y = sample_student_t_mixture(K * n, means, scale, nu, priors, random_state=seed + 1)
    truth = label_kl(y, priors) + kl_student_t_to_gaussian(scale, nu)
    start = time.perf_counter()
    result = estimate_eps(
        Z,
        y,
        means=means,
        covariances=np.eye(d),
        priors=priors,
        estimators=ESTIMATORS,
        n_boot=n_boot,
        random_state=seed,
        max_per_class=None,
        null_replicates=null,
    )
    seconds = time.perf_counter() - start
    cell = {"d": d, "n_per_class": n, "K": K, "nu": nu, "true_eps": truth, "seconds": seconds}
    for name, v in result["null"]["joint"].items():
        cell[name] = {
            "raw": v["raw"],
            "raw_error": v["raw"] - truth,
            "null_mean": v["null_mean"],
            "null_std": v["null_std"],
            "corrected": v["corrected"],
            "corrected_error": v["corrected"] - truth,
            "corrected_interval": [v["ci_low"], v["ci_high"]],
            "covers_truth": v["ci_low"] <= truth <= v["ci_high"],
            "resolves": v["resolves"],
        }
    return cell


def trusted(cell: dict, tolerance: float) -> list[str]:
    return [
        e
        for e in ESTIMATORS
        if abs(cell[e]["corrected_error"]) <= tolerance and cell[e]["resolves"]
    ]


def markdown(cells: list[dict], tolerance: float) -> str:
    head = (
        "| d | n / class | true eps | "
        + " | ".join(f"{e} raw err | {e} corr. err" for e in ESTIMATORS)
        + f" | within {tolerance:g} nats (corrected) |"
    )
    lines = [head, "|" + " --- |" * (4 + 2 * len(ESTIMATORS))]
    for c in cells:
        errors = " | ".join(
            f"{c[e]['raw_error']:+.2f} | {c[e]['corrected_error']:+.2f}" for e in ESTIMATORS
        )
        lines.append(
            f"| {c['d']} | {c['n_per_class']:,} | {c['true_eps']:.3f} | {errors} | "
            f"{', '.join(trusted(c, tolerance)) or 'none'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[4, 10, 32, 128])
    parser.add_argument("--n", type=int, nargs="+", default=[500, 1000, 2000, 6000])
    parser.add_argument("--target", type=float, default=0.5, help="true KL per class (nats)")
    parser.add_argument("--null", type=int, default=3, help="null replicates per cell")
    parser.add_argument("--n-boot", type=int, default=50)
    parser.add_argument("--tolerance", type=float, default=0.25, help="nats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    start = time.perf_counter()
    cells = []
    for d in args.dims:
        for n in args.n:
            cell = one_cell(
                d, n, target=args.target, null=args.null, n_boot=args.n_boot, seed=args.seed
            )
            cells.append(cell)
            print(
                f"d={d:4d} n={n:5d} nu={cell['nu']:8.2f} true {cell['true_eps']:.3f}  "
                + "  ".join(
                    f"{e} {cell[e]['raw_error']:+.2f}->{cell[e]['corrected_error']:+.2f}"
                    for e in ESTIMATORS
                )
                + f"  ({cell['seconds']:.1f} s)",
                flush=True,
            )
    table = markdown(cells, args.tolerance)
    print(table)
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "definition": "errors are estimate - exact KL (nats); corrected = raw - mean of the "
        "same estimator on --null samples of Q; trusted: |corrected error| <= tolerance and "
        "the null spread below the corrected eps",
        "seconds": time.perf_counter() - start,
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]],
        "cells": cells,
        "markdown": table,
    }
    write_json(args.out, report)
    print(f"wrote {args.out} in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
