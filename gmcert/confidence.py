"""Exact one-sided Clopper-Pearson confidence bounds for a binomial proportion, and certified
accuracy with them (docs/theory.md section 5). Vectorised with numpy broadcasting, float64."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "certified_accuracy",
    "certified_count",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
]


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


def certified_count(correct, radii, at) -> np.ndarray:
    """How many points are correct with a radius >= r, for each r in ``at``."""
    correct = np.asarray(correct, bool)
    radii = np.asarray(radii, np.float64)
    at = np.asarray(at, np.float64)
    return ((correct[None, :]) & (radii[None, :] >= at[:, None])).sum(axis=1)


def certified_accuracy(correct, radii, at, *, alpha: float) -> pd.DataFrame:
    """CA(r) = mean(correct and radius >= r) at each r in ``at``, abstentions counting wrong.

    ``ci_low`` / ``ci_high`` are one-sided Clopper-Pearson bounds, each holding with
    probability at least 1 - alpha over the draw of the n points (test points, or draws from
    Q for CA under Q).
    """
    n = len(correct)
    hits = certified_count(correct, radii, at)
    return pd.DataFrame(
        {
            "radius": np.asarray(at, np.float64),
            "certified_accuracy": hits / max(n, 1),
            "ci_low": clopper_pearson_lower(hits, n, alpha),
            "ci_high": clopper_pearson_upper(hits, n, alpha),
            "n": n,
        }
    )
