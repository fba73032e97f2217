"""The exact closest class change for a model linear in its input, scores ``A x + b``.

For the prediction ``k = argmax (A x + b)`` and each rival ``j``, the class change towards ``j``
needs ``(a_k - a_j) . delta <= -(s_k - s_j)``; the smallest such step in the lp norm has norm
``(s_k - s_j) / ||a_k - a_j||_q`` (q the dual exponent) and the closed form of
``projection.hyperplane_step``. The closest rival gives the exact minimum adversarial distance.
This module is independent of the certifier (``gmcert.certify.linear``), so that the two agree
only when both are right.

Every step is checked: ``A (x + delta (1 + tiny)) + b`` must change the argmax (the step itself
lands on the tie). ``verified`` says where it did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gmcert.attack.projection import hyperplane_step, lp_norm
from gmcert.certify.norms import check_norm


@dataclass(frozen=True)
class LinearProjection:
    """Per point: ``delta`` (B, n) to the closest tie, its lp ``radius`` (B,) (inf where the
    scores never cross), the ``original`` and ``target`` classes, and ``verified``: the
    argmax at ``x + delta (1 + tiny)`` is not ``original``."""

    delta: np.ndarray
    radius: np.ndarray
    original: np.ndarray
    target: np.ndarray
    verified: np.ndarray


def _as64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def linear_boundary_projection(A, b, x, *, norm: str, tiny: float = 1e-9) -> LinearProjection:
    """Exact minimal lp perturbation that makes ``argmax (A x + b)`` tie with a rival class.

    ``A`` (K, n), ``b`` (K,), ``x`` (B, n); all in float64. ``tiny`` is the relative overshoot
    used to check that the step really changes the class.
    """
    check_norm(norm, "norm")
    A, b, x = _as64(A), _as64(b), _as64(x)
    if A.ndim != 2 or b.shape != (A.shape[0],) or x.ndim != 2 or x.shape[1] != A.shape[1]:
        raise ValueError(
            f"A must be (K, n), b (K,) and x (B, n), got {tuple(A.shape)}, {tuple(b.shape)} "
            f"and {tuple(x.shape)}"
        )
    B = x.shape[0]
    scores = x @ A.T + b
    k = scores.argmax(dim=1)
    margin = scores.gather(1, k[:, None]) - scores  # (B, K): s_k - s_j >= 0
    radius = torch.full((B,), torch.inf, dtype=torch.float64)
    target = k.clone()
    delta = torch.zeros_like(x)
    for j in range(len(b)):  # one (B, n) step per rival: no (B, K, n) tensor
        w = A[k] - A[j]
        step = hyperplane_step(margin[:, j], w, norm)
        dist = lp_norm(step, norm)
        # j == k, or a_j == a_k (the scores never cross): no step.
        dist = torch.where((k == j) | (w.abs().amax(dim=1) == 0), torch.inf, dist)
        better = dist < radius
        radius = torch.where(better, dist, radius)
        target = torch.where(better, j, target)
        delta = torch.where(better[:, None], step, delta)
    finite = torch.isfinite(radius)
    delta = torch.where(finite[:, None], delta, torch.zeros_like(delta))
    moved = (x + delta * (1 + tiny)) @ A.T + b
    verified = finite & (moved.argmax(dim=1) != k)
    return LinearProjection(
        delta=delta.numpy(),
        radius=radius.numpy(),
        original=k.numpy(),
        target=torch.where(finite, target, k).numpy(),
        verified=verified.numpy(),
    )
