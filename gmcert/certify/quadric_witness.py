"""Witnesses for the quadric distance: candidate minimisers, their check, and the radius cap.

The dual search of :mod:`gmcert.certify.quadric_distance` bounds the l2 distance to
``{g <= 0}`` from below; this module turns its bracket into points ``z + delta`` of the set and
uses them to cap the radius (safeguard 3 of the solver; docs/theory.md section 3).

A few candidate minimisers (regular, hard-case completion) are evaluated with the ORIGINAL
``A`` (not the eigendecomposition), each also scaled by ``1 + s`` for ``s = 1e-12, 1e-10, 1e-8,
1e-6``; the shortest with ``g(z + delta) <= 0`` is returned and flagged ``witness_verified``.
The products with ``A`` are formed once per candidate: ``g(z + f delta) = g(z) + f b^T delta +
f^2 delta^T A delta`` for each scale ``f = 1 + s`` (the same polynomial as evaluating at the
scaled point, rounded in another order). A verified witness is a feasible point, so the radius
is capped at its norm. If none verifies but one is feasible for the shifted problem of
safeguard 1 (all eigenvalues shifted down by ``eta``) up to the rounding of evaluating ``g`` (a
singular PSD ``A`` whose true set is empty or astronomically far), the radius is capped at that
norm and the flag is False. If not even that, the radius is capped at the elementary bound ``2
g / (||grad|| + sqrt(||grad||^2 + 4 max(-lam_min, 0) g))`` (the ball on which ``g(z) - ||grad||
r + min(lam_min, 0) r^2 > 0``), which does not rely on the root-finding, and the flag is False.
Each tier only ever lowers the radius.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "Candidate",
    "choose_witness_and_cap",
    "first_root",
    "other_candidates",
    "regular_candidate",
]

# Relative scalings tried on an unverified witness before giving up on it.
_WITNESS_SCALES = (0.0, 1e-12, 1e-10, 1e-8, 1e-6)
# In the hard case, eigen-directions with 1 + l lam below this at the end of the bracket are
# treated as the pole eigenspace when building the minimiser (never for the radius).
_POLE_WIDTH = 1e-8


class Candidate:
    """A candidate minimiser ``delta`` (M, d), in original coordinates, for the rows ``rows``
    (M,) of a batch of N; its terms of ``g(z + f delta)`` with the original matrix are formed
    once (one product with the matrix per row)."""

    def __init__(self, rows, delta, values, gradients, blocks):
        self.rows, self.delta = rows, delta
        self.values, self.gradients = values[rows], gradients[rows]
        self.blocks = blocks.take(rows)
        self.linear = (self.gradients * delta).sum(-1)
        self.quadratic = self.blocks.quad_form(delta)
        self.norm = torch.linalg.vector_norm(delta, dim=-1)
        self._magnitudes = None

    def exact(self, f):
        """``g(z + f delta)`` with the original matrix."""
        return self.values + f * self.linear + (f * f) * self.quadratic

    def relaxed(self, f, relaxation):
        """The shifted constraint ``g - relaxation ||f delta||^2``, minus a bound on the
        rounding of ``g`` (the magnitudes are formed on first use: rarely needed)."""
        d = self.delta.shape[-1]
        eps = torch.finfo(self.delta.dtype).eps
        if self._magnitudes is None:
            self._magnitudes = (
                (self.gradients.abs() * self.delta.abs()).sum(-1),
                self.blocks.abs_quad_form(self.delta),
            )
        abs_linear, abs_quadratic = self._magnitudes
        rounding = self.values.abs() + f * abs_linear + (f * f) * abs_quadratic
        shifted = self.exact(f) - relaxation[self.rows] * (f * self.norm) ** 2
        return shifted - 16 * (d + 2) * eps * rounding


def _eigen_minimiser(mult, curv, bt):
    # mult / (1 + mult lam) is formed first so that a huge multiplier cannot overflow.
    return -0.5 * (mult[..., None] / (1 + mult[..., None] * curv)) * bt


def regular_candidate(witness_l, witness_t, hi, hi_ok, curv, bt, gz, eta):
    """Regular case, in eigen-coordinates, as (rows, y): ``y(l)`` at the search's best witness
    multiplier (else at ``hi``, the feasible end of the bracket) scaled onto the boundary of the
    UNshifted problem (eigenvalues ``curv + eta``, safeguard 1 of the solver), so that the check
    with the original matrix sees a boundary point up to rounding; None where a row has
    neither."""
    scaled = torch.isfinite(witness_t)
    rows = (scaled | hi_ok).nonzero().squeeze(-1)
    if len(rows) == 0:
        return None
    c, b = curv[rows], bt[rows]
    y = _eigen_minimiser(torch.where(scaled, witness_l, hi)[rows], c, b)
    curvature = (c * y * y).sum(-1) + eta[rows] * (y * y).sum(-1)
    t = first_root(gz[rows], (b * y).sum(-1), curvature)
    fallback = torch.where(scaled, witness_t, 1.0)[rows]
    return rows, torch.where(torch.isfinite(t), t, fallback)[:, None] * y


def first_root(c, b, a):
    """Smallest ``t > 0`` with ``c + b t + a t^2 = 0``, for ``c > 0`` (inf where none)."""
    disc = b * b - 4 * a * c
    root = disc.clamp(min=0).sqrt()
    # Stable pair of roots: qq / a and c / qq.
    qq = -0.5 * (b + torch.where(b >= 0, root, -root))
    near = torch.where(qq != 0, c / qq, math.inf)
    far = torch.where(a != 0, qq / a, math.inf)
    near = torch.where(near > 0, near, math.inf)
    far = torch.where(far > 0, far, math.inf)
    return torch.where(disc >= 0, torch.minimum(near, far), math.inf)


def other_candidates(lo, hi, hi_ok, indefinite, empty, settled, lam_min, i_min, curv, bt, gz):
    """The other candidates in eigen-coordinates, as a list of (rows, y), each only on the rows
    it applies to (and not on ``settled`` rows, whose regular witness is verified and proven
    within the solver's tolerance of the optimum):

    0. ``y(hi)``, the feasible end of the bracket (where the regular candidate is ``t y(l)``).
    1. ``y(lo)`` completed along the most negative eigenvector by the exact 1-D root (near-hard
       case: ``y(l)`` is too sensitive to ``l`` near the pole for the bracket ends to be tight).
    2. Hard case (the bracket ran into the pole ``l_max``): as 1, after removing the
       components where ``1 + lo lam_i`` is tiny, since there ``y_i = -lo bt_i / (2 (1 + lo
       lam_i))`` is rounding noise in ``bt_i`` blown up.
    3. Definite A with the root at infinity: the unconstrained minimiser ``-bt / (2 lam)``.
    """
    d = curv.shape[-1]
    out = []

    def completion(rows, drop_pole):
        c, b = curv[rows], bt[rows]
        y_lo = _eigen_minimiser(lo[rows], c, b)
        if drop_pole:
            y_lo = torch.where((1 + lo[rows, None] * c) <= _POLE_WIDTH, 0.0, y_lo)
        e_min = torch.nn.functional.one_hot(i_min[rows], d).to(b.dtype)

        def constraint_of(y):  # h(y) in eigen-coordinates
            return gz[rows] + (y * (c * y + b)).sum(-1)

        return rows, _complete_along(y_lo, e_min, lam_min[rows], b, constraint_of)

    rows = (hi_ok & ~settled).nonzero().squeeze(-1)
    if len(rows):
        out.append((rows, _eigen_minimiser(hi[rows], curv[rows], bt[rows])))
    rows = (indefinite & ~settled).nonzero().squeeze(-1)
    if len(rows):
        out.append(completion(rows, drop_pole=False))
    rows = (indefinite & ~hi_ok).nonzero().squeeze(-1)
    if len(rows):
        out.append(completion(rows, drop_pole=True))
    rows = (~indefinite & ~hi_ok & ~empty).nonzero().squeeze(-1)
    if len(rows):
        out.append((rows, -0.5 * bt[rows] / curv[rows]))
    return out


def _complete_along(y, e, lam_min, bt, constraint_of):
    """``y + t e`` with ``h = 0``: ``h(y) + t (2 lam y_e + bt_e) + lam t^2 = 0``, ``lam < 0``.

    The two real roots have opposite signs; the one giving the shorter point is taken. Where
    ``h(y) <= 0`` already, ``y`` is returned.
    """
    lam = lam_min
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
    values, gradients, candidates, radius, empty, neg_curvature, value_err, *, relaxation
):
    """Pick the shortest verified candidate and cap the radius by its norm.

    candidates: a list of :class:`Candidate` of the batch's N rows. A candidate is verified if
    ``g(z + (1 + s) delta) <= 0`` with the original matrix for one of the scales ``s``. If
    none is, a candidate feasible up to rounding for the relaxed constraint
    ``g - relaxation ||delta||^2`` (the problem actually solved, see safeguard 1 of the solver)
    still caps the radius but is not flagged verified; if none of those either, the radius is
    capped by the elementary bound. Rows no candidate covers get a NaN delta.
    """
    d = gradients.shape[-1]
    eps = torch.finfo(values.dtype).eps
    best_true, delta_true = _shortest_passing(candidates, lambda c, f: c.exact(f), empty, gradients)
    verified = torch.isfinite(best_true)
    best_relaxed, delta_relaxed = best_true, delta_true
    if not (verified | empty).all():
        best_relaxed, delta_relaxed = _shortest_passing(
            candidates, lambda c, f: c.relaxed(f, relaxation), empty, gradients
        )
    relaxed = torch.isfinite(best_relaxed)

    grad_norm = torch.linalg.vector_norm(gradients, dim=-1)
    safe_g = (values - value_err).clamp(min=0)
    elementary = 2 * safe_g / (grad_norm + (grad_norm**2 + 4 * neg_curvature * safe_g).sqrt())
    elementary = torch.nan_to_num(elementary, nan=0.0) * (1 - 8 * d * eps)
    cap = torch.where(verified, best_true, torch.where(relaxed, best_relaxed, elementary))
    radius = torch.where(empty, radius, torch.minimum(radius, cap))
    delta = torch.where(verified[..., None], delta_true, delta_relaxed)
    if not (verified | relaxed).all():
        # An unverified point is still returned (flagged) so that callers get a direction.
        fallback = _first_finite(candidates, gradients)
        delta = torch.where((verified | relaxed)[..., None], delta, fallback)
    return radius, delta, verified


def _shortest_passing(candidates, check, empty, like):
    """Per row, the shortest ``(1 + s) delta`` of a candidate with ``check(candidate, 1 + s)
    <= 0``: (norm (N,), delta (N, d) shaped ``like``); the norm is inf (and delta NaN) where
    none passes. Ties go to the smaller scale, then to the earlier candidate."""
    best = torch.full(empty.shape, math.inf, dtype=like.dtype, device=like.device)
    chosen = torch.full_like(like, math.nan)
    for s in _WITNESS_SCALES:
        f = 1 + s
        for c in candidates:
            passing = (check(c, f) <= 0) & ~empty[c.rows]
            length = f * c.norm
            better = passing & (length < best[c.rows])
            if better.any():
                rows = c.rows[better]
                best[rows] = length[better]
                chosen[rows] = f * c.delta[better]
    return best, chosen


def _first_finite(candidates, gradients):
    """(N, d): for each row the first candidate without NaN (NaN if none)."""
    out = torch.full_like(gradients, math.nan)
    for c in reversed(candidates):
        usable = torch.isfinite(c.delta).all(-1)
        out[c.rows[usable]] = c.delta[usable]
    return out
