"""What KL(P || Q) <= eps implies for the probability of an event (docs/theory.md section 6):
the tight kl-inverse bound, and the looser Pinsker and Bretagnolle-Huber bounds for comparison.
Vectorised with numpy broadcasting, float64."""

from __future__ import annotations

import numpy as np

__all__ = ["bernoulli_kl", "kl_inverse_lower", "pinsker_lower", "bretagnolle_huber_lower"]


def bernoulli_kl(p, q):
    """kl(p || q) between Bernoulli(p) and Bernoulli(q), with 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    q = np.clip(np.asarray(q, dtype=np.float64), 1e-300, 1 - 1e-16)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, p * np.log(p / q), 0.0)
        b = np.where(p < 1, (1 - p) * np.log((1 - p) / (1 - q)), 0.0)
    return a + b


def kl_inverse_lower(q, eps, *, iterations: int = 60):
    """Tightest lower bound on P(A) given Q(A) = q and KL(P || Q) <= eps.

    Returns ``inf {p in [0, q] : kl(p || q) <= eps}`` by bisection; kl(. || q) decreases on
    [0, q], so the set is an interval [p*, q]. The lower end of the final bracket is returned:
    it lies on the infeasible side, so the bound is never above p* (a lower bound must err
    low), and it is within 2**-iterations of it.
    """
    q, eps = np.broadcast_arrays(np.asarray(q, np.float64), np.asarray(eps, np.float64))
    if np.any(eps < 0):
        raise ValueError("eps must be >= 0 (it is a KL divergence budget)")
    lo = np.zeros_like(q)
    hi = q.copy()
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        ok = bernoulli_kl(mid, q) <= eps
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    exact = np.where(eps == 0, q, lo)  # eps = 0 means P = Q on the event: p* = q exactly
    return np.where(bernoulli_kl(0.0, q) <= eps, 0.0, exact)


def pinsker_lower(q, eps):
    """Pinsker: P(A) >= Q(A) - sqrt(eps / 2), clipped at 0."""
    return np.clip(np.asarray(q, np.float64) - np.sqrt(np.asarray(eps, np.float64) / 2), 0, 1)


def bretagnolle_huber_lower(q, eps):
    """Bretagnolle-Huber: P(A) >= Q(A) - sqrt(1 - exp(-eps)), clipped at 0."""
    eps = np.asarray(eps, np.float64)
    return np.clip(np.asarray(q, np.float64) - np.sqrt(1 - np.exp(-eps)), 0, 1)
