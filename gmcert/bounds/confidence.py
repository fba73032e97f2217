"""Exact one-sided Clopper-Pearson confidence bounds for a binomial proportion (docs/theory.md
section 5). Vectorised with numpy broadcasting, float64."""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["clopper_pearson_lower", "clopper_pearson_upper"]


def clopper_pearson_lower(successes, trials, alpha):
    """One-sided Clopper-Pearson lower bound: P[p >= bound] >= 1 - alpha.

    Exact (beta quantile, not a normal approximation); 0 when ``successes == 0``.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(alpha, k, n - k + 1)
    return np.where(k <= 0, 0.0, bound)


def clopper_pearson_upper(successes, trials, alpha):
    """One-sided Clopper-Pearson upper bound: P[p <= bound] >= 1 - alpha; 1 when all succeed."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(1 - alpha, k + 1, n - k)
    return np.where(k >= n, 1.0, bound)
