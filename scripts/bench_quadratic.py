"""Quadratic (per-class covariance) certificate throughput, and linear vs quadratic certify time
on the same latents, timed side by side. Writes outputs/bench/quadratic.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from gmcert.certify.linear import LinearCertifier
from gmcert.certify.quadratic import QuadraticCertifier
from gmcert.io import write_json
from gmcert.models.mixture import GaussianMixtureClassifier

ROWS = 2048


def timed(fn):
    fn(64)  # warm-up on a small batch
    start = time.perf_counter()
    fn(ROWS)
    return time.perf_counter() - start


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
    t_quad = timed(lambda n: quad.certify(Z[:n]))
    t_lin = timed(lambda n: lin.certify(Z[:n]))
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
