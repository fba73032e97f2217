"""Donsker-Varadhan lower bounds on KL(P || Q): ``E_P[T] - log E_Q[exp T]``.

T is a discriminator's logit fitted on one split of the P sample and evaluated on the other,
with an exact partition term (generative discriminator by default; logistic regression on
[v, v^2] as the alternative; both in :mod:`gmcert.eps.discriminators`). For the fitted T the
target is <= KL; the estimate errs low when T is a poor log-ratio and exceeds KL only by
sampling noise.

DV: KL(P || Q) >= E_P[T] - log E_Q[exp T] for every T, with equality at T = log(p/q) + const.
The bound is only as safe as the partition term log E_Q[exp T]: a Monte Carlo estimate of it
is biased low (Jensen) and, when exp T is heavy-tailed under Q, can be low by nats, pushing
the "lower bound" above KL. Both discriminators therefore have an exact partition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import linalg, special

from gmcert.checks import as_matrix, check_gaussian
from gmcert.eps.discriminators import generative_logit, logistic_logit
from gmcert.eps.results import TermEstimate
from gmcert.gaussian import cholesky

__all__ = ["kl_dv_gaussian", "kl_dv_lower_bound", "dv_gaussian_from_cholesky"]


def _q_whitener(mean: np.ndarray, chol: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda Z: linalg.solve_triangular(chol, (Z - mean).T, lower=True).T


def _logmeanexp(t: np.ndarray) -> float:
    return float(special.logsumexp(t) - math.log(len(t)))


def _check_dv_args(split: float, C_grid: Sequence[float]) -> None:
    if not 0.0 < split < 1.0:
        raise ValueError(f"split must be in (0, 1), got {split}")
    if len(C_grid) == 0 or any(c <= 0 for c in C_grid):
        raise ValueError("C_grid must be a non-empty sequence of positive floats")


def _split(X: np.ndarray, split: float, rng: np.random.Generator, what: str):
    n = X.shape[0]
    n_fit = int(round(split * n))
    if n_fit < 4 or n - n_fit < 2:
        raise ValueError(f"dv needs >= 8 samples in {what} to split into fit/evaluate parts")
    perm = rng.permutation(n)
    return X[perm[:n_fit]], X[perm[n_fit:]]


def kl_dv_gaussian(
    X,
    mean,
    cov,
    *,
    discriminator: str = "generative",
    split: float = 0.5,
    q_expectation: str = "exact",
    q_ratio: int = 1,
    C_grid: Sequence[float] = (0.01, 0.1, 1.0),
    random_state=0,
) -> TermEstimate:
    """Donsker-Varadhan lower bound on KL(P || N(mean, cov)); X (n, d) ~ P.

    ``KL >= E_P[T] - log E_Q[exp T]`` for every T; T is a discriminator's logit fitted on a
    ``split`` fraction of X and averaged over the remaining, unseen part, so for the fitted T
    the estimate is unbiased for a quantity <= KL (the slack is KL(P || p_T), how far the
    discriminator is from the true log-ratio). Work in Q-whitened coordinates u (u ~ N(0, I)
    under Q).

    discriminator:
        "generative": Bayes logit of a generative classifier, T = log p_hat(u) - log N(u; 0, I)
            (class-balance offset removed), p_hat a Student t or Gaussian whose mean and
            covariance are shrunk towards Q's: (lam m_hat, (1-lam) I + lam C_hat). (lam, nu)
            are chosen on a validation quarter of the fit split; lam = 0 is T = 0, so the
            estimate is not driven far below 0 by overfitting. p_hat is normalised, hence
            log E_Q[exp T] = 0 exactly. Catches mean/covariance misfit and elliptical
            heavy tails; blind to other shapes (skew, multimodality within a class).
        "logistic": logistic regression of P (fit split) against ``q_ratio`` times as many
            fresh Q draws on features [v, v^2], v = u rotated to P's principal axes (the true
            log-ratio if P is Gaussian), C tuned on a validation quarter of the fit split, the
            class-balance offset log(n_P / n_Q) removed. Its partition under Q has a closed
            form. Blind to any non-Gaussianity with matched moments.

    q_expectation: "exact" (above) or "sample", a logsumexp over ``q_ratio * n_eval`` fresh Q
        draws; the latter is biased upward by Jensen and can exceed KL when exp T is
        heavy-tailed under Q (it is there to check the exact value, not to replace it).

    Per-sample terms are ``T(x) - log E_Q[exp T]`` over the evaluation split (exact) or T(x)
    with the Q terms kept for the bootstrap (sample).
    """
    X = as_matrix(X, "X")
    mean, cov = check_gaussian(mean, cov, X.shape[1])
    if discriminator not in ("generative", "logistic"):
        raise ValueError(f"discriminator must be 'generative' or 'logistic', got {discriminator!r}")
    if q_expectation not in ("exact", "sample"):
        raise ValueError(f"q_expectation must be 'exact' or 'sample', got {q_expectation!r}")
    if int(q_ratio) != q_ratio or q_ratio < 1:
        raise ValueError(f"q_ratio must be a positive integer, got {q_ratio}")
    _check_dv_args(split, C_grid)
    return dv_gaussian_from_cholesky(
        X,
        mean,
        cholesky(cov),
        discriminator=discriminator,
        split=split,
        q_expectation=q_expectation,
        q_ratio=int(q_ratio),
        C_grid=C_grid,
        rng=np.random.default_rng(random_state),
    )


def dv_gaussian_from_cholesky(
    X: np.ndarray,
    mean: np.ndarray,
    chol: np.ndarray,
    *,
    discriminator: str,
    split: float,
    q_expectation: str,
    q_ratio: int,
    C_grid: Sequence[float],
    rng: np.random.Generator,
) -> TermEstimate:
    """:func:`kl_dv_gaussian` on checked inputs, with Q's Cholesky factor and a generator."""
    d = X.shape[1]
    whiten = _q_whitener(mean, chol)
    x_fit, x_eval = _split(X, split, rng, "X")
    u_fit, u_eval = whiten(x_fit), whiten(x_eval)
    notes: list[str] = []

    if discriminator == "generative":
        T, info = generative_logit(u_fit, rng)
        logz = 0.0
    else:
        uq_fit = rng.standard_normal((int(q_ratio) * len(u_fit), d))
        T, info = logistic_logit(u_fit, uq_fit, C_grid, rng, notes, lambda T, _: T.log_partition())
        logz = T.log_partition()
    t_p = T.log_ratio(u_eval)
    if q_expectation == "exact":
        p_terms, q_terms = t_p - logz, None
        estimate = float(p_terms.mean())
    else:
        uq_eval = rng.standard_normal((int(q_ratio) * len(u_eval), d))
        p_terms, q_terms = t_p, T.log_ratio(uq_eval)
        estimate = float(t_p.mean() - _logmeanexp(q_terms))
    info.update(
        {
            "discriminator": discriminator,
            "q_expectation": q_expectation,
            "n_fit": len(x_fit),
            "n_eval": len(x_eval),
            "log_partition_exact": float(logz),
        }
    )
    if notes:
        info["notes"] = sorted(set(notes))
    return TermEstimate(estimate, p_terms, q_terms, info=info)


def kl_dv_lower_bound(
    X,
    Y,
    *,
    split: float = 0.5,
    C_grid: Sequence[float] = (0.01, 0.1, 1.0),
    random_state=0,
) -> TermEstimate:
    """Donsker-Varadhan lower bound on KL(P || Q) from samples X (n, d) ~ P and Y (m, d) ~ Q.

    The "logistic" discriminator of :func:`kl_dv_gaussian`, with whitening by the Q fit
    sample (a small ridge keeps it invertible) and ``log E_Q[exp T]`` a logsumexp over the
    held-out part of Y: biased upward by Jensen, of order Var_Q(e^T) / (2 m E_Q[e^T]^2), which
    is large when P is much wider than Q along some axis. Prefer :func:`kl_dv_gaussian` when
    Q is a known Gaussian. Both X and Y are split by ``split``.
    """
    X = as_matrix(X, "X")
    Y = as_matrix(Y, "Y")
    d = X.shape[1]
    if Y.shape[1] != d:
        raise ValueError("X and Y must have the same number of columns")
    _check_dv_args(split, C_grid)
    rng = np.random.default_rng(random_state)
    x_fit, x_eval = _split(X, split, rng, "X")
    y_fit, y_eval = _split(Y, split, rng, "Y")
    cov_q = np.cov(y_fit, rowvar=False).reshape(d, d)
    cov_q += 1e-9 * np.trace(cov_q) / d * np.eye(d)
    whiten = _q_whitener(y_fit.mean(axis=0), cholesky(cov_q, "Q sample covariance"))
    notes: list[str] = []
    T, info = logistic_logit(
        whiten(x_fit),
        whiten(y_fit),
        C_grid,
        rng,
        notes,
        lambda T, uq_val: _logmeanexp(T.log_ratio(uq_val)),
    )
    t_p, t_q = T.log_ratio(whiten(x_eval)), T.log_ratio(whiten(y_eval))
    info.update(
        {
            "discriminator": "logistic",
            "q_expectation": "sample",
            "n_fit": len(x_fit),
            "n_eval": len(x_eval),
        }
    )
    if notes:
        info["notes"] = sorted(set(notes))
    return TermEstimate(float(t_p.mean() - _logmeanexp(t_q)), t_p, t_q, info=info)
