"""Gaussian closed forms in float64: the Cholesky factor, log-densities, the KL divergence, and
draws from a Gaussian mixture.

Pure maths, below every stage: the mixture Q (:mod:`gmcert.models.mixture`), the datasets with
a known law (:mod:`gmcert.data.synthetic`, :mod:`gmcert.data.student_t`) and the eps
estimators all use it. The one Cholesky helper of the package lives here (:func:`cholesky`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg

from gmcert.checks import as_matrix, check_gaussian

__all__ = [
    "cholesky",
    "kl_gaussian",
    "kl_gaussian_from_cholesky",
    "gaussian_logpdf",
    "logpdf_from_cholesky",
    "sample_gaussian_mixture",
]

_RIDGE_HINT = "fit Q with shrinkage (Ledoit-Wolf/OAS) or add a small ridge to the diagonal"


def cholesky(matrix: np.ndarray, name: str = "cov", *, hint: str | None = _RIDGE_HINT):
    """Lower Cholesky factor L (L L^T = matrix); ``ValueError`` naming ``name`` (and the
    ``hint``, when given) if the matrix is not positive definite."""
    try:
        return linalg.cholesky(matrix, lower=True)
    except linalg.LinAlgError as exc:
        message = f"{name} is not positive definite"
        raise ValueError(f"{message}; {hint}" if hint else message) from exc


def kl_gaussian(mean_p, cov_p, mean_q, cov_q) -> float:
    """Closed-form KL(N(mean_p, cov_p) || N(mean_q, cov_q)) in nats, float64.

    ``0.5 [tr(Sq^-1 Sp) + (mq - mp)^T Sq^-1 (mq - mp) - d + log det Sq - log det Sp]``,
    with log-determinants from Cholesky factors (both covariances must be positive definite).
    """
    mean_p = np.asarray(mean_p, np.float64).reshape(-1)
    d = mean_p.shape[0]
    _, cov_p = check_gaussian(mean_p, cov_p, d)
    mean_q, cov_q = check_gaussian(mean_q, cov_q, d)
    return kl_gaussian_from_cholesky(
        cholesky(cov_p, "cov_p"), cholesky(cov_q, "cov_q"), mean_q - mean_p
    )


def kl_gaussian_from_cholesky(lp: np.ndarray, lq: np.ndarray, shift: np.ndarray) -> float:
    """KL(N(m, Lp Lp^T) || N(m + shift, Lq Lq^T)) from the two Cholesky factors."""
    d = lp.shape[0]
    a = linalg.solve_triangular(lq, lp, lower=True)  # Lq^-1 Lp: tr(Sq^-1 Sp) = ||a||_F^2
    diff = linalg.solve_triangular(lq, shift, lower=True)
    logdet_ratio = 2.0 * (np.log(np.diag(lq)).sum() - np.log(np.diag(lp)).sum())
    return float(0.5 * (np.sum(a * a) + diff @ diff - d + logdet_ratio))


def gaussian_logpdf(Z, mean, cov) -> np.ndarray:
    """log N(z; mean, cov) for each row of Z (n, d) -> (n,) float64, via Cholesky.

    Exact up to float64 round-off; ``cov`` must be positive definite.
    """
    Z = as_matrix(Z, "Z")
    mean, cov = check_gaussian(mean, cov, Z.shape[1])
    return logpdf_from_cholesky(Z, mean, cholesky(cov))


def logpdf_from_cholesky(Z: np.ndarray, mean: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """log N(z; mean, L L^T) for each row of Z, given the lower Cholesky factor L."""
    u = linalg.solve_triangular(chol, (Z - mean).T, lower=True)  # (d, n) whitened residuals
    logdet = 2.0 * np.log(np.diag(chol)).sum()
    d = Z.shape[1]
    return -0.5 * (np.einsum("ij,ij->j", u, u) + logdet + d * math.log(2.0 * math.pi))


def sample_gaussian_mixture(n, means, covariances, priors, rng) -> tuple[np.ndarray, np.ndarray]:
    """Draw n points from sum_k priors[k] N(means[k], covariances[k]); returns (Z, class codes).

    ``covariances`` is (K, d, d), or (d, d) shared; ``rng`` a numpy Generator or RandomState.
    """
    means = np.asarray(means, np.float64)
    num_classes, dim = means.shape
    covs = np.broadcast_to(np.asarray(covariances, np.float64), (num_classes, dim, dim))
    codes = rng.choice(num_classes, size=n, p=priors)
    Z = np.empty((n, dim))
    for k in np.unique(codes):
        idx = np.flatnonzero(codes == k)
        chol = linalg.cholesky(covs[k], lower=True)
        Z[idx] = means[k] + rng.standard_normal((len(idx), dim)) @ chol.T
    return Z, codes
