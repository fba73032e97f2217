"""Exact l2 distance to a quadric via the S-lemma dual (docs/theory.md section 3).

The core problem, for one constraint ``g`` and one point ``z`` with ``g(z) > 0``::

    R(z)^2 = min ||delta||^2  s.t.  g(z + delta) = g(z) + grad^T delta + delta^T A delta <= 0.

In the eigenbasis ``A = V diag(lam) V^T``, ``y = V^T delta``, ``bt = V^T grad``, the
Lagrangian ``||y||^2 + l h(y)`` is minimised by ``y(l) = -(l / 2) bt / (1 + l lam)`` and gives
the dual function

    q(l) = l g(z) - (l^2 / 4) sum_i bt_i^2 / (1 + l lam_i),   0 <= l < l_max,

with ``l_max = -1 / lam_min`` when ``lam_min < 0`` and ``+inf`` otherwise. By weak duality
``q(l) <= R(z)^2`` for EVERY ``l`` in that interval, and by the S-lemma ``sup q = R(z)^2``.
``q`` is concave with ``q'(l) = h(y(l))``, which decreases strictly, so a safeguarded Newton
search on the sign of ``h(y(l))`` (bisection where Newton leaves the bracket) brackets the
maximiser. The radius is ``sqrt(q)`` at the best multiplier evaluated (any ``l`` in the interval
gives a lower bound); the search stops once the feasible end of the bracket proves that bound
within a relative ``_GAP_ULPS (d + 2) eps`` of ``R(z)^2`` (see :func:`_search`). The "hard
case" (``bt`` has no weight on the most negative eigenvector) needs no special branch for the
radius, because then ``sup q`` is the limit at ``l_max``, and only the minimiser is completed by
a step along that eigenvector.

Batching: rows are flat (N,); the ``d x d`` work (into and out of each matrix's eigenbasis, and
the witness check with the original matrix) is done per block of rows sharing a matrix
(:class:`Blocks`), everything else is elementwise over rows, and rows leave the working set as
soon as their search has converged.

Floating-point safeguards (soundness first: a radius must never exceed the true distance):

1. Eigenvalue error: all eigenvalues are shifted down by ``eta = 16 d eps max|lam|`` before
   solving. The true ``delta^T A delta`` is at least the shifted one, so the shifted feasible
   set contains the true one and its distance is a lower bound. Side effect: a singular PSD
   ``A`` whose set is empty gets a huge finite radius (about ``sqrt(g(z) / eta)``) instead of
   ``inf``; a clearly definite ``A`` keeps ``inf``.
2. Rounding in ``q``: a first-order bound on the rounding error of ``g(z)``, ``grad`` and the
   sum in ``q`` is subtracted before the square root, and the root is shrunk by a relative
   ``8 d eps``. This is an error estimate, not interval arithmetic.
3. Witness check: candidate minimisers are checked with the original ``A`` and cap the radius
   (:mod:`gmcert.certify.quadric_witness`, which states the tiers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gmcert.certify.quadric_witness import (
    Candidate,
    choose_witness_and_cap,
    first_root,
    other_candidates,
    regular_candidate,
)

__all__ = [
    "Blocks",
    "first_root",
    "QuadricDistance",
    "as_real_tensor",
    "check_symmetric",
    "distance_to_quadric",
    "solve_in_blocks",
    "solve_local_quadric",
]

# The search stops earlier once every row has converged or its bracket is two adjacent floats;
# this only caps pathologies (a root within a few ulp of zero needs about 1100 halvings of l_max).
_MAX_BISECTIONS = 1200
_MAX_DOUBLINGS = 1100
# Convergence: ||y(hi)||^2 - max q <= _GAP_ULPS (d + 2) eps max q, i.e. the radius is known to a
# relative 1 (d + 2) eps (about 6e-14 at d = 256), far below the 1e-9 the tests ask for.
_GAP_ULPS = 2
# Newton steps go this fraction further than Newton says, so that near the root consecutive
# iterates fall on both sides of it and the bracket closes from both ends.
_OVERSHOOT = 1e-3
# A row whose bracket shrank by less than this factor over two Newton steps bisects next; rarer
# bisection measured faster (Newton from one side near a pole is slow but still shrinks).
_STALL = 0.99
# Products with the blocks' d x d matrices loop over blocks up to this many blocks, and are one
# batched product over per-row copies beyond (many small blocks: large K), within this memory.
_LOOP_BLOCKS = 64
# The search's working set is compacted once at most this fraction of it is still running.
_COMPACT = 0.7
_GATHER_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class QuadricDistance:
    """Result of :func:`distance_to_quadric` / :func:`solve_local_quadric`.

    radius: (..., n) lower bound on the l2 distance to ``{g <= 0}``; 0 where ``g(z) <= 0``,
        ``inf`` where the set is provably empty.
    delta: (..., n, d) a minimiser (``z + delta`` is on the boundary); NaN where radius is inf.
    witness_verified: (..., n) True where ``g(z + delta) <= 0`` was checked in floating point
        with the original matrix (then ``radius <= ||delta||``); where False, ``delta`` is the
        solver's best unverified candidate (see :mod:`gmcert.certify.quadric_witness`).
    """

    radius: torch.Tensor
    delta: torch.Tensor
    witness_verified: torch.Tensor


def distance_to_quadric(Z, A, b, c, *, device=None, dtype=torch.float64) -> QuadricDistance:
    """l2 distance from each row of ``Z`` to ``{u : u^T A u + b^T u + c <= 0}``.

    Z: (n, d) points; A: (d, d) symmetric; b: (d,); c: scalar. One eigendecomposition of ``A``
    serves the whole batch. Rows with ``g(z) <= 0`` already lie in the set: radius 0, delta 0.
    Guarantee: ``radius <= true distance`` (see the module docstring for the floating-point
    safeguards), and within rounding of it otherwise.
    """
    device = torch.device(device) if device is not None else _device_of(Z)
    Z = as_real_tensor(Z, "Z", device, dtype)
    A = as_real_tensor(A, "A", device, dtype)
    b = as_real_tensor(b, "b", device, dtype)
    c = as_real_tensor(c, "c", device, dtype)
    if Z.ndim != 2:
        raise ValueError(
            f"Z must have shape (n, d), got {tuple(Z.shape)}; use Z[None] for one point"
        )
    d = Z.shape[1]
    if A.shape != (d, d) or b.shape != (d,) or c.ndim != 0:
        raise ValueError(
            f"with Z of shape {tuple(Z.shape)}, A must be ({d}, {d}), b ({d},) and c a scalar; "
            f"got A {tuple(A.shape)}, b {tuple(b.shape)}, c {tuple(c.shape)}"
        )
    check_symmetric(A, "A")
    Az = Z @ A
    values = (Az * Z).sum(-1) + Z @ b + c
    gradients = 2 * Az + b
    # Magnitudes of the summands, for the rounding-error estimate.
    absZ = Z.abs()
    value_scale = ((absZ @ A.abs()) * absZ).sum(-1) + absZ @ b.abs() + c.abs()
    gradient_scale = torch.linalg.vector_norm(2 * absZ @ A.abs() + b.abs(), dim=-1)
    lam, vecs = torch.linalg.eigh(A)
    out = solve_local_quadric(
        values[None],
        gradients[None],
        A[None],
        lam[None],
        vecs[None],
        value_scale=value_scale[None],
        gradient_scale=gradient_scale[None],
    )
    return QuadricDistance(out.radius[0], out.delta[0], out.witness_verified[0])


def solve_local_quadric(
    values, gradients, matrices, eigenvalues, eigenvectors, *, value_scale=None, gradient_scale=None
) -> QuadricDistance:
    """Batched core: ``min ||delta||`` s.t. ``values + gradients . delta + delta^T A delta <= 0``.

    Shapes: values (P, n), gradients (P, n, d), matrices (P, d, d) symmetric,
    eigenvalues (P, d) and eigenvectors (P, d, d) (columns) from ``torch.linalg.eigh`` of the
    matrices; ``P`` constraints, each applied to its own ``n`` points. ``value_scale`` and
    ``gradient_scale`` (P, n) bound the magnitudes of the summands that produced ``values`` and
    ``gradients`` (for the rounding-error estimate; default: their absolute values).
    A matrix that is exactly zero is solved in closed form (``values / ||gradients||``).
    """
    if gradients.ndim != 3:
        raise ValueError(f"gradients must have shape (P, n, d), got {tuple(gradients.shape)}")
    P, n, d = gradients.shape
    expected = {
        "values": (P, n),
        "matrices": (P, d, d),
        "eigenvalues": (P, d),
        "eigenvectors": (P, d, d),
    }
    given = {
        "values": values,
        "matrices": matrices,
        "eigenvalues": eigenvalues,
        "eigenvectors": eigenvectors,
    }
    for name, shape in expected.items():
        if tuple(given[name].shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} to match gradients (P, n, d) = "
                f"{(P, n, d)}, got {tuple(given[name].shape)}"
            )
    if value_scale is None:
        value_scale = values.abs()
    if gradient_scale is None:
        gradient_scale = torch.linalg.vector_norm(gradients, dim=-1)
    out = solve_in_blocks(
        values.reshape(P * n),
        gradients.reshape(P * n, d),
        eigenvalues.repeat_interleave(n, dim=0),
        Blocks([p * n for p in range(P + 1)], eigenvectors, matrices),
        value_scale=value_scale.reshape(P * n),
        gradient_scale=gradient_scale.reshape(P * n),
    )
    return QuadricDistance(
        out.radius.reshape(P, n), out.delta.reshape(P, n, d), out.witness_verified.reshape(P, n)
    )


class Blocks:
    """The constraint matrices of a flat batch of rows: block ``b`` owns the consecutive rows
    ``offsets[b]:offsets[b + 1]``, and row ``i``'s matrix is ``sign[i] * matrices[b]``, whose
    eigenvectors (columns) are ``eigenvectors[b]`` for either sign (a class pair serves both of
    its orders: ``A_kj = -A_jk``). Only the per-block products below touch a ``d x d`` matrix;
    everything else in the solver is elementwise over rows."""

    def __init__(self, offsets, eigenvectors, matrices, sign=None, zero=None):
        self.offsets = [int(o) for o in offsets]
        self.eigenvectors = eigenvectors
        self.matrices = matrices
        self.sign = sign
        self.zero = zero  # per block, whether its matrix is exactly zero (None: look)

    def spans(self):
        """(block, first row, end row) of every non-empty block."""
        for b in range(len(self.offsets) - 1):
            start, stop = self.offsets[b], self.offsets[b + 1]
            if stop > start:
                yield b, start, stop

    def take(self, rows):
        """The blocks of the rows ``rows`` (increasing indices), renumbered from 0."""
        bounds = torch.tensor(self.offsets, device=rows.device)
        offsets = torch.searchsorted(rows, bounds).tolist()
        sign = None if self.sign is None else self.sign[rows]
        return Blocks(offsets, self.eigenvectors, self.matrices, sign, self.zero)

    def _per_row(self, source, x):
        """(N, d, d): each row's block matrix from ``source``, where many small blocks make one
        batched product cheaper than a loop over blocks (memory permitting); else None."""
        spans = list(self.spans())
        n, d = x.shape
        if len(spans) <= _LOOP_BLOCKS or n * d * d * x.element_size() > _GATHER_BYTES:
            return None
        counts = torch.tensor([stop - start for _, start, stop in spans], device=x.device)
        stacked = torch.stack([source[b] for b, _, _ in spans])
        return stacked.repeat_interleave(counts, dim=0)

    def _times(self, source, x, *, transpose=False):
        """(N, d): each row of ``x`` times its block's matrix from ``source``."""
        per_row = self._per_row(source, x)
        if per_row is not None:
            per_row = per_row.transpose(1, 2) if transpose else per_row
            return torch.bmm(x[:, None, :], per_row)[:, 0]
        out = torch.empty_like(x)
        for b, start, stop in self.spans():
            matrix = source[b].T if transpose else source[b]
            out[start:stop] = x[start:stop] @ matrix
        return out

    def to_eigen(self, x):
        """(N, d): each row in its block's eigenbasis, ``V^T x``."""
        return self._times(self.eigenvectors, x)

    def from_eigen(self, y):
        """(N, d): each row back from its block's eigenbasis, ``V y``."""
        return self._times(self.eigenvectors, y, transpose=True)

    def quad_form(self, delta):
        """(N,) ``delta^T A delta`` with each row's original (signed) matrix."""
        out = (self._times(self.matrices, delta) * delta).sum(-1)
        # Negating is exact, so this equals the product with the negated matrix bitwise.
        return out if self.sign is None else self.sign * out

    def abs_quad_form(self, delta):
        """(N,) ``|delta|^T |A| |delta|``, the magnitude of the summands of :meth:`quad_form`."""
        magnitudes = [m.abs() for m in self.matrices]
        return (self._times(magnitudes, delta.abs()) * delta.abs()).sum(-1)

    def zero_matrix(self, n_rows, device):
        """(N,) True for the rows whose matrix is exactly zero."""
        out = torch.zeros(n_rows, dtype=torch.bool, device=device)
        for b, start, stop in self.spans():
            if self.zero[b] if self.zero is not None else not self.matrices[b].any():
                out[start:stop] = True
        return out


def solve_in_blocks(
    values, gradients, eigenvalues, blocks, *, value_scale=None, gradient_scale=None
) -> QuadricDistance:
    """Flat core: row ``i`` is ``min ||delta||`` s.t. ``values[i] + gradients[i] . delta +
    delta^T A_i delta <= 0`` with ``A_i`` given by ``blocks`` (:class:`Blocks`) and its
    eigenvalues ``eigenvalues[i]`` (already signed). Shapes: values (N,), gradients (N, d),
    eigenvalues (N, d); the result has radius (N,), delta (N, d), witness_verified (N,)."""
    N, d = gradients.shape
    eps = torch.finfo(gradients.dtype).eps
    if value_scale is None:
        value_scale = values.abs()
    if gradient_scale is None:
        gradient_scale = torch.linalg.vector_norm(gradients, dim=-1)
    value_err = 8 * (d + 2) * eps * value_scale
    grad_norm = torch.linalg.vector_norm(gradients, dim=-1)
    gradient_err = 4 * (d + 2) * eps * (gradient_scale + grad_norm)

    linear = blocks.zero_matrix(N, gradients.device)
    radius = torch.empty_like(values)
    delta = torch.empty_like(gradients)
    verified = torch.empty_like(values, dtype=torch.bool)
    for mask, solver in ((linear, _solve_linear), (~linear, _solve_quadratic)):
        if not mask.any():
            continue
        if mask.all():
            r, dl, ok = solver(values, gradients, eigenvalues, blocks, value_err, gradient_err)
            radius, delta, verified = r, dl, ok
            continue
        rows = mask.nonzero().squeeze(-1)
        r, dl, ok = solver(
            values[rows],
            gradients[rows],
            eigenvalues[rows],
            blocks.take(rows),
            value_err[rows],
            gradient_err[rows],
        )
        radius[rows], delta[rows], verified[rows] = r, dl, ok

    inside = values <= 0
    radius = torch.where(inside, torch.zeros_like(radius), radius)
    delta = torch.where(inside[..., None], torch.zeros_like(delta), delta)
    verified = verified | inside
    return QuadricDistance(radius, delta, verified)


def _solve_linear(values, gradients, eigenvalues, blocks, value_err, gradient_err):
    """A = 0: the distance to a half-space, ``g(z) / ||grad||``."""
    d = gradients.shape[-1]
    eps = torch.finfo(values.dtype).eps
    safe_values = values.clamp(min=0)
    grad_norm = torch.linalg.vector_norm(gradients, dim=-1)
    radius = (safe_values - value_err).clamp(min=0) / (grad_norm + gradient_err)
    radius = radius * (1 - 8 * d * eps)
    delta = -(safe_values / grad_norm**2)[..., None] * gradients
    never = grad_norm == 0
    radius = torch.where(never, torch.full_like(radius, math.inf), radius)
    delta = torch.where(never[..., None], torch.full_like(delta, math.nan), delta)
    no_curvature = torch.zeros_like(values)
    rows = torch.arange(len(values), device=values.device)
    return choose_witness_and_cap(
        values,
        gradients,
        [Candidate(rows, delta, values, gradients, blocks)],
        radius,
        never,
        no_curvature,
        value_err,
        relaxation=torch.zeros_like(values),
    )


def _solve_quadratic(values, gradients, eigenvalues, blocks, value_err, gradient_err):
    """Dual search in the eigenbasis (module docstring); all inputs flat over rows (N,)."""
    N, d = gradients.shape
    eps = torch.finfo(values.dtype).eps
    gz = torch.where(values > 0, values, torch.ones_like(values))  # rows <= 0 are reset later

    eta = (16 * d * eps * eigenvalues.abs().amax(-1)).clamp(min=torch.finfo(values.dtype).tiny)
    lam = eigenvalues - eta[:, None]
    lam = torch.where(lam == 0, -eta[:, None], lam)  # keep every eigenvalue away from exactly 0
    lam_min, i_min = lam.min(-1)
    indefinite = lam_min < 0
    bt = blocks.to_eigen(gradients)
    curv = lam

    def constraint_at(mult, rows):  # h(y(l)) = q'(l) of the rows ``rows``, decreasing in l
        # mult / (1 + mult lam) is formed first so that a huge multiplier cannot overflow.
        c, b = curv[rows], bt[rows]
        y = -0.5 * (mult[..., None] / (1 + mult[..., None] * c)) * b
        return gz[rows] + (y * (c * y + b)).sum(-1)

    # Definite A: the set is empty iff min h = h(-bt / (2 lam)) > 0; claim it only beyond the
    # rounding error, otherwise fall through to the (always sound) dual bound.
    empty = torch.zeros_like(indefinite)
    definite = (~indefinite).nonzero().squeeze(-1)
    if len(definite):
        inverse = curv[definite].reciprocal()
        bt_sq = bt[definite] ** 2
        lowest_value = gz[definite] - 0.25 * _row_dot(bt_sq, inverse)
        lowest_err = value_err[definite] + 8 * (d + 2) * eps * 0.25 * _row_dot(bt_sq, inverse.abs())
        empty[definite] = lowest_value > lowest_err

    lo, hi, hi_ok = _initial_bracket(gz, bt, lam_min, indefinite, empty, constraint_at)
    lo, hi, hi_ok, dual, witness, tight = _search(
        gz, bt, curv, lam_min, lo, hi, hi_ok, value_err, gradient_err, eps
    )
    radius = dual.clamp(min=0).sqrt() * (1 - 8 * d * eps)
    radius = torch.where(empty, torch.full_like(radius, math.inf), radius)

    def to_original(rows, y):
        return Candidate(rows, blocks.take(rows).from_eigen(y), values, gradients, blocks)

    # The regular witness first: rows where it verifies and the search proved it within its
    # tolerance of the optimum need no other candidate.
    candidates = []
    regular = regular_candidate(*witness, hi, hi_ok, curv, bt, gz, eta)
    settled = torch.zeros_like(hi_ok)
    if regular is not None:
        candidates.append(to_original(*regular))
        rows = candidates[0].rows
        # It lies on the boundary, so the check at scale 1 + 1e-12 (the first above 1) decides.
        passes = (candidates[0].exact(1.0) <= 0) | (candidates[0].exact(1 + 1e-12) <= 0)
        settled[rows] = tight[rows] & passes
    others = other_candidates(
        lo, hi, hi_ok, indefinite, empty, settled, lam_min, i_min, curv, bt, gz
    )
    candidates += [to_original(rows, y) for rows, y in others]
    negative_curvature = (-lam_min).clamp(min=0)
    return choose_witness_and_cap(
        values,
        gradients,
        candidates,
        radius,
        empty,
        negative_curvature,
        value_err,
        relaxation=eta,
    )


def _initial_bracket(gz, bt, lam_min, indefinite, empty, constraint_at):
    """Bracket ``[lo, hi]`` of the multiplier, with ``h(y(lo)) > 0``.

    Indefinite A: ``[0, l_max]``. Definite A: ``h(y(l)) >= g - l ||bt||^2 / 2`` makes
    ``l_lin = 2 g / ||bt||^2`` a lower end; the upper end is found by doubling. ``hi_ok``
    marks brackets whose upper end is a valid point with ``h(y(hi)) <= 0``.
    """
    l_max = -1 / lam_min
    bt_sq = (bt**2).sum(-1)
    l_lin = torch.where(bt_sq > 0, 2 * gz / bt_sq, torch.ones_like(gz))
    lo = torch.where(indefinite, torch.zeros_like(gz), l_lin)
    hi = torch.where(indefinite, l_max, l_lin)
    hi_ok = torch.zeros_like(indefinite)
    rows = (~indefinite & ~empty).nonzero().squeeze(-1)  # only these rows are evaluated
    for _ in range(_MAX_DOUBLINGS):
        if len(rows) == 0:
            break
        h = constraint_at(hi[rows], rows)
        hi_ok[rows[h <= 0]] = True
        rows = rows[(h > 0) & (hi[rows] < 1e300)]
        lo[rows] = hi[rows]
        hi[rows] = 2 * hi[rows]
    # Where doubling gave up (root at infinity) or the set is empty, collapse the bracket.
    hi = torch.where(~indefinite & ~hi_ok, lo, hi)
    return lo, hi, hi_ok


def _search(gz, bt, lam, lam_min, lo, hi, hi_ok, value_err, gradient_err, eps):
    """Safeguarded Newton on ``h(y(l)) = q'(l)`` inside the bracket.

    Returns the final ``lo, hi, hi_ok``; per row the best dual lower bound on ``R^2`` found
    (``q(l)`` less its rounding-error estimate, maximised over every multiplier evaluated); the
    best primal witness found, as ``(l_w, t_w)``: the point ``t_w y(l_w)`` (``t_w`` inf where
    none was found); and ``tight``: the rows that stopped on the gap test.

    Weak duality makes ``q(l) <= R^2`` at EVERY ``l`` with ``I + l A`` positive definite, so any
    evaluated point may supply the radius, on either side of the root. Each evaluated ``y(l)``
    is also scaled onto the boundary, ``h(t y(l)) = 0`` (a scalar quadratic in ``t``), giving a
    feasible point whose squared norm exceeds ``R^2`` only to second order in ``l - l*`` (at the
    optimum ``y*`` is parallel to the constraint's normal, KKT, so the scaling moves along the
    normal). A row stops when ``min ||t y||^2 - max q <= gap max q`` (``R^2`` lies between the
    two, so the radius is within ``gap / 2``, relative, of ``sqrt(sup q)``), or when its bracket
    is two adjacent floats. Newton steps overshoot by ``_OVERSHOOT`` of the step, so that near
    the root they land on alternate sides; a step leaving the bracket, or one after two steps
    that hardly shrank it (``_STALL``), is a bisection. A midpoint whose smallest
    ``1 + l lam`` is within rounding of 0 is treated as beyond the pole, so every ``l`` that
    supplies a bound has a positive-definite ``I + l A``.
    """
    N, d = bt.shape
    gap = _GAP_ULPS * (d + 2) * eps
    err_unit = 8 * (d + 2) * eps

    def evaluate(mult, bt_sq, lam, gz, value_err, gradient_err):
        """h(y(l)), h'(l), q(l), q(l) less its rounding-error estimate, and the scaling ``t``
        with ``h(t y(l)) = 0`` with the squared norm of ``t y(l)``.

        With ``r_i = l / (1 + l lam_i)`` and ``w_i = bt_i^2``: ``y_i = -r_i bt_i / 2``,
        ``||y||^2 = sum r_i^2 w_i / 4``, ``h(t y) = g + t bt.y + t^2 y^T lam y`` with
        ``bt.y = -sum r_i w_i / 2`` and ``y^T lam y = sum lam_i r_i^2 w_i / 4``,
        ``h' = -sum w_i / (2 (1 + l lam_i)^3)`` and ``q = l g - l sum r_i w_i / 4``.
        """
        # Two (rows, d) buffers and fused row dot products: temporaries of that size cost more
        # than the arithmetic.
        ratio = torch.addcmul(one, mult[:, None], lam).reciprocal_().mul_(mult[:, None])
        weighted = ratio * bt_sq
        linear = weighted.sum(-1)
        y_sq = 0.25 * _row_dot(ratio, weighted)
        weighted.mul_(ratio)  # r_i^2 w_i
        curvature = 0.25 * _row_dot(lam, weighted)
        h = gz + (curvature - 0.5 * linear)
        # sum w_i / (1 + l lam_i)^3 = sum r_i^3 w_i / l^3; at l ~ 0 it is sum w_i.
        cubed = _row_dot(ratio, weighted)
        slope = -0.5 * torch.where(mult > 1e-100, cubed / mult**3, bt_sq.sum(-1))
        subtracted = 0.25 * mult * linear
        q = mult * gz - subtracted
        q_err = (
            mult * value_err
            + mult * y_sq.sqrt() * gradient_err
            + err_unit * (mult * gz + subtracted)
        )
        t = first_root(gz, -0.5 * linear, curvature)
        witness_sq = torch.where(torch.isfinite(t), t * t * y_sq, math.inf)  # y = 0: no point
        return h, slope, q, q - q_err, t, witness_sq

    bt_sq = bt**2
    one = bt.new_ones((1, 1))
    inputs = {
        "bt_sq": bt_sq,
        "lam": lam,
        "gz": gz,
        "value_err": value_err,
        "gradient_err": gradient_err,
    }
    h_lo, slope_lo, q_lo, dual, t_lo, w_lo = evaluate(lo, **inputs)
    at_hi = torch.where(hi_ok, hi, lo)
    _, _, q_hi, dual_hi, t_hi, w_hi = evaluate(at_hi, **inputs)
    hi_better = w_hi < w_lo
    state = {
        "lo": lo,
        "hi": hi,
        "hi_ok": hi_ok,
        "x": lo,
        "h_x": h_lo,
        "slope_x": slope_lo,
        "best_q": torch.where(hi_ok, torch.maximum(q_lo, q_hi), q_lo),
        "dual": torch.where(hi_ok, torch.maximum(dual, dual_hi), dual),
        "witness_sq": torch.where(hi_better, w_hi, w_lo),
        "witness_l": torch.where(hi_better, at_hi, lo),
        "witness_t": torch.where(hi_better, t_hi, t_lo),
        "lam_min": lam_min,
        "width_1": hi - lo,  # bracket widths one and two steps ago
        "width_2": hi - lo,
    }
    state.update(inputs)
    kept = ("lo", "hi", "hi_ok", "dual", "best_q", "witness_sq", "witness_l", "witness_t")
    full = {key: state[key].clone() for key in kept}
    rows = torch.arange(N, device=gz.device)
    for _ in range(_MAX_BISECTIONS):
        s = state
        mid = s["lo"] + 0.5 * (s["hi"] - s["lo"])
        open_ = (mid > s["lo"]) & (mid < s["hi"])
        tight = s["witness_sq"] - s["best_q"] <= gap * s["best_q"]
        running = open_ & ~tight
        n_running = int(running.sum())
        if n_running <= _COMPACT * len(rows):
            for key in full:  # finished rows leave the working set
                full[key][rows] = s[key]
            if n_running == 0:
                break
            keep = running.nonzero().squeeze(-1)
            rows = rows[keep]
            state = s = {key: value[keep] for key, value in s.items()}
            mid = mid[keep]
        newton = s["x"] - (1 + _OVERSHOOT) * s["h_x"] / s["slope_x"]
        width = s["hi"] - s["lo"]
        stalled = width > _STALL * s["width_2"]
        s["width_2"], s["width_1"] = s["width_1"], width
        use_newton = (newton > s["lo"]) & (newton < s["hi"]) & ~stalled
        trial = torch.where(use_newton, newton, mid)
        valid = (1 + trial * s["lam_min"]) > 4 * eps
        at = torch.where(valid, trial, s["lo"])
        h, slope, q, dual, t, w = evaluate(at, **{key: s[key] for key in inputs})
        positive = valid & (h > 0)
        s["lo"] = torch.where(positive, trial, s["lo"])
        s["hi"] = torch.where(positive, s["hi"], trial)
        s["hi_ok"] = torch.where(positive, s["hi_ok"], valid)
        better = valid & (w < s["witness_sq"])
        s["witness_sq"] = torch.where(better, w, s["witness_sq"])
        s["witness_l"] = torch.where(better, at, s["witness_l"])
        s["witness_t"] = torch.where(better, t, s["witness_t"])
        s["best_q"] = torch.where(valid, torch.maximum(s["best_q"], q), s["best_q"])
        s["dual"] = torch.where(valid, torch.maximum(s["dual"], dual), s["dual"])
        s["x"] = torch.where(valid, trial, s["x"])
        s["h_x"] = torch.where(valid, h, s["h_x"])
        s["slope_x"] = torch.where(valid, slope, s["slope_x"])
    else:
        for key in full:
            full[key][rows] = state[key]
    tight = full["witness_sq"] - full["best_q"] <= gap * full["best_q"]
    witness = (full["witness_l"], full["witness_t"])
    return full["lo"], full["hi"], full["hi_ok"], full["dual"], witness, tight


def _row_dot(a, b):
    """(N,) ``sum_i a[n, i] b[n, i]`` as one batched product, without an (N, d) temporary."""
    return torch.bmm(a[:, None, :], b[:, :, None]).view(-1)


def check_symmetric(M, name):
    """ValueError naming ``name`` unless the square matrix ``M`` is symmetric to 1e-12 relative."""
    scale = M.abs().max().clamp(min=torch.finfo(M.dtype).tiny)
    if ((M - M.T).abs().max() > 1e-12 * scale).item():
        raise ValueError(f"{name} must be symmetric; pass 0.5 * (M + M.T)")


def _device_of(x):
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def as_real_tensor(x, name, device, dtype):
    """``x`` as a real tensor of ``dtype`` on ``device``; a ValueError naming ``name`` if it is
    complex, boolean or not convertible."""
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be a real array, got dtype {x.dtype}")
        return x.to(device=device, dtype=dtype)
    # Converting straight to ``dtype``: torch.as_tensor(python_float) alone would round
    # through float32 and silently move the constraint.
    try:
        return torch.as_tensor(x, device=device, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a real array convertible to {dtype}: {err}") from err
