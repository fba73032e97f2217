"""Exact l2 distance to a quadric, and the QDA certificate built on it (THEORY.md section 3).

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
3. Witness check: a few candidate minimisers (regular, hard-case completion) are evaluated
   with the ORIGINAL ``A`` (not the eigendecomposition), each also scaled by ``1 + s`` for
   ``s = 1e-12, 1e-10, 1e-8, 1e-6``; the shortest with ``g(z + delta) <= 0`` is returned and
   flagged ``witness_verified``. A verified witness is a feasible point, so the radius is
   capped at its norm. If none verifies but one is feasible for the shifted problem of
   safeguard 1 up to the rounding of evaluating ``g`` (a singular PSD ``A`` whose true set is
   empty or astronomically far), the radius is capped at that norm and the flag is False. If
   not even that, the radius is capped at the elementary bound
   ``2 g / (||grad|| + sqrt(||grad||^2 + 4 max(-lam_min, 0) g))`` (the ball on which
   ``g(z) - ||grad|| r + min(lam_min, 0) r^2 > 0``), which does not rely on the root-finding,
   and the flag is False. Each tier only ever lowers the radius.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gmcert.device import resolve_device

__all__ = [
    "NORMS",
    "QuadricDistance",
    "QuadraticCertificate",
    "QuadraticCertifier",
    "distance_to_quadric",
    "solve_local_quadric",
    "lower_bound_from_l2",
]

NORMS = ("l2", "linf", "l1")
# Relative scalings tried on an unverified witness before giving up on it.
_WITNESS_SCALES = (0.0, 1e-12, 1e-10, 1e-8, 1e-6)
# Bisection stops earlier once every bracket is two adjacent floats; this only caps pathologies
# (a root within a few ulp of zero needs about 1100 halvings of l_max).
_MAX_BISECTIONS = 1200
_MAX_DOUBLINGS = 1100
# In the hard case, eigen-directions with 1 + l lam below this at the end of the bracket are
# treated as the pole eigenspace when building the minimiser (never for the radius).
_POLE_WIDTH = 1e-8


@dataclass(frozen=True)
class QuadricDistance:
    """Result of :func:`distance_to_quadric` / :func:`solve_local_quadric`.

    radius: (..., n) lower bound on the l2 distance to ``{g <= 0}``; 0 where ``g(z) <= 0``,
        ``inf`` where the set is provably empty.
    delta: (..., n, d) a minimiser (``z + delta`` is on the boundary); NaN where radius is inf.
    witness_verified: (..., n) True where ``g(z + delta) <= 0`` was checked in floating point
        with the original matrix (then ``radius <= ||delta||``); where False, ``delta`` is the
        solver's best unverified candidate (see safeguard 3 of the module docstring).
    """

    radius: torch.Tensor
    delta: torch.Tensor
    witness_verified: torch.Tensor


@dataclass(frozen=True)
class QuadraticCertificate:
    """Result of :meth:`QuadraticCertifier.certificate`.

    radius: (n,) certified radius in ``norm`` (latent units); exact up to the safeguards of
        this module when ``exact`` (l2), a sound lower bound otherwise.
    delta: (n, d) the l2 minimiser towards ``nearest_class`` (NaN where radius is inf).
    nearest_class: (n,) the class j whose boundary is nearest in l2 (-1 where none exists).
    witness_verified: (n,) see :class:`QuadricDistance`.
    """

    radius: torch.Tensor
    delta: torch.Tensor
    nearest_class: torch.Tensor
    witness_verified: torch.Tensor
    norm: str
    exact: bool


def lower_bound_from_l2(radius_l2: torch.Tensor, dim: int, norm: str) -> torch.Tensor:
    """Sound lower bound on the ``norm`` radius from the exact l2 radius in dimension ``dim``.

    ``||d||_2 <= sqrt(dim) ||d||_inf`` gives ``R_inf >= R_2 / sqrt(dim)``;
    ``||d||_2 <= ||d||_1`` gives ``R_1 >= R_2``. For ``"l2"`` the input is returned.
    """
    _check_norm(norm)
    if norm == "linf":
        # Rounded down so the division can never push the bound above the true value.
        return radius_l2 / math.sqrt(dim) * (1 - 4 * torch.finfo(radius_l2.dtype).eps)
    return radius_l2


def distance_to_quadric(Z, A, b, c, *, device=None, dtype=torch.float64) -> QuadricDistance:
    """l2 distance from each row of ``Z`` to ``{u : u^T A u + b^T u + c <= 0}``.

    Z: (n, d) points; A: (d, d) symmetric; b: (d,); c: scalar. One eigendecomposition of ``A``
    serves the whole batch. Rows with ``g(z) <= 0`` already lie in the set: radius 0, delta 0.
    Guarantee: ``radius <= true distance`` (see the module docstring for the floating-point
    safeguards), and within rounding of it otherwise.
    """
    device = torch.device(device) if device is not None else _device_of(Z)
    Z = _as_tensor(Z, "Z", device, dtype)
    A = _as_tensor(A, "A", device, dtype)
    b = _as_tensor(b, "b", device, dtype)
    c = _as_tensor(c, "c", device, dtype)
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
    _check_symmetric(A, "A")
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
    return _choose_witness_and_cap(
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

    ys = _witness_candidates(
        lo, hi, hi_ok, indefinite, empty, lam_min, i_min, curv, bt, minimiser, constraint_of
    )
    deltas = ys @ eigenvectors.transpose(-1, -2)
    negative_curvature = (-lam_min).clamp(min=0)[:, None].expand(P, n)
    return _choose_witness_and_cap(
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


def _witness_candidates(
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


def _choose_witness_and_cap(
    values, gradients, matrices, candidates, radius, empty, neg_curvature, value_err, *, relaxation
):
    """Pick the shortest verified candidate and cap the radius by its norm.

    candidates: (C, P, n, d) in original coordinates. A candidate is verified if
    ``g(z + (1 + s) delta) <= 0`` with the original matrix for one of the scales ``s``. If
    none is, a candidate feasible up to rounding for the relaxed constraint
    ``g - relaxation ||delta||^2`` (the problem actually solved, see safeguard 1) still caps
    the radius but is not flagged verified; if none of those either, the radius is capped by
    the elementary bound.
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


class QuadraticCertifier:
    """Per-sample certificate for the Bayes rule of a Gaussian mixture with per-class covariances.

    Class scores ``s_k(u) = log_weights[k] - 0.5 (u - mu_k)^T P_k (u - mu_k)`` (``log_weights``
    already holds ``log pi_k - 0.5 logdet Sigma_k``). For a point predicted ``k``,
    ``R(z) = min_{j != k} dist(z, {u : s_k(u) <= s_j(u)})`` (THEORY.md section 3), exact in l2
    up to the safeguards of this module; for ``"linf"`` / ``"l1"`` a sound lower bound
    (``R_2 / sqrt(d)`` / ``R_2``), flagged by the attribute ``exact``.

    One eigendecomposition per unordered class pair is computed at construction:
    ``s_k - s_j`` has ``A_kj = (P_j - P_k) / 2 = -A_jk``, so both orders share eigenvectors.
    Units: the latent units of ``means``.
    """

    def __init__(
        self, means, precisions, log_weights, *, norm="l2", device="cpu", dtype=torch.float64
    ):
        _check_norm(norm)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.norm = norm
        self.exact = norm == "l2"
        self.means = _as_tensor(means, "means", self.device, dtype)
        self.precisions = _as_tensor(precisions, "precisions", self.device, dtype)
        self.log_weights = _as_tensor(log_weights, "log_weights", self.device, dtype)
        self._validate()
        a, b = torch.triu_indices(self.n_classes, self.n_classes, offset=1, device=self.device)
        # Memory: K (K - 1) / 2 eigenbases of size d x d; the matrices themselves are rebuilt
        # per class (bitwise the same: x - y rounds to exactly -(y - x)).
        self._pair_eigenvalues, self._pair_eigenvectors = torch.linalg.eigh(
            0.5 * (self.precisions[b] - self.precisions[a])
        )
        self._abs_precisions = self.precisions.abs()

    @property
    def n_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def scores(self, Z) -> torch.Tensor:
        """(n, K) class scores ``s_k(z)``."""
        Z = self._points(Z)
        centred = Z[:, None, :] - self.means[None]
        quad = torch.einsum("nkd,kde,nke->nk", centred, self.precisions, centred)
        return self.log_weights[None] - 0.5 * quad

    def predict(self, Z) -> torch.Tensor:
        """(n,) argmax of the scores (ties: the lowest index)."""
        return self.scores(Z).argmax(-1)

    def radii(self, Z, pred=None) -> torch.Tensor:
        """(n,) certified radius in ``self.norm``; see :meth:`certificate`."""
        return self.certificate(Z, pred).radius

    def certify(self, Z) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions (n,) int64, radii (n,) in latent ``norm`` units), the interface shared
        with :class:`gmcert.certify.linear.LinearCertifier`."""
        Z = self._points(Z)
        pred = self.predict(Z)
        return pred, self.certificate(Z, pred).radius

    @torch.no_grad()
    def certificate(self, Z, pred=None) -> QuadraticCertificate:
        """Certificate for each row of ``Z`` (n, d) and its class ``pred`` (n,), default the
        prediction. Where ``pred`` is not the strict argmax the radius is 0."""
        Z = self._points(Z)
        n = Z.shape[0]
        pred = self.predict(Z) if pred is None else self._labels(pred, n)
        radius = torch.full((n,), math.inf, dtype=self.dtype, device=self.device)
        delta = torch.full((n, self.dim), math.nan, dtype=self.dtype, device=self.device)
        nearest = torch.full((n,), -1, dtype=torch.long, device=self.device)
        verified = torch.zeros(n, dtype=torch.bool, device=self.device)
        if self.n_classes > 1:
            for k in pred.unique().tolist():
                rows = (pred == k).nonzero().squeeze(-1)
                r, dl, j, ok = self._certify_class(Z[rows], k)
                radius[rows], delta[rows], nearest[rows], verified[rows] = r, dl, j, ok
        radius = lower_bound_from_l2(radius, self.dim, self.norm)
        return QuadraticCertificate(radius, delta, nearest, verified, self.norm, self.exact)

    def _certify_class(self, Z, k):
        """All rows predicted ``k``: one batched solve over the K - 1 pairs (k, j)."""
        others = [j for j in range(self.n_classes) if j != k]
        pair_index, sign = self._pair_lookup(k, others)
        others_t = torch.tensor(others, device=self.device)
        matrices = 0.5 * (self.precisions[others_t] - self.precisions[k][None])
        eigenvalues = sign[:, None] * self._pair_eigenvalues[pair_index]
        eigenvectors = self._pair_eigenvectors[pair_index]

        centred = Z[None, :, :] - self.means[:, None, :]  # (K, n, d)
        pulled = torch.einsum("kde,kne->knd", self.precisions, centred)  # P_k (z - mu_k)
        quad = (pulled * centred).sum(-1)
        scores = self.log_weights[:, None] - 0.5 * quad
        values = scores[k][None] - scores[others_t]
        gradients = pulled[others_t] - pulled[k][None]

        abs_pulled = torch.einsum("kde,kne->knd", self._abs_precisions, centred.abs())
        abs_score = self.log_weights.abs()[:, None] + 0.5 * (abs_pulled * centred.abs()).sum(-1)
        value_scale = abs_score[k][None] + abs_score[others_t]
        abs_grad = torch.linalg.vector_norm(abs_pulled, dim=-1)
        gradient_scale = abs_grad[k][None] + abs_grad[others_t]

        out = solve_local_quadric(
            values,
            gradients,
            matrices,
            eigenvalues,
            eigenvectors,
            value_scale=value_scale,
            gradient_scale=gradient_scale,
        )
        radius, best = out.radius.min(0)
        rows = torch.arange(Z.shape[0], device=self.device)
        nearest = torch.where(torch.isinf(radius), -1, others_t[best])
        return radius, out.delta[best, rows], nearest, out.witness_verified[best, rows]

    def _pair_lookup(self, k, others):
        """Index into the unordered-pair tables, and +1 / -1 for the order (k, j)."""
        K = self.n_classes
        index, sign = [], []
        for j in others:
            a, b = min(k, j), max(k, j)
            # Row-major position of (a, b) in the strict upper triangle.
            index.append(a * K - a * (a + 1) // 2 + (b - a - 1))
            sign.append(1.0 if k < j else -1.0)
        return (
            torch.tensor(index, device=self.device),
            torch.tensor(sign, dtype=self.dtype, device=self.device),
        )

    def _validate(self):
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(self.means.shape)}")
        K, d = self.means.shape
        if self.precisions.shape != (K, d, d):
            raise ValueError(
                f"precisions must have shape (K, d, d) = ({K}, {d}, {d}) to match means, "
                f"got {tuple(self.precisions.shape)}"
            )
        if self.log_weights.shape != (K,):
            raise ValueError(
                f"log_weights must have shape ({K},), got {tuple(self.log_weights.shape)}"
            )
        for name, t in (
            ("means", self.means),
            ("precisions", self.precisions),
            ("log_weights", self.log_weights),
        ):
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} contains NaN or inf; fit the mixture with shrinkage")
        for k in range(K):
            _check_symmetric(self.precisions[k], f"precisions[{k}]")
        # Exact symmetry makes both orders of a pair share one eigendecomposition exactly.
        self.precisions = 0.5 * (self.precisions + self.precisions.transpose(1, 2))
        if (torch.linalg.eigvalsh(self.precisions) <= 0).any():
            raise ValueError(
                "every precision matrix must be positive definite; add shrinkage to the "
                "covariances before inverting them"
            )

    def _points(self, Z):
        Z = _as_tensor(Z, "Z", self.device, self.dtype)
        if Z.ndim != 2 or Z.shape[1] != self.dim:
            raise ValueError(f"Z must have shape (n, {self.dim}), got {tuple(Z.shape)}")
        return Z

    def _labels(self, pred, n):
        pred = torch.as_tensor(pred, device=self.device).long()
        if pred.shape != (n,):
            raise ValueError(f"pred must have shape ({n},) like Z's rows, got {tuple(pred.shape)}")
        if ((pred < 0) | (pred >= self.n_classes)).any():
            raise ValueError(f"pred must hold class indices in [0, {self.n_classes})")
        return pred


def _check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _check_symmetric(M, name):
    scale = M.abs().max().clamp(min=torch.finfo(M.dtype).tiny)
    if ((M - M.T).abs().max() > 1e-12 * scale).item():
        raise ValueError(f"{name} must be symmetric; pass 0.5 * (M + M.T)")


def _device_of(x):
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def _as_tensor(x, name, device, dtype):
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
