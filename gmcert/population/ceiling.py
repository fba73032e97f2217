"""The optimal robust linear rule and robust-accuracy ceilings under Q (docs/theory.md
sections 2, 5).

Two classes with means ``+mu`` and ``-mu``, shared covariance ``Sigma``, equal priors, an l2
adversary of radius ``rho``: the rule ``sign(h^T (z - midpoint))`` with
``h = (Sigma + tau I)^-1 mu`` and ``tau >= 0`` solving ``tau ||(Sigma + tau I)^-1 mu||_2 = rho``
has robust error ``Phi(-sqrt(h^T Sigma h))``, and no classifier does better (Bhagoji et al.
2019; Dan et al. 2020). For ``rho >= ||mu||`` the adversary can move both classes onto
``N(midpoint, Sigma)``, so no classifier beats error 1/2 (reached by a constant rule).

Everything here is float64 numpy: these are population quantities, computed once per model.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import stats

from gmcert.models.robust import (
    check_covariance,
    check_radius,
    eigen_coordinates,
    impossibility_radius,
    robust_tau,
    solve_tau,
)

__all__ = [
    "impossibility_radius",  # the robust rule's (gmcert.models.robust), named here too
    "robust_tau",
    "optimal_robust_error",
    "pairwise_robust_error_lower_bound",
    "pairwise_robust_accuracy_ceiling",
]

# Above this many classes the matching is greedy instead of exact (the exact one is 2^K).
EXACT_MATCHING_MAX_CLASSES = 14


def optimal_robust_error(cov, mu, rho, *, norm: str = "l2"):
    """Smallest robust error of ANY classifier at l2 radius ``rho`` (means ``+-mu``, shared
    ``Sigma``, equal priors): ``Phi(-sqrt(h^T Sigma h))``, and 1/2 once ``rho >= ||mu||``.

    ``rho`` may be a scalar (returns a float) or an array (returns an array of its shape).
    For ``Sigma = sigma^2 I`` this is ``Phi(-(||mu|| - rho) / sigma)``. Only the l2 threat
    model is covered; other norms raise ``ValueError``.
    """
    _require_l2(norm)
    spectrum, coords = eigen_coordinates(cov, mu)
    radii = np.asarray(rho, dtype=np.float64)
    flat = np.array([check_radius(r) for r in radii.ravel()])
    errors = _optimal_errors(spectrum, np.broadcast_to(coords, (flat.size, coords.size)), flat)
    return float(errors[0]) if radii.ndim == 0 else errors.reshape(radii.shape)


def pairwise_robust_error_lower_bound(means, cov, priors, rho, *, norm: str = "l2"):
    """Lower bound on the robust error at l2 radius ``rho`` of ANY K-class classifier under Q.

    Q: classes ``N(means[k], Sigma)`` with ``priors``. Sound statement: for every classifier
    ``f`` and every set ``M`` of disjoint class pairs,

        sum_k pi_k P_k[exists ||delta||_2 <= rho: f(z + delta) != k]
            >= sum_{(k, j) in M} 2 min(pi_k, pi_j) e*(k, j),

    with ``e*(k, j)`` the equal-prior optimal binary robust error of
    :func:`optimal_robust_error` for means ``mu_k, mu_j``. Why: on a pair, ``b(u) = k if
    f(u) = k else j`` is a binary rule that is robustly correct wherever ``f`` is, so the pair's
    share of f's robust error is at least ``(pi_k + pi_j)`` times b's robust error under the
    pair's priors ``p, 1 - p``; that error is at least ``2 min(p, 1 - p)`` times the
    equal-prior error of ``b``, itself at least ``e*``. Disjoint pairs involve disjoint classes,
    so their shares add up.

    ``M`` maximises the bound: exactly (dynamic programming over subsets) for
    K <= ``EXACT_MATCHING_MAX_CLASSES``, greedily above (still sound, maybe less tight).
    Cost: one bisection per class pair, O(K^2 d). Returns ``(bound, pairs)``.
    """
    _require_l2(norm)
    cov = check_covariance(cov)
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or means.shape[1] != cov.shape[0]:
        raise ValueError(f"means must have shape (K, {cov.shape[0]}), got {means.shape}")
    priors = _priors(priors, means.shape[0])
    rho = check_radius(rho)
    weights = _pair_weights(means, cov, priors, rho)
    pairs = _best_matching(weights)
    return float(sum(weights[k, j] for k, j in pairs)), pairs


def pairwise_robust_accuracy_ceiling(means, cov, priors, rho, *, norm: str = "l2") -> float:
    """``1 -`` :func:`pairwise_robust_error_lower_bound`: no classifier's robust accuracy under
    Q at l2 radius ``rho`` exceeds this (sound upper bound, not necessarily attained for
    K > 2; attained for K = 2 with equal priors)."""
    bound, _ = pairwise_robust_error_lower_bound(means, cov, priors, rho, norm=norm)
    return 1.0 - bound


def _pair_weights(means, cov, priors, rho):
    """(K, K) symmetric: ``2 min(pi_k, pi_j) e*(k, j)``; the diagonal is 0."""
    K = means.shape[0]
    spectrum, basis = np.linalg.eigh(cov)
    rows, cols = np.triu_indices(K, 1)
    half_gaps = 0.5 * (means[rows] - means[cols]) @ basis
    errors = _optimal_errors(spectrum, half_gaps, np.full(len(rows), rho))
    weights = np.zeros((K, K))
    weights[rows, cols] = 2 * np.minimum(priors[rows], priors[cols]) * errors
    return weights + weights.T


def _best_matching(weights):
    K = weights.shape[0]
    if K <= EXACT_MATCHING_MAX_CLASSES:
        return _exact_matching(weights)
    return _greedy_matching(weights)


def _exact_matching(weights):
    """Maximum-weight matching by DP over the set of still unmatched classes."""
    K = weights.shape[0]
    memo = {0: (0.0, ())}

    def best(mask):
        if mask in memo:
            return memo[mask]
        i = (mask & -mask).bit_length() - 1  # lowest unmatched class: matched or left alone
        rest = mask & ~(1 << i)
        value, pairs = best(rest)
        for j in range(i + 1, K):
            if rest >> j & 1:
                sub_value, sub_pairs = best(rest & ~(1 << j))
                if weights[i, j] + sub_value > value:
                    value, pairs = weights[i, j] + sub_value, ((i, j),) + sub_pairs
        memo[mask] = (value, pairs)
        return memo[mask]

    return list(best((1 << K) - 1)[1])


def _greedy_matching(weights):
    K = weights.shape[0]
    edges = sorted(itertools.combinations(range(K), 2), key=lambda e: -weights[e])
    used, pairs = set(), []
    for k, j in edges:
        if k not in used and j not in used and weights[k, j] > 0:
            used.update((k, j))
            pairs.append((k, j))
    return pairs


def _optimal_errors(spectrum, coords, rho):
    """Vectorised ``Phi(-sqrt(h^T Sigma h))`` over rows of ``coords`` (mu in Sigma's
    eigenbasis), 1/2 where ``rho >= ||mu||``."""
    tau = solve_tau(spectrum, coords, rho)
    finite = np.isfinite(tau)
    t = np.where(finite, tau, 0.0)[:, None]
    # h = m / (s + tau) in the eigenbasis, so h^T Sigma h = sum m^2 s / (s + tau)^2.
    margin = np.sqrt(np.sum(coords**2 * spectrum / (spectrum + t) ** 2, axis=1))
    return np.where(finite, stats.norm.cdf(-margin), 0.5)


def _priors(priors, K):
    priors = np.asarray(priors, dtype=np.float64)
    if priors.shape != (K,) or np.any(priors < 0) or abs(priors.sum() - 1) > 1e-8:
        raise ValueError(f"priors must be {K} non-negative numbers summing to 1, got {priors}")
    return priors


def _require_l2(norm):
    if norm != "l2":
        raise ValueError(
            f"the optimal robust error formula holds for the l2 threat model only, got "
            f"norm={norm!r}; for linf/l1 use certified accuracy under Q instead"
        )
