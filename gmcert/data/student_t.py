"""Controlled distortion: Student-t class conditionals whose KL to a Gaussian is known exactly.

A multivariate Student t_nu(mu, S) in d dimensions (scale matrix S, nu degrees of freedom) has
density

    p(x) = Gamma((nu+d)/2) / (Gamma(nu/2) (nu pi)^(d/2) |S|^(1/2)) (1 + delta/nu)^(-(nu+d)/2),

delta = (x - mu)^T S^-1 (x - mu), covariance nu/(nu-2) S for nu > 2, and differential entropy

    H = 1/2 log|S| + d/2 log(nu pi) + log Gamma(nu/2) - log Gamma((nu+d)/2)
        + (nu+d)/2 [psi((nu+d)/2) - psi(nu/2)].

Because a Gaussian log-density is quadratic, ``E_P[log N(x; m, C)]`` depends on P only through
its mean and covariance, so for any Gaussian Q = N(mu + s, C):

    KL(t || Q) = -H + 1/2 log|2 pi C| + 1/2 [tr(C^-1 c S) + s^T C^-1 s],   c = nu/(nu-2).

The minimiser over Q is the moment-matched N(mu, c S), where (writing a = nu/2, b = d/2)

    KL = b - b log(a - 1) + log Gamma(a+b) - log Gamma(a) - (a+b) [psi(a+b) - psi(a)],

free of S and ~ d(d+2) / (4 nu^2) for large nu (0 at nu = inf, the Gaussian). For nu <= 2
the covariance is infinite and so is the KL to every Gaussian.

A mixture of such classes with the mixture's own priors therefore has the exact joint
KL(P || Q) = sum_k pi_k KL_k against the moment-matched class-conditional Gaussian mixture:
ground truth for the eps estimators in :mod:`gmcert.eps` (see :func:`gmcert.eps.true_kl` for
the Monte Carlo KL against any fitted mixture).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg, special

from gmcert.data import GroundTruth, LabelledData, class_log_joint
from gmcert.data.synthetic import synthetic_parameters
from gmcert.gaussian import cholesky, kl_gaussian_from_cholesky

__all__ = [
    "sample_student_t_mixture",
    "student_t_logpdf",
    "student_t_entropy",
    "moment_matched_covariance",
    "kl_student_t_to_gaussian",
    "build_distorted",
]


def _check_nu(nu) -> float:
    nu = float(nu)
    if not (nu > 0):  # also rejects NaN
        raise ValueError(f"nu (degrees of freedom) must be > 0 or inf, got {nu}")
    return nu


def _check_scale(scale, d: int | None = None) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float64)
    if scale.ndim != 2 or scale.shape[0] != scale.shape[1]:
        raise ValueError(f"scale must be a square (d, d) matrix, got shape {scale.shape}")
    if d is not None and scale.shape[0] != d:
        raise ValueError(f"scale is {scale.shape[0]}x{scale.shape[0]} but the data have d={d}")
    if not np.allclose(scale, scale.T, rtol=1e-10, atol=1e-12 * np.abs(scale).max()):
        raise ValueError("scale must be symmetric")
    return scale


def sample_student_t_mixture(
    n: int,
    means,
    scale,
    nu,
    priors=None,
    random_state=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw n points from sum_k pi_k t_nu_k(mu_k, S_k).

    Args:
        n: number of samples.
        means: (K, d) class locations.
        scale: (d, d) shared scale matrix S, or (K, d, d) one per class (positive definite).
            The class covariance is nu/(nu-2) S.
        nu: degrees of freedom, scalar or (K,); ``np.inf`` gives a Gaussian class.
        priors: (K,) class probabilities (default uniform).
        random_state: seed or numpy Generator.

    Returns:
        Z (n, d) float64 and y (n,) int64 labels. Construction: z = mu_y + L g / sqrt(w / nu),
        g ~ N(0, I), w ~ chi2(nu), L L^T = S.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2:
        raise ValueError(f"means must have shape (K, d), got {means.shape}")
    K, d = means.shape
    scale = np.asarray(scale, dtype=np.float64)
    scales = np.broadcast_to(scale, (K, d, d)) if scale.shape == (d, d) else scale
    if scales.shape != (K, d, d):
        raise ValueError(f"scale must have shape ({d}, {d}) or ({K}, {d}, {d}), got {scale.shape}")
    chols = np.stack([cholesky(_check_scale(s, d), "scale", hint=None) for s in scales])
    nus = np.broadcast_to(np.asarray(nu, dtype=np.float64), (K,))
    for v in nus:
        _check_nu(v)
    if priors is None:
        priors = np.full(K, 1.0 / K)
    priors = np.asarray(priors, dtype=np.float64)
    if priors.shape != (K,) or np.any(priors < 0) or abs(priors.sum() - 1) > 1e-9:
        raise ValueError(f"priors must be {K} non-negative numbers summing to 1")
    rng = np.random.default_rng(random_state)
    y = rng.choice(K, size=n, p=priors).astype(np.int64)
    g = rng.standard_normal((n, d))
    nu_i = nus[y]
    finite = np.isfinite(nu_i)
    mix = np.ones(n)
    # Draw the chi-square only for finite nu; inf means no mixing (Gaussian).
    mix[finite] = np.sqrt(nu_i[finite] / rng.chisquare(nu_i[finite]))
    Z = np.empty((n, d))
    for k in range(K):  # per class: never materialise an (n, d, d) stack of factors
        idx = np.flatnonzero(y == k)
        Z[idx] = means[k] + (g[idx] @ chols[k].T) * mix[idx, None]
    return Z, y


def student_t_logpdf(Z, mean, scale, nu) -> np.ndarray:
    """log density of t_nu(mean, scale) at each row of Z (n, d) -> (n,) float64.

    nu = inf returns the Gaussian N(mean, scale) log-density.
    """
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2:
        raise ValueError(f"Z must have shape (n, d), got {Z.shape}")
    d = Z.shape[1]
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    if mean.shape != (d,):
        raise ValueError(f"mean must have shape ({d},), got {mean.shape}")
    scale = _check_scale(scale, d)
    nu = _check_nu(nu)
    chol = cholesky(scale, "scale", hint=None)
    u = linalg.solve_triangular(chol, (Z - mean).T, lower=True)
    delta = np.einsum("ij,ij->j", u, u)
    half_logdet = np.log(np.diag(chol)).sum()
    if math.isinf(nu):
        return -0.5 * delta - half_logdet - 0.5 * d * math.log(2 * math.pi)
    log_norm = (
        special.gammaln(0.5 * (nu + d))
        - special.gammaln(0.5 * nu)
        - 0.5 * d * math.log(nu * math.pi)
        - half_logdet
    )
    return log_norm - 0.5 * (nu + d) * np.log1p(delta / nu)


def student_t_entropy(scale, nu) -> float:
    """Differential entropy (nats) of t_nu(mu, scale); the Gaussian entropy at nu = inf."""
    scale = _check_scale(scale)
    nu = _check_nu(nu)
    d = scale.shape[0]
    half_logdet = np.log(np.diag(cholesky(scale, "scale", hint=None))).sum()
    if math.isinf(nu):
        return float(half_logdet + 0.5 * d * math.log(2 * math.pi * math.e))
    a, b = 0.5 * nu, 0.5 * d
    return float(
        half_logdet
        + b * math.log(nu * math.pi)
        + special.gammaln(a)
        - special.gammaln(a + b)
        + (a + b) * (special.digamma(a + b) - special.digamma(a))
    )


def moment_matched_covariance(scale, nu) -> np.ndarray:
    """Covariance nu/(nu-2) S of t_nu(mu, S): the best Gaussian in KL(t || Q). Needs nu > 2."""
    scale = _check_scale(scale)
    nu = _check_nu(nu)
    if nu <= 2:
        raise ValueError(f"the covariance of a Student t is infinite for nu <= 2 (got nu={nu})")
    return scale if math.isinf(nu) else scale * (nu / (nu - 2.0))


def _negentropy_student_t(nu: float, d: int) -> float:
    """KL(t_nu || moment-matched Gaussian) in nats; independent of the scale matrix.

    Direct formula in float64 loses digits to cancellation for large nu (the terms are
    ~ b log a while the result is ~ b(b+1)/(4 a^2)); there the asymptotic series in 1/a
    (derived symbolically, checked against mpmath in the tests) is used instead, choosing
    whichever has the smaller error estimate.
    """
    if math.isinf(nu):
        return 0.0
    a, b = 0.5 * nu, 0.5 * d
    direct = (
        b
        - b * math.log(a - 1.0)
        + special.gammaln(a + b)
        - special.gammaln(a)
        - (a + b) * (special.digamma(a + b) - special.digamma(a))
    )
    x = 1.0 / a
    series = (
        b
        * (b + 1)
        * x
        * x
        * (
            1 / 4
            - x * (b - 2) / 6
            + x**2 * (3 * b**2 - 7 * b + 7) / 24
            - x**3 * (3 * b**3 - 8 * b**2 + 8 * b - 6) / 30
            + x**4 * (3 * b**4 - 9 * b**3 + 9 * b**2 - 5 * b + 5) / 36
        )
    )
    # Relative error estimates: the direct formula subtracts terms of size ~ (a + b) log a
    # (log-gamma and digamma differences), losing ~ eps * (a + b) log a absolutely; the first
    # omitted series term is ~ (b / a)^5 relative to the leading one.
    err_direct = 4.4e-16 * ((a + b) * (abs(math.log(a)) + 1)) / max(abs(series), 1e-300)
    err_series = ((b + 2) / a) ** 5
    return float(series if err_series < err_direct else direct)


def kl_student_t_to_gaussian(scale, nu, cov_q=None, mean_shift=None) -> float:
    """Exact KL(t_nu(mu, S) || N(mu + mean_shift, cov_q)) in nats.

    With ``cov_q=None`` and ``mean_shift=None`` Q is the moment-matched N(mu, nu/(nu-2) S) and
    the result is the t's negentropy (independent of S). Otherwise the general closed form
    ``-H(t) + 1/2 log|2 pi C| + 1/2 [tr(C^-1 c S) + s^T C^-1 s]`` (see the module docstring).
    Returns inf for nu <= 2 (infinite covariance) and the Gaussian KL for nu = inf.
    """
    scale = _check_scale(scale)
    nu = _check_nu(nu)
    d = scale.shape[0]
    if nu <= 2:
        return math.inf
    if cov_q is None and mean_shift is None:
        cholesky(scale, "scale", hint=None)
        return _negentropy_student_t(nu, d)
    cov_p = moment_matched_covariance(scale, nu)
    cov_q = cov_p if cov_q is None else _check_scale(cov_q, d)
    shift = np.zeros(d) if mean_shift is None else np.asarray(mean_shift, np.float64).reshape(-1)
    if shift.shape != (d,):
        raise ValueError(f"mean_shift must have shape ({d},), got {shift.shape}")
    # KL(t || Q) = KL(t || G) + KL(G || Q) with G the moment-matched Gaussian (exact, because
    # log Q is quadratic): the negentropy keeps its cancellation-safe evaluation.
    kl_gauss = kl_gaussian_from_cholesky(
        cholesky(cov_p, "scale", hint=None), cholesky(cov_q, "cov_q", hint=None), shift
    )
    return float(_negentropy_student_t(nu, d) + kl_gauss)


def build_distorted(
    *, num_classes=3, dim=4, separation=4.0, nu=5.0, n_train=4000, n_test=2000, seed=0
) -> LabelledData:
    """Student-t classes t_nu(mu_k, S) with a shared scale: a controlled departure from a
    Gaussian mixture, whose exact log-density makes KL(P || Q) computable for any fitted Q.

    The scale is set so each class covariance is the identity, keeping ``separation`` in
    noise units as for ``synthetic``; nu = inf is the exact Gaussian mixture.
    """
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
    return LabelledData.from_arrays(
        "distorted",
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes,
        GroundTruth(sample=sample, log_joint=log_joint),
    )
