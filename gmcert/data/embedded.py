"""The datasets that run anywhere with no download: scikit-learn's digits and exact mixtures."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from gmcert.data import GroundTruth, LabelledData, Split, class_log_joint


def _arrays_to_data(name, x_train, y_train, x_test, y_test, num_classes, truth=None):
    return LabelledData(
        name=name,
        train=Split(x_train.astype(np.float32), y_train.astype(np.int64), np.arange(len(y_train))),
        test=Split(x_test.astype(np.float32), y_test.astype(np.int64), np.arange(len(y_test))),
        num_classes=num_classes,
        class_names=[str(k) for k in range(num_classes)],
        truth=truth,
    )


def build_digits(*, test_size: float = 0.2, split_seed: int = 0) -> LabelledData:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixels scaled to [0, 1].

    The train/test split is stratified and fixed by ``split_seed``; inputs are flat (n, 64).
    """
    digits = load_digits()
    x = digits.data / 16.0  # raw pixels are integers 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=test_size, stratify=digits.target, random_state=split_seed
    )
    return _arrays_to_data("digits", x_train, y_train, x_test, y_test, 10)


def sample_mixture(n, means, cov, priors, rng) -> tuple[np.ndarray, np.ndarray]:
    """Draw n points from sum_k priors[k] N(means[k], cov) (cov shared, or one per class)."""
    means = np.asarray(means, np.float64)
    num_classes, dim = means.shape
    covs = np.broadcast_to(cov, (num_classes, dim, dim))
    y = rng.choice(num_classes, size=n, p=priors)
    z = np.empty((n, dim))
    for k in range(num_classes):
        idx = np.flatnonzero(y == k)
        z[idx] = rng.multivariate_normal(means[k], covs[k], size=len(idx), method="cholesky")
    return z, y


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
    x_train, y_train = sample_mixture(n_train, means, cov, priors, rng)
    x_test, y_test = sample_mixture(n_test, means, cov, priors, rng)
    covs = np.broadcast_to(cov, (num_classes, dim, dim))

    def log_joint(x, y):
        return class_log_joint(
            x, y, priors, lambda xk, k: stats.multivariate_normal.logpdf(xk, means[k], covs[k])
        )

    truth = GroundTruth(
        sample=lambda n, s: sample_mixture(n, means, cov, priors, np.random.default_rng(s)),
        log_joint=log_joint,
    )
    return _arrays_to_data("synthetic", x_train, y_train, x_test, y_test, num_classes, truth)


def build_distorted(
    *, num_classes=3, dim=4, separation=4.0, nu=5.0, n_train=4000, n_test=2000, seed=0
) -> LabelledData:
    """Student-t classes t_nu(mu_k, S) with a shared scale: a controlled departure from a
    Gaussian mixture, whose exact log-density makes KL(P || Q) computable for any fitted Q.

    The scale is set so each class covariance is the identity, keeping ``separation`` in
    noise units as for ``synthetic``; nu = inf is the exact Gaussian mixture.
    """
    from gmcert.data.distorted import sample_student_t_mixture, student_t_logpdf

    if nu <= 2:
        raise ValueError(f"dataset.nu must be > 2 (finite covariance), got {nu}")
    means, _ = synthetic_parameters(
        num_classes=num_classes, dim=dim, separation=separation, covariance="isotropic", seed=seed
    )
    scale = np.eye(dim) * ((nu - 2) / nu if np.isfinite(nu) else 1.0)
    priors = np.full(num_classes, 1.0 / num_classes)

    def sample(n, s):
        return sample_student_t_mixture(n, means, scale, nu, priors, random_state=s)

    def log_joint(x, y):
        return class_log_joint(
            x, y, priors, lambda xk, k: student_t_logpdf(xk, means[k], scale, nu)
        )

    x_train, y_train = sample(n_train, seed + 1)
    x_test, y_test = sample(n_test, seed + 2)
    return _arrays_to_data(
        "distorted",
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes,
        GroundTruth(sample=sample, log_joint=log_joint),
    )
