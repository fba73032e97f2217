"""Quadratic (per-class covariance) certificates: the current certifier against the one before
the pruned / Newton rewrite (issue 21), timed side by side in ONE run on the same latents, plus
the linear certificate and the large-K path. Writes outputs/bench/quadratic.json.

The machine is shared, so everything runs on one thread (``torch.set_num_threads(1)``), the
implementations are timed interleaved (alternating order every round, scripts/timing.py), and
the load average before and after is recorded. The earlier implementation is not kept in the
package: its three modules are read from git at ``BASELINE_COMMIT`` into a temporary package
(imports rewritten to point at each other), so the ratio always compares against the same code.

Exactness is checked in the same run: the largest relative difference between the two
certifiers' radii (``max |r_new - r_old| / max(1, r_old)``) and whether their nearest classes
agree.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import interleaved, write_report

from gmcert.certify.linear import LinearCertifier
from gmcert.certify.quadratic import PAIR_CACHE_BYTES, QuadraticCertifier
from gmcert.models.mixture import GaussianMixtureClassifier

# The last commit of the certifier before the rewrite.
BASELINE_COMMIT = "686646200bdb4b721c5d13cfd50a0bd789510ad5"
BASELINE_MODULES = ("quadric_witness", "quadric_distance", "quadratic")
ROWS = 2048
REPEATS = 7
# The large-K path: an ImageNet-sized class count on synthetic Gaussians (no fit: 400 points
# per class would be 400,000 points), where the old certifier cannot even be built.
LARGE_K = 1000
LARGE_DIMS = (64,)
LARGE_ROWS = 256


def load_baseline():
    """The certifier of ``BASELINE_COMMIT`` as a module, from a temporary package."""
    root = Path(tempfile.mkdtemp(prefix="gmcert-baseline-"))
    package = root / "gmcert_quadratic_baseline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in BASELINE_MODULES:
        source = subprocess.run(
            ["git", "show", f"{BASELINE_COMMIT}:gmcert/certify/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for other in BASELINE_MODULES:
            source = source.replace(f"gmcert.certify.{other}", f"gmcert_quadratic_baseline.{other}")
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, str(root))
    return importlib.import_module("gmcert_quadratic_baseline.quadratic")


def fitted_problem(num_classes, dim):
    rng = np.random.default_rng(0)
    means = rng.standard_normal((num_classes, dim)) * 3 / np.sqrt(dim)
    Z_train = np.concatenate(
        [m + rng.standard_normal((400, dim)) * rng.uniform(0.5, 1.5) for m in means]
    )
    y_train = np.repeat(np.arange(num_classes), 400)
    Z = torch.as_tensor(Z_train[rng.choice(len(Z_train), ROWS)])
    full = GaussianMixtureClassifier(covariance="full").fit(Z_train, y_train)
    shared = GaussianMixtureClassifier(covariance="shared").fit(Z_train, y_train)
    return full, shared, Z


def exactness(new, old):
    r_new, r_old = new.radius, old.radius
    both_inf = torch.isinf(r_new) & torch.isinf(r_old)
    diff = torch.where(both_inf, 0.0, (r_new - r_old).abs() / r_old.abs().clamp(min=1.0))
    return {
        "max_relative_radius_difference": float(diff.max()),
        "nearest_class_agrees": float((new.nearest_class == old.nearest_class).double().mean()),
    }


def bench_k10(baseline, num_classes, dim):
    full, shared, Z = fitted_problem(num_classes, dim)
    args = (full.means_, full.class_precisions(), full.log_weights_)
    start = time.perf_counter()
    new = QuadraticCertifier(*args)
    setup_new = time.perf_counter() - start
    start = time.perf_counter()
    old = baseline.QuadraticCertifier(*args)
    setup_old = time.perf_counter() - start
    lin = LinearCertifier(*shared.linear_head())
    runs = {
        "before": lambda: old.certify(Z),
        "after": lambda: new.certify(Z),
        "linear": lambda: lin.certify(Z),
    }
    wall, cpu = interleaved(runs, REPEATS, torch.device("cpu"))
    median = {key: float(np.median(times)) for key, times in wall.items()}
    # On a loaded machine a one-thread process waits for a core: its CPU seconds (the least
    # of the repeats) measure the work itself, the wall seconds also the wait.
    least_cpu = {key: float(np.min(times)) for key, times in cpu.items()}
    checks = exactness(new.certificate(Z), old.certificate(Z))
    return {
        "num_classes": num_classes,
        "dim": dim,
        "rows": ROWS,
        "dtype": "float64",
        "setup_seconds_before": setup_old,
        "setup_seconds_after": setup_new,
        "latents_per_s_before": ROWS / median["before"],
        "latents_per_s_after": ROWS / median["after"],
        "speedup": median["before"] / median["after"],
        "speedup_least_cpu_seconds": least_cpu["before"] / least_cpu["after"],
        "latents_per_cpu_s_before": ROWS / least_cpu["before"],
        "latents_per_cpu_s_after": ROWS / least_cpu["after"],
        "linear_latents_per_s": ROWS / median["linear"],
        "after_over_linear_time": median["after"] / median["linear"],
        "seconds_per_repeat": {key: times for key, times in wall.items()},
        "cpu_seconds_per_repeat": {key: times for key, times in cpu.items()},
        **checks,
    }


def synthetic_mixture(num_classes, dim, rng):
    """Means on a sphere of radius 3 and precisions W W^T / d + 0.5 I (well conditioned)."""
    means = rng.standard_normal((num_classes, dim))
    means *= 3 / np.linalg.norm(means, axis=1, keepdims=True)
    W = rng.standard_normal((num_classes, dim, dim))
    precisions = W @ W.transpose(0, 2, 1) / dim + 0.5 * np.eye(dim)
    log_weights = 0.5 * np.linalg.slogdet(precisions)[1] - math.log(num_classes)
    return means, precisions, log_weights


def bench_large_k(dim):
    """K = 1000: throughput of the on-demand path, how many pairs it decomposed, and the
    memory the old per-pair table would have needed."""
    rng = np.random.default_rng(1)
    means, precisions, log_weights = synthetic_mixture(LARGE_K, dim, rng)
    labels = rng.integers(0, LARGE_K, LARGE_ROWS)
    Z = torch.as_tensor(
        means[labels]
        + np.einsum(
            "nde,ne->nd",
            np.linalg.cholesky(np.linalg.inv(precisions[labels])),
            rng.standard_normal((LARGE_ROWS, dim)),
        )
    )
    start = time.perf_counter()
    cert = QuadraticCertifier(means, precisions, log_weights)
    setup = time.perf_counter() - start
    cert.certify(Z[:8])  # warm-up
    decomposed_before = len(cert._pairs.cache)
    start = time.perf_counter()
    cert.certify(Z)
    seconds = time.perf_counter() - start
    n_pairs = LARGE_K * (LARGE_K - 1) // 2
    return {
        "num_classes": LARGE_K,
        "dim": dim,
        "rows": LARGE_ROWS,
        "setup_seconds": setup,
        "latents_per_s": LARGE_ROWS / seconds,
        "pairs_total": n_pairs,
        "pairs_decomposed_cached": len(cert._pairs.cache),
        "pairs_cached_before_timed_run": decomposed_before,
        "pair_cache_bytes_limit": PAIR_CACHE_BYTES,
        "all_pairs_table_bytes_before": n_pairs * (dim * dim + dim) * 8,
    }


def main():
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    baseline = load_baseline()
    cases = [bench_k10(baseline, 10, 64), bench_k10(baseline, 10, 256)]
    large = [bench_large_k(dim) for dim in LARGE_DIMS]
    for case in cases:
        print(
            f"K={case['num_classes']} d={case['dim']}: "
            f"{case['latents_per_s_before']:,.0f} -> {case['latents_per_s_after']:,.0f} "
            f"latents/s ({case['speedup']:.1f}x wall, "
            f"{case['speedup_least_cpu_seconds']:.1f}x CPU), radii differ by at most "
            f"{case['max_relative_radius_difference']:.1e}"
        )
    print(json.dumps(large, indent=1))
    write_report(
        Path("outputs/bench/quadratic.json"),
        cases + large,
        definition=(
            "latents/s of QuadraticCertifier.certify before (git "
            f"{BASELINE_COMMIT[:10]}) and after, one thread, median wall seconds of {REPEATS} "
            "interleaved repeats (speedup) and least CPU seconds (speedup_least_cpu_seconds, "
            "less sensitive to other processes on a shared machine); "
            "max_relative_radius_difference = max |r_after - r_before| / max(1, "
            "r_before); the K=1000 rows time the after certifier alone (the before one would "
            "need all_pairs_table_bytes_before of eigenbases)"
        ),
        target=10.0,
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
