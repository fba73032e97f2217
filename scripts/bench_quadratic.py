"""Quadratic (per-class covariance) certificate throughput, and linear vs quadratic certify time
on the same latents, timed side by side (median of a few runs after a warm-up). Writes
outputs/bench/quadratic.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from timing import median_seconds

from gmcert.certify.linear import LinearCertifier
from gmcert.certify.quadratic import QuadraticCertifier
from gmcert.io import write_json
from gmcert.models.mixture import GaussianMixtureClassifier

ROWS = 2048
# Few repeats: one quadratic certify of ROWS latents is slow at d = 256.
REPEATS = 3


def bench(num_classes, dim):
    rng = np.random.default_rng(0)
    means = rng.standard_normal((num_classes, dim)) * 3 / np.sqrt(dim)
    Z_train = np.concatenate(
        [m + rng.standard_normal((400, dim)) * rng.uniform(0.5, 1.5) for m in means]
    )
    y_train = np.repeat(np.arange(num_classes), 400)
    Z = torch.as_tensor(Z_train[rng.choice(len(Z_train), ROWS)])
    full = GaussianMixtureClassifier(covariance="full").fit(Z_train, y_train)
    shared = GaussianMixtureClassifier(covariance="shared").fit(Z_train, y_train)
    t_build = time.perf_counter()
    quad = QuadraticCertifier(full.means_, full.class_precisions(), full.log_weights_)
    t_build = time.perf_counter() - t_build
    lin = LinearCertifier(*shared.linear_head())
    t_quad = median_seconds(lambda: quad.certify(Z), REPEATS)
    t_lin = median_seconds(lambda: lin.certify(Z), REPEATS)
    return {
        "num_classes": num_classes,
        "dim": dim,
        "rows": ROWS,
        "dtype": "float64",
        "setup_seconds": t_build,
        "quadratic_latents_per_s": ROWS / t_quad,
        "linear_latents_per_s": ROWS / t_lin,
        "linear_over_quadratic_time": t_lin / t_quad,
    }


def main():
    results = [bench(10, 64), bench(10, 256)]
    write_json(
        Path("outputs/bench/quadratic.json"),
        {"threads": torch.get_num_threads(), "results": results},
    )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
