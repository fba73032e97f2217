"""Exact Gaussian mixtures: the case where the fitted Q can equal the data's law P."""

from __future__ import annotations

import numpy as np
from scipy import stats

from gmcert.data import GroundTruth, LabelledData, class_log_joint
from gmcert.gaussian import sample_gaussian_mixture


def synthetic_parameters(*, num_classes, dim, separation, covariance, seed):
    """Means on a simplex-like configuration at pairwise distance ``separation`` and a covariance.

    ``covariance``: ``isotropic`` (I), ``shared`` (one random well-conditioned SPD matrix) or
    ``full`` (one per class). Separation is in units of the noise scale.
    """
    rng = np.random.default_rng(seed)
    if num_classes > dim + 1:
        means = rng.standard_normal((num_classes, dim))
        means *= separation / np.sqrt(2 * dim)  # expected pairwise distance ~= separation
    else:
        # Orthogonal directions scaled so every pair of means is `separation` apart.
        basis = np.linalg.qr(rng.standard_normal((dim, max(num_classes, 1))))[0].T
        means = basis[:num_classes] * separation / np.sqrt(2)

    def random_spd():
        q = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
        return (q * rng.uniform(0.5, 1.5, dim)) @ q.T

    if covariance == "isotropic":
        cov = np.eye(dim)
    elif covariance == "shared":
        cov = random_spd()
    elif covariance == "full":
        cov = np.stack([random_spd() for _ in range(num_classes)])
    else:
        raise ValueError(
            f"synthetic covariance must be isotropic, shared or full, got {covariance!r}"
        )
    return means, cov


def build_synthetic(
    *,
    num_classes=2,
    dim=2,
    separation=3.0,
    covariance="isotropic",
    n_train=2000,
    n_test=1000,
    seed=0,
) -> LabelledData:
    """An exact Gaussian mixture with equal priors: the case where Q can equal P."""
    if num_classes < 2:
        raise ValueError(f"synthetic data needs num_classes >= 2, got {num_classes}")
    means, cov = synthetic_parameters(
        num_classes=num_classes, dim=dim, separation=separation, covariance=covariance, seed=seed
    )
    priors = np.full(num_classes, 1.0 / num_classes)
    rng = np.random.default_rng(seed + 1)
    x_train, y_train = sample_gaussian_mixture(n_train, means, cov, priors, rng)
    x_test, y_test = sample_gaussian_mixture(n_test, means, cov, priors, rng)
    covs = np.broadcast_to(cov, (num_classes, dim, dim))

    def log_joint(x, y):
        return class_log_joint(
            x, y, priors, lambda xk, k: stats.multivariate_normal.logpdf(xk, means[k], covs[k])
        )

    truth = GroundTruth(
        sample=lambda n, s: sample_gaussian_mixture(
            n, means, cov, priors, np.random.default_rng(s)
        ),
        log_joint=log_joint,
    )
    return LabelledData.from_arrays(
        "synthetic", x_train, y_train, x_test, y_test, num_classes, truth
    )
