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

__all__ = [
    "impossibility_radius",
    "robust_tau",
    "optimal_robust_error",
    "pairwise_robust_error_lower_bound",
    "pairwise_robust_accuracy_ceiling",
]

# Above this many classes the matching is greedy instead of exact (the exact one is 2^K).
EXACT_MATCHING_MAX_CLASSES = 14
_BISECTION_STEPS = 400


def impossibility_radius(mu) -> float:
    """``||mu||_2``: from this l2 radius on, no classifier has robust error below 1/2."""
    return float(np.linalg.norm(_vector(mu, "mu")))


def robust_tau(cov, mu, rho) -> float:
    """The unique ``tau >= 0`` with ``tau ||(Sigma + tau I)^-1 mu||_2 = rho``.

    ``tau = 0`` at ``rho = 0``; ``inf`` when ``rho >= ||mu||_2`` (the left side increases
    strictly from 0 to ``||mu||`` as ``tau`` goes from 0 to infinity, so there is no finite
    root: robust classification is impossible there). Units: those of ``Sigma``'s eigenvalues.
    """
    spectrum, coords = _eigen_coordinates(cov, mu)
    rho = _radius(rho)
    return float(_solve_tau(spectrum, coords[None], np.array([rho]))[0])


def optimal_robust_error(cov, mu, rho, *, norm: str = "l2"):
    """Smallest robust error of ANY classifier at l2 radius ``rho`` (means ``+-mu``, shared
    ``Sigma``, equal priors): ``Phi(-sqrt(h^T Sigma h))``, and 1/2 once ``rho >= ||mu||``.

    ``rho`` may be a scalar (returns a float) or an array (returns an array of its shape).
    For ``Sigma = sigma^2 I`` this is ``Phi(-(||mu|| - rho) / sigma)``. Only the l2 threat
    model is covered; other norms raise ``ValueError``.
    """
    _require_l2(norm)
    spectrum, coords = _eigen_coordinates(cov, mu)
    radii = np.asarray(rho, dtype=np.float64)
    flat = np.array([_radius(r) for r in radii.ravel()])
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
    cov = _covariance(cov)
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or means.shape[1] != cov.shape[0]:
        raise ValueError(f"means must have shape (K, {cov.shape[0]}), got {means.shape}")
    priors = _priors(priors, means.shape[0])
    rho = _radius(rho)
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
    tau = _solve_tau(spectrum, coords, rho)
    finite = np.isfinite(tau)
    t = np.where(finite, tau, 0.0)[:, None]
    # h = m / (s + tau) in the eigenbasis, so h^T Sigma h = sum m^2 s / (s + tau)^2.
    margin = np.sqrt(np.sum(coords**2 * spectrum / (spectrum + t) ** 2, axis=1))
    return np.where(finite, stats.norm.cdf(-margin), 0.5)


def _solve_tau(spectrum, coords, rho):
    """Vectorised root of ``F(tau) = ||m tau / (s + tau)|| = rho`` (increasing in tau).

    Bracket from ``tau ||m|| / (s_max + tau) <= F(tau) <= tau ||m|| / (s_min + tau)``:
    ``[rho s_min / (||m|| - rho), rho s_max / (||m|| - rho)]``, then bisection to adjacent
    floats.
    """
    norm_m = np.linalg.norm(coords, axis=1)
    possible = rho < norm_m
    gap = np.where(possible, norm_m - rho, 1.0)
    lo = rho * spectrum.min() / gap * 0.5
    hi = rho * spectrum.max() / gap * 2.0

    def excess(tau):
        return np.linalg.norm(coords * (tau[:, None] / (spectrum + tau[:, None])), axis=1) - rho

    for _ in range(_BISECTION_STEPS):
        mid = lo + 0.5 * (hi - lo)
        if np.all((mid <= lo) | (mid >= hi)):
            break
        below = excess(mid) < 0
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    tau = 0.5 * (lo + hi)
    tau = np.where(rho == 0, 0.0, tau)
    return np.where(possible, tau, np.inf)


def _eigen_coordinates(cov, mu):
    cov = _covariance(cov)
    mu = _vector(mu, "mu", cov.shape[0])
    spectrum, basis = np.linalg.eigh(cov)
    return spectrum, basis.T @ mu


def _covariance(cov):
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"cov must be a square (d, d) matrix, got shape {cov.shape}")
    if not np.all(np.isfinite(cov)):
        raise ValueError("cov contains NaN or inf")
    if not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-12 * np.abs(cov).max()):
        raise ValueError("cov must be symmetric; pass 0.5 * (cov + cov.T)")
    cov = 0.5 * (cov + cov.T)
    if np.linalg.eigvalsh(cov).min() <= 0:
        raise ValueError("cov must be positive definite; add shrinkage (e.g. Ledoit-Wolf)")
    return cov


def _vector(x, name, dim=None):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or (dim is not None and x.shape[0] != dim):
        raise ValueError(f"{name} must have shape ({dim if dim else 'd'},), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _radius(rho):
    rho = float(rho)
    if not np.isfinite(rho) or rho < 0:
        raise ValueError(f"rho must be a finite radius >= 0, got {rho}")
    return rho


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
