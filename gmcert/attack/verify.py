"""Verification of adversarial candidates, and their shrinking by bisection towards x.

A candidate counts only if the model, evaluated again (in float64 when the model allows), gives
it a class other than the prediction at ``x``. It is then moved to the smallest flipping point
found on the segment ``x + t (x_adv - x)``, ``t`` in (0, 1], by bisection on ``t``: the upper end
always flips (verified), so the returned point does too.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def float64_model(
    model: nn.Module, probe: torch.Tensor, device: torch.device
) -> tuple[nn.Module, torch.dtype]:
    """``model`` in eval mode on ``device``, in float64 when it allows, and the dtype it takes.

    The caller's model is never changed: a copy is made when it is not already float64, on
    ``device`` and in eval mode. Falls back to the model's own floating dtype when a float64
    copy fails on ``probe`` (e.g. kernels without a float64 version).
    """
    tensors = [*model.parameters(), *model.buffers()]
    floats = [t for t in tensors if t.is_floating_point()]
    ready = not model.training and all(t.device == device for t in tensors)
    if ready and all(t.dtype == torch.float64 for t in floats):
        return model, torch.float64
    native = floats[0].dtype if floats else torch.float64
    copied = copy.deepcopy(model).to(device).eval()
    try:
        double = copy.deepcopy(copied).to(torch.float64)
        with torch.no_grad():
            double(probe[:1].to(device, torch.float64))
    except (RuntimeError, TypeError, NotImplementedError):
        return copied, native
    return double, torch.float64


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, batch: int) -> torch.Tensor:
    """argmax of ``model`` at ``x`` (cast to ``dtype``), evaluated in chunks of ``batch``."""
    out = [model(x[i : i + batch].to(dtype)).argmax(dim=1) for i in range(0, len(x), batch)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)


@torch.no_grad()
def shrink_by_bisection(
    model: nn.Module,
    x: torch.Tensor,
    adversarial: torch.Tensor,
    original: torch.Tensor,
    found: torch.Tensor,
    *,
    dtype: torch.dtype,
    steps: int,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify ``adversarial`` against ``original`` classes and bisect towards ``x``.

    Returns (adversarial, found): rows that do not flip on re-evaluation get ``found = False``
    and ``adversarial = x``; the others the smallest flipping point of the segment found by
    ``steps`` bisections (the upper end of the final bracket, verified once more; the
    candidate itself where that check fails).
    """
    x = x.to(dtype)
    adversarial = adversarial.to(dtype)
    found = found & (predict(model, adversarial, dtype, batch) != original)
    shape = (-1,) + (1,) * (x.ndim - 1)
    lo = torch.zeros(len(x), dtype=dtype, device=x.device)
    hi = torch.ones_like(lo)
    direction = adversarial - x
    for _ in range(steps):
        mid = (lo + hi) / 2
        flips = predict(model, x + mid.view(shape) * direction, dtype, batch) != original
        hi = torch.where(flips, mid, hi)
        lo = torch.where(flips, lo, mid)
    shrunk = x + hi.view(shape) * direction
    # The bracket's upper end flipped when it was set, but x + 1 * (adv - x) may round away
    # from adv: check once more and keep the verified candidate where the check fails.
    kept = predict(model, shrunk, dtype, batch) != original
    shrunk = torch.where(kept.view(shape), shrunk, adversarial)
    return torch.where(found.view(shape), shrunk, x), found
