"""The mixture's sufficient statistics, streamed in two float64 passes over row chunks, and
the covariance shrinkage computed from them (Ledoit-Wolf, OAS, or a fixed intensity)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

SHRINKAGE_RULES = ("ledoit_wolf", "oas", "none")


@dataclass
class ClassMoments:
    """Centred sufficient statistics of each class (float64)."""

    counts: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    scatter: np.ndarray  # (K, d, d) per class, or (d, d) pooled, or (K, d) diagonals
    fourth: np.ndarray  # (K,) sum_i ||z_i - mu_k||^4, for the Ledoit-Wolf shrinkage


def chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def class_moments(X, y_codes, num_classes, *, scatter: str, chunk_size: int) -> ClassMoments:
    """Two streamed passes: class means, then centred scatter (pooled/per-class/diagonal)."""
    n, d = X.shape
    counts = np.bincount(y_codes, minlength=num_classes).astype(np.float64)
    sums = np.zeros((num_classes, d))
    for rows in chunks(n, chunk_size):
        np.add.at(sums, y_codes[rows], np.asarray(X[rows], np.float64))
    means = sums / counts[:, None]

    shape = {"pooled": (d, d), "per_class": (num_classes, d, d), "diag": (num_classes, d)}
    scatter_sum = np.zeros(shape[scatter])
    fourth = np.zeros(num_classes)
    for rows in chunks(n, chunk_size):
        codes = y_codes[rows]
        resid = np.asarray(X[rows], np.float64) - means[codes]
        sq = np.einsum("ij,ij->i", resid, resid)
        np.add.at(fourth, codes, sq**2)
        if scatter == "pooled":
            scatter_sum += resid.T @ resid
        elif scatter == "diag":
            np.add.at(scatter_sum, codes, resid**2)
        else:
            for k in np.unique(codes):
                r = resid[codes == k]
                scatter_sum[k] += r.T @ r
    return ClassMoments(counts, means, scatter_sum, fourth)


def shrinkage_intensity(cov: np.ndarray, n: float, fourth_sum: float, rule) -> float:
    """Shrinkage alpha in (1 - alpha) S + alpha (tr S / d) I, from centred moments.

    ``cov`` is the MLE covariance S of n centred points and ``fourth_sum`` = sum ||x_i||^4.
    Ledoit-Wolf and OAS follow scikit-learn's ``ledoit_wolf`` / ``oas`` exactly (the tests
    check it), computed from sufficient statistics instead of the data matrix.
    """
    if rule == "none" or rule is None:
        return 0.0
    if isinstance(rule, numbers.Real):
        return float(rule)
    d = cov.shape[0]
    if d == 1:
        return 0.0
    mu = np.trace(cov) / d
    frob2 = float(np.sum(cov**2))
    if rule == "ledoit_wolf":
        beta = (fourth_sum / n - frob2) / (d * n)
        delta = (frob2 - 2 * mu * np.trace(cov) + d * mu**2) / d
        beta = min(beta, delta)
        return 0.0 if beta == 0 else float(beta / delta)
    if rule == "oas":
        alpha = frob2 / d**2
        den = (n + 1) * (alpha - mu**2 / d)
        return 1.0 if den == 0 else float(min((alpha + mu**2) / den, 1.0))
    raise ValueError(
        f"unknown shrinkage {rule!r}: use one of {SHRINKAGE_RULES} or a number in [0, 1]"
    )


def shrink(cov, alpha):
    d = cov.shape[-1]
    target = np.trace(cov) / d
    out = (1 - alpha) * cov
    out[np.diag_indices(d)] += alpha * target
    return out
