"""lp norms of perturbations and the smallest lp step onto a hyperplane (no box constraint).

The smallest ``delta`` with ``w . delta = -f`` has norm ``|f| / ||w||_q`` (q the dual exponent
of p) and points along the dual direction of ``-sign(f) w``:

* l2:   ``delta = -f w / ||w||_2^2``;
* linf: ``delta = -f sign(w) / ||w||_1`` (every coordinate moves by the same amount);
* l1:   ``delta = -f e_i / w_i`` with ``i = argmax |w_i|`` (one coordinate moves).
"""

from __future__ import annotations

import math

import torch

from gmcert.certify.norms import check_norm


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row lp norm of ``delta`` (B, *shape) -> (B,)."""
    flat = delta.reshape(delta.shape[0], math.prod(delta.shape[1:]))
    if norm == "l2":
        return torch.linalg.vector_norm(flat, 2, dim=1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l1":
        return flat.abs().sum(dim=1)
    check_norm(norm, "norm")
    raise AssertionError("unreachable")


def dual_norm(w: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row dual norm ``||w||_q`` over the last dimension: l2 -> 2, linf -> 1, l1 -> inf."""
    if norm == "l2":
        return torch.linalg.vector_norm(w, 2, dim=-1)
    if norm == "linf":
        return w.abs().sum(dim=-1)
    if norm == "l1":
        return w.abs().amax(dim=-1)
    check_norm(norm, "norm")
    raise AssertionError("unreachable")


def hyperplane_step(f: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
    """The smallest-lp ``delta`` (B, n) with ``w . delta = -f`` for each row; f (B,), w (B, n).

    Rows with ``w = 0`` get ``delta = 0`` (no step reaches the hyperplane).
    """
    q = dual_norm(w, norm)
    safe = torch.where(q > 0, q, torch.ones_like(q))
    scale = torch.where(q > 0, -f / safe, torch.zeros_like(f))
    if norm == "l2":
        return (scale / safe)[:, None] * w
    if norm == "linf":
        return scale[:, None] * torch.sign(w)
    # l1: all the change on one coordinate, the one with the largest |w_i|.
    idx = w.abs().argmax(dim=1, keepdim=True)
    delta = torch.zeros_like(w)
    sign = torch.sign(w.gather(1, idx))
    return delta.scatter_(1, idx, scale[:, None] * sign)


def box_hyperplane_step(
    p: torch.Tensor,
    f: torch.Tensor,
    w: torch.Tensor,
    norm: str,
    bounds: tuple[float, float],
    rounds: int = 5,
) -> torch.Tensor:
    """``hyperplane_step`` from ``p`` that keeps ``p + delta`` in the box ``bounds``.

    Coordinates that the step would push out of the box are clamped and frozen, and the rest
    of the margin is spent on the free coordinates, ``rounds`` times (an approximation of the
    exact box-constrained projection; the step may fall short of the hyperplane). For l1 the
    step is exact (``_box_l1_step``) and ``rounds`` is not used.
    """
    if norm == "l1":
        return _box_l1_step(p, f, w, bounds)
    lo, hi = bounds
    delta = torch.zeros_like(p)
    for _ in range(rounds):
        remaining = f + (w * delta).sum(1)
        moving_down = (remaining[:, None] * w) > 0  # the step decreases these coordinates
        at = p + delta
        blocked = (moving_down & (at <= lo)) | (~moving_down & (at >= hi))
        step = hyperplane_step(remaining, torch.where(blocked, 0.0, w), norm)
        delta = (p + delta + step).clamp(lo, hi) - p
    return delta


def _box_l1_step(p, f, w, bounds):
    """The exact smallest-l1 step from ``p`` towards ``w . delta = -f`` inside the box.

    Moving coordinate i by t_i (towards its bound, capacity c_i) changes the margin by
    |w_i| t_i; the cheapest coordinates per unit of l1 are those with the largest |w_i|, so
    they are filled in that order until |f| is spent (a fractional knapsack).
    """
    lo, hi = bounds
    direction = -torch.sign(f)[:, None] * torch.sign(w)  # +1 up, -1 down, 0 no effect
    capacity = torch.where(direction > 0, hi - p, p - lo).clamp_min(0)
    capacity = torch.where(direction == 0, 0.0, capacity)
    weight, order = w.abs().sort(dim=1, descending=True)
    cap = capacity.gather(1, order)
    gain = weight * cap
    before = gain.cumsum(1) - gain
    need = f.abs()[:, None] - before
    safe = torch.where(weight > 0, weight, torch.ones_like(weight))
    t = torch.where(weight > 0, (need / safe).clamp(min=0), 0.0).minimum(cap)
    moved = torch.zeros_like(p).scatter_(1, order, t)
    return direction * moved
