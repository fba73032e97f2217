"""The robust linear rule's closed forms (docs/theory.md section 2): its tau and the radius
from which no rule is robust.

Two classes with means ``+mu`` and ``-mu`` and shared covariance ``Sigma``, an l2 adversary of
radius ``rho``: the optimal robust rule is ``sign(h^T (z - midpoint))`` with
``h = (Sigma + tau I)^-1 mu`` and ``tau >= 0`` solving ``tau ||(Sigma + tau I)^-1 mu||_2 = rho``
(Bhagoji et al. 2019; Dan et al. 2020). The fit stage fits that rule (:mod:`gmcert.fit`); the
ceilings under Q (:mod:`gmcert.population.ceiling`) evaluate its error. Float64 numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "check_covariance",
    "check_radius",
    "eigen_coordinates",
    "impossibility_radius",
    "robust_tau",
    "solve_tau",
]

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
    spectrum, coords = eigen_coordinates(cov, mu)
    rho = check_radius(rho)
    return float(solve_tau(spectrum, coords[None], np.array([rho]))[0])


def solve_tau(spectrum, coords, rho):
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


def eigen_coordinates(cov, mu):
    cov = check_covariance(cov)
    mu = _vector(mu, "mu", cov.shape[0])
    spectrum, basis = np.linalg.eigh(cov)
    return spectrum, basis.T @ mu


def check_covariance(cov):
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


def check_radius(rho):
    rho = float(rho)
    if not np.isfinite(rho) or rho < 0:
        raise ValueError(f"rho must be a finite radius >= 0, got {rho}")
    return rho
