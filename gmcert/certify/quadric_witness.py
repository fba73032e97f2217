"""Witnesses for the quadric distance: candidate minimisers, their check, and the radius cap.

The dual bisection of :mod:`gmcert.certify.quadric_distance` bounds the l2 distance to
``{g <= 0}`` from below; this module turns its bracket into points ``z + delta`` of the set and
uses them to cap the radius (safeguard 3 of the solver; docs/theory.md section 3).

A few candidate minimisers (regular, hard-case completion) are evaluated with the ORIGINAL
``A`` (not the eigendecomposition), each also scaled by ``1 + s`` for
``s = 1e-12, 1e-10, 1e-8, 1e-6``; the shortest with ``g(z + delta) <= 0`` is returned and
flagged ``witness_verified``. A verified witness is a feasible point, so the radius is capped
at its norm. If none verifies but one is feasible for the shifted problem of safeguard 1 (all
eigenvalues shifted down by ``eta``) up to the rounding of evaluating ``g`` (a singular PSD
``A`` whose true set is empty or astronomically far), the radius is capped at that norm and
the flag is False. If not even that, the radius is capped at the elementary bound
``2 g / (||grad|| + sqrt(||grad||^2 + 4 max(-lam_min, 0) g))`` (the ball on which
``g(z) - ||grad|| r + min(lam_min, 0) r^2 > 0``), which does not rely on the root-finding, and
the flag is False. Each tier only ever lowers the radius.
"""

from __future__ import annotations

import math

import torch

__all__ = ["choose_witness_and_cap", "witness_candidates"]

# Relative scalings tried on an unverified witness before giving up on it.
_WITNESS_SCALES = (0.0, 1e-12, 1e-10, 1e-8, 1e-6)
# In the hard case, eigen-directions with 1 + l lam below this at the end of the bracket are
# treated as the pole eigenspace when building the minimiser (never for the radius).
_POLE_WIDTH = 1e-8


def witness_candidates(
    lo, hi, hi_ok, indefinite, empty, lam_min, i_min, curv, bt, minimiser, constraint_of
):
    """Candidate boundary points in eigen-coordinates, (4, P, n, d); NaN where not applicable.

    0. Regular case: ``y(hi)``, the feasible end of the bracket.
    1. ``y(lo)`` completed along the most negative eigenvector by the exact 1-D root (near-hard
       case: ``y(l)`` is too sensitive to ``l`` near the pole for the bracket ends to be tight).
    2. Hard case (the bracket ran into the pole ``l_max``): as 1, after removing the
       components where ``1 + lo lam_i`` is tiny, since there ``y_i = -lo bt_i / (2 (1 + lo
       lam_i))`` is rounding noise in ``bt_i`` blown up.
    3. Definite A with the root at infinity: the unconstrained minimiser ``-bt / (2 lam)``.
    """
    nan = torch.full_like(bt, math.nan)
    e_min = torch.nn.functional.one_hot(i_min, curv.shape[-1]).to(bt.dtype)[:, None, :]
    y_lo = minimiser(lo)
    regular = torch.where(hi_ok[..., None], minimiser(torch.where(hi_ok, hi, lo)), nan)
    completed = _complete_along(y_lo, e_min, lam_min, bt, constraint_of)
    completed = torch.where(indefinite[..., None], completed, nan)
    hard = indefinite & ~hi_ok
    pole = (1 + lo[..., None] * curv) <= _POLE_WIDTH
    cleaned = _complete_along(torch.where(pole, 0.0, y_lo), e_min, lam_min, bt, constraint_of)
    cleaned = torch.where(hard[..., None], cleaned, nan)
    at_infinity = ~indefinite & ~hi_ok & ~empty
    unconstrained = torch.where(at_infinity[..., None], -0.5 * bt / curv, nan)
    return torch.stack([regular, completed, cleaned, unconstrained])


def _complete_along(y, e, lam_min, bt, constraint_of):
    """``y + t e`` with ``h = 0``: ``h(y) + t (2 lam y_e + bt_e) + lam t^2 = 0``, ``lam < 0``.

    The two real roots have opposite signs; the one giving the shorter point is taken. Where
    ``h(y) <= 0`` already, ``y`` is returned.
    """
    lam = lam_min[:, None]
    h0 = constraint_of(y).clamp(min=0)
    y_e = (y * e).sum(-1)
    slope = 2 * lam * y_e + (bt * e).sum(-1)
    root = (slope**2 - 4 * lam * h0).clamp(min=0).sqrt()
    # Stable pair of roots: qq / lam and h0 / qq.
    qq = -0.5 * (slope + torch.where(slope >= 0, root, -root))
    t1 = qq / lam
    t2 = torch.where(qq != 0, h0 / qq, torch.zeros_like(qq))
    t = torch.where((y_e + t1).abs() <= (y_e + t2).abs(), t1, t2)
    t = torch.where(h0 > 0, t, torch.zeros_like(t))
    return y + t[..., None] * e


def choose_witness_and_cap(
    values, gradients, matrices, candidates, radius, empty, neg_curvature, value_err, *, relaxation
):
    """Pick the shortest verified candidate and cap the radius by its norm.

    candidates: (C, P, n, d) in original coordinates. A candidate is verified if
    ``g(z + (1 + s) delta) <= 0`` with the original matrix for one of the scales ``s``. If
    none is, a candidate feasible up to rounding for the relaxed constraint
    ``g - relaxation ||delta||^2`` (the problem actually solved, see safeguard 1 of the solver)
    still caps the radius but is not flagged verified; if none of those either, the radius is
    capped by the elementary bound.
    """
    d = gradients.shape[-1]
    eps = torch.finfo(values.dtype).eps
    usable = torch.isfinite(candidates).flatten(1).any(1)
    candidates = candidates[usable] if usable.any() else candidates[:1]

    def exact_check(dl):
        return values + (gradients * dl).sum(-1) + ((dl @ matrices) * dl).sum(-1)

    def relaxed_check(dl):  # the shifted constraint, minus a bound on the rounding of g
        rounding = values.abs() + (gradients.abs() * dl.abs()).sum(-1)
        rounding = rounding + ((dl.abs() @ matrices.abs()) * dl.abs()).sum(-1)
        return exact_check(dl) - relaxation * (dl * dl).sum(-1) - 16 * (d + 2) * eps * rounding

    best_true, delta_true = _shortest_passing(candidates, exact_check, empty)
    verified = torch.isfinite(best_true)
    best_relaxed, delta_relaxed = best_true, delta_true
    if not (verified | empty).all():
        best_relaxed, delta_relaxed = _shortest_passing(candidates, relaxed_check, empty)
    relaxed = torch.isfinite(best_relaxed)

    grad_norm = torch.linalg.vector_norm(gradients, dim=-1)
    safe_g = (values - value_err).clamp(min=0)
    elementary = 2 * safe_g / (grad_norm + (grad_norm**2 + 4 * neg_curvature * safe_g).sqrt())
    elementary = torch.nan_to_num(elementary, nan=0.0) * (1 - 8 * d * eps)
    cap = torch.where(verified, best_true, torch.where(relaxed, best_relaxed, elementary))
    radius = torch.where(empty, radius, torch.minimum(radius, cap))
    # An unverified point is still returned (flagged) so that callers get a direction.
    fallback = _first_finite(candidates)
    delta = torch.where(
        verified[..., None], delta_true, torch.where(relaxed[..., None], delta_relaxed, fallback)
    )
    return radius, delta, verified


def _shortest_passing(candidates, check, empty):
    """Per point, the shortest ``(1 + s) candidate`` with ``check <= 0``: (norm, delta); the
    norm is inf (and delta NaN) where none passes."""
    best = torch.full(
        candidates.shape[1:-1], math.inf, dtype=candidates.dtype, device=candidates.device
    )
    chosen = torch.full_like(candidates[0], math.nan)
    for s in _WITNESS_SCALES:
        scaled = candidates * (1 + s)
        passing = (check(scaled) <= 0) & ~empty
        norms = torch.where(passing, torch.linalg.vector_norm(scaled, dim=-1), math.inf)
        shortest, which = norms.min(0)
        better = shortest < best
        best = torch.where(better, shortest, best)
        pick = scaled.gather(0, which[None, ..., None].expand(1, *scaled.shape[1:]))[0]
        chosen = torch.where(better[..., None], pick, chosen)
    return best, chosen


def _first_finite(candidates):
    """(P, n, d): for each point the first candidate without NaN (NaN if none)."""
    out = candidates[-1]
    for c in reversed(range(candidates.shape[0] - 1)):
        usable = torch.isfinite(candidates[c]).all(-1, keepdim=True)
        out = torch.where(usable, candidates[c], out)
    return out
