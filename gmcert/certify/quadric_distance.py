"""Exact l2 distance to a quadric via the S-lemma dual (docs/theory.md section 3).

The core problem, for one constraint ``g`` and one point ``z`` with ``g(z) > 0``::

    R(z)^2 = min ||delta||^2  s.t.  g(z + delta) = g(z) + grad^T delta + delta^T A delta <= 0.

In the eigenbasis ``A = V diag(lam) V^T``, ``y = V^T delta``, ``bt = V^T grad``, the
Lagrangian ``||y||^2 + l h(y)`` is minimised by ``y(l) = -(l / 2) bt / (1 + l lam)`` and gives
the dual function

    q(l) = l g(z) - (l^2 / 4) sum_i bt_i^2 / (1 + l lam_i),   0 <= l < l_max,

with ``l_max = -1 / lam_min`` when ``lam_min < 0`` and ``+inf`` otherwise. By weak duality
``q(l) <= R(z)^2`` for EVERY ``l`` in that interval, and by the S-lemma ``sup q = R(z)^2``.
``q`` is concave with ``q'(l) = h(y(l))``, which decreases strictly, so a bisection on the sign
of ``h(y(l))`` brackets the maximiser. The radius is ``sqrt(q)`` at the lower end of the
bracket; the "hard case" (``bt`` has no weight on the most negative eigenvector) needs no
special branch for the radius, because then ``sup q`` is the limit at ``l_max``, and only the
minimiser is completed by a step along that eigenvector.

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

from gmcert.certify.quadric_witness import choose_witness_and_cap, witness_candidates

__all__ = [
    "QuadricDistance",
    "as_real_tensor",
    "check_symmetric",
    "distance_to_quadric",
    "solve_local_quadric",
]

# Bisection stops earlier once every bracket is two adjacent floats; this only caps pathologies
# (a root within a few ulp of zero needs about 1100 halvings of l_max).
_MAX_BISECTIONS = 1200
_MAX_DOUBLINGS = 1100


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
    eps = torch.finfo(gradients.dtype).eps
    if value_scale is None:
        value_scale = values.abs()
    if gradient_scale is None:
        gradient_scale = torch.linalg.vector_norm(gradients, dim=-1)
    value_err = 8 * (d + 2) * eps * value_scale
    grad_norm = torch.linalg.vector_norm(gradients, dim=-1)
    gradient_err = 4 * (d + 2) * eps * (gradient_scale + grad_norm)

    linear = (matrices == 0).flatten(1).all(1)
    radius = torch.empty_like(values)
    delta = torch.empty_like(gradients)
    verified = torch.empty_like(values, dtype=torch.bool)
    for mask, solver in ((linear, _solve_linear), (~linear, _solve_quadratic)):
        if not mask.any():
            continue
        r, dl, ok = solver(
            values[mask],
            gradients[mask],
            matrices[mask],
            eigenvalues[mask],
            eigenvectors[mask],
            value_err[mask],
            gradient_err[mask],
        )
        radius[mask], delta[mask], verified[mask] = r, dl, ok

    inside = values <= 0
    radius = torch.where(inside, torch.zeros_like(radius), radius)
    delta = torch.where(inside[..., None], torch.zeros_like(delta), delta)
    verified = verified | inside
    return QuadricDistance(radius, delta, verified)


def _solve_linear(values, gradients, matrices, eigenvalues, eigenvectors, value_err, gradient_err):
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
    return choose_witness_and_cap(
        values,
        gradients,
        matrices,
        delta[None],
        radius,
        never,
        no_curvature,
        value_err,
        relaxation=torch.zeros_like(values),
    )


def _solve_quadratic(
    values, gradients, matrices, eigenvalues, eigenvectors, value_err, gradient_err
):
    """Dual bisection in the eigenbasis (module docstring); all inputs batched over (P, n)."""
    P, n, d = gradients.shape
    eps = torch.finfo(values.dtype).eps
    gz = torch.where(values > 0, values, torch.ones_like(values))  # rows <= 0 are reset later

    eta = (16 * d * eps * eigenvalues.abs().amax(-1)).clamp(min=torch.finfo(values.dtype).tiny)
    lam = eigenvalues - eta[:, None]
    lam = torch.where(lam == 0, -eta[:, None], lam)  # keep every eigenvalue away from exactly 0
    lam_min, i_min = lam.min(-1)
    indefinite = (lam_min < 0)[:, None].expand(P, n)
    bt = gradients @ eigenvectors
    curv = lam[:, None, :]

    # mult / (1 + mult lam) is formed first so that a huge multiplier cannot overflow.
    def minimiser(mult):
        return -0.5 * (mult[..., None] / (1 + mult[..., None] * curv)) * bt

    def constraint_of(y):  # h(y) in eigen-coordinates, y (P, n, d)
        return gz + (y * (curv * y + bt)).sum(-1)

    def constraint_at(mult):  # h(y(l)) = q'(l), strictly decreasing in the multiplier l
        return constraint_of(minimiser(mult))

    def dual_terms(mult):  # (q(l), the subtracted sum), the latter for the error estimate
        ratio = mult[..., None] / (1 + mult[..., None] * curv)
        subtracted = 0.25 * mult * (bt**2 * ratio).sum(-1)
        return mult * gz - subtracted, subtracted

    # Definite A: the set is empty iff min h = h(-bt / (2 lam)) > 0; claim it only beyond the
    # rounding error, otherwise fall through to the (always sound) dual bound.
    lowest_value = gz - 0.25 * (bt**2 / curv).sum(-1)
    lowest_err = value_err + 8 * (d + 2) * eps * 0.25 * (bt**2 / curv.abs()).sum(-1)
    empty = ~indefinite & (lowest_value > lowest_err)

    lo, hi, hi_ok = _initial_bracket(gz, bt, lam_min, indefinite, empty, constraint_at)
    lo, hi, hi_ok = _bisect(lo, hi, hi_ok, lam_min, constraint_at, eps)

    q_lo, subtracted = dual_terms(lo)
    y_lo = minimiser(lo)
    q_err = (
        lo * value_err
        + lo * torch.linalg.vector_norm(y_lo, dim=-1) * gradient_err
        + 8 * (d + 2) * eps * (lo * gz + subtracted)
    )
    radius = (q_lo - q_err).clamp(min=0).sqrt() * (1 - 8 * d * eps)
    radius = torch.where(empty, torch.full_like(radius, math.inf), radius)

    ys = witness_candidates(
        lo, hi, hi_ok, indefinite, empty, lam_min, i_min, curv, bt, minimiser, constraint_of
    )
    deltas = ys @ eigenvectors.transpose(-1, -2)
    negative_curvature = (-lam_min).clamp(min=0)[:, None].expand(P, n)
    return choose_witness_and_cap(
        values,
        gradients,
        matrices,
        deltas,
        radius,
        empty,
        negative_curvature,
        value_err,
        relaxation=eta[:, None].expand(P, n),
    )


def _initial_bracket(gz, bt, lam_min, indefinite, empty, constraint_at):
    """Bracket ``[lo, hi]`` of the multiplier, with ``h(y(lo)) > 0``.

    Indefinite A: ``[0, l_max]``. Definite A: ``h(y(l)) >= g - l ||bt||^2 / 2`` makes
    ``l_lin = 2 g / ||bt||^2`` a lower end; the upper end is found by doubling. ``hi_ok``
    marks brackets whose upper end is a valid point with ``h(y(hi)) <= 0``.
    """
    l_max = (-1 / lam_min)[:, None].expand_as(gz)
    bt_sq = (bt**2).sum(-1)
    l_lin = torch.where(bt_sq > 0, 2 * gz / bt_sq, torch.ones_like(gz))
    lo = torch.where(indefinite, torch.zeros_like(gz), l_lin)
    hi = torch.where(indefinite, l_max, l_lin)
    growing = ~indefinite & ~empty
    for _ in range(_MAX_DOUBLINGS):
        growing = growing & (constraint_at(hi) > 0) & (hi < 1e300)
        if not growing.any():
            break
        lo = torch.where(growing, hi, lo)
        hi = torch.where(growing, 2 * hi, hi)
    hi_ok = ~indefinite & ~empty & (constraint_at(hi) <= 0)
    # Where doubling gave up (root at infinity) or the set is empty, collapse the bracket.
    hi = torch.where(~indefinite & ~hi_ok, lo, hi)
    return lo, hi, hi_ok


def _bisect(lo, hi, hi_ok, lam_min, constraint_at, eps):
    """Bisection on the sign of ``h(y(l))``; a midpoint whose smallest ``1 + l lam`` is within
    rounding of 0 is treated as beyond the pole, so ``lo`` always has a positive-definite
    ``I + lo A`` (which weak duality needs)."""
    for _ in range(_MAX_BISECTIONS):
        mid = lo + 0.5 * (hi - lo)
        open_ = (mid > lo) & (mid < hi)
        if not open_.any():
            break
        valid = (1 + mid * lam_min[:, None]) > 4 * eps
        positive = valid & (constraint_at(torch.where(valid, mid, lo)) > 0)
        go_right = open_ & positive
        go_left = open_ & ~positive
        lo = torch.where(go_right, mid, lo)
        hi = torch.where(go_left, mid, hi)
        hi_ok = torch.where(go_left, valid, hi_ok)
    return lo, hi, hi_ok


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
