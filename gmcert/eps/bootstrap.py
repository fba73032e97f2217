"""Percentile bootstrap of a :class:`~gmcert.eps.results.TermEstimate`.

Resamples the per-sample terms (indices only, neighbour structure and fitted discriminators
held fixed), so an interval reflects sampling variability of the average, not the estimator's
bias; in high dimension the bias can be larger than the interval. Nothing here is a
guarantee: the certificate holds for a stated eps, and these are estimates of eps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
from scipy import special

from gmcert.eps.results import TermEstimate

__all__ = ["bootstrap_ci", "bootstrap_replicates", "check_boot", "percentile_bounds"]


def _resampled(
    terms: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    reduce: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """``reduce`` (row-wise, (b, n) -> (b,)) of n_boot resamples (with replacement) of
    ``terms``, drawn in memory-bounded chunks of rows."""
    n = len(terms)
    chunk = max(1, int(2**24 // max(n, 1)))
    out = np.empty(n_boot)
    for s in range(0, n_boot, chunk):
        e = min(n_boot, s + chunk)
        out[s:e] = reduce(terms[rng.integers(0, n, size=(e - s, n))])
    return out


def bootstrap_replicates(est: TermEstimate, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) bootstrap replicates of ``est.estimate``; Q terms resampled independently."""
    reps = _resampled(est.p_terms, n_boot, rng, partial(np.mean, axis=1))
    if est.q_log_terms is not None:
        q = est.q_log_terms
        log_sums = _resampled(q, n_boot, rng, partial(special.logsumexp, axis=1))
        reps = reps - (log_sums - math.log(len(q)))
    return reps


def check_boot(n_boot: int, alpha: float) -> None:
    """n_boot a positive integer, alpha in (0, 1)."""
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def percentile_bounds(reps: np.ndarray, alpha: float) -> tuple[float, float]:
    """The alpha / 2 and 1 - alpha / 2 quantiles of the replicates."""
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    est: TermEstimate, *, n_boot: int = 1000, alpha: float = 0.05, random_state=0
) -> tuple[float, float]:
    """Percentile bootstrap interval (level 1 - alpha) for a :class:`TermEstimate`.

    Resamples indices of the per-sample terms (and, for sampled DV, of the Q terms,
    independently). The neighbour structure of kNN estimators and the fitted discriminator
    are held fixed, so the interval covers sampling variability of the average only, not
    estimator bias, which dominates in high dimension. Returns (low, high) in nats.
    """
    check_boot(n_boot, alpha)
    reps = bootstrap_replicates(est, n_boot, np.random.default_rng(random_state))
    return percentile_bounds(reps, alpha)
