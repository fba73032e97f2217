"""Exact closed-form certificates for linear (shared-covariance) boundaries (docs/theory.md
section 3).

For scores ``s(z) = M z + c`` and prediction ``k = argmax s(z)``, the distance in the lp norm
from ``z`` to the set where the prediction can change is, exactly,

    R_p(z) = min_{j != k} (s_k(z) - s_j(z)) / ||m_k - m_j||_q,   1/p + 1/q = 1.

One batch costs one (B x d)(d x K) matmul plus O(B K) elementwise work: the K x K table of
dual norms is computed once (for l2 from the Gram matrix G = M M^T), and no K x K x d tensor
is ever built per batch.

Soundness: the margins and norms are computed in floating point. Every radius is shrunk by a
rigorous bound on the rounding error of the margin (gamma_n ||m|| ||z|| terms, standard
forward error analysis of dot products) and the norms are inflated likewise, so floating-point
error can only make a radius smaller, never larger.
"""

from __future__ import annotations

import numpy as np
import torch

from gmcert.certify.norms import DUAL_EXPONENT, check_norm
from gmcert.device import resolve_device


def _unit_roundoff(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) / 2


def gram_pairwise_l2(M: torch.Tensor) -> torch.Tensor:
    """||m_k - m_j||_2 for all pairs from the Gram matrix: (K, K), no K x K x d tensor."""
    G = M @ M.T
    sq = torch.diagonal(G)
    return (sq[:, None] + sq[None, :] - 2 * G).clamp_min(0).sqrt()


class LinearCertifier:
    """Predictions and exact certified radii for the linear rule ``argmax_k M[k] @ z + c[k]``.

    Parameters: ``M`` (K, d), ``c`` (K,), the perturbation ``norm`` (``l2``, ``linf``, ``l1``),
    ``device`` and ``dtype`` for the batched computation.

    Guarantee: for every returned radius R(z) and every ``delta`` with ``||delta||_p < R(z)``,
    the exact-arithmetic prediction at ``z + delta`` equals the one at ``z``.
    """

    exact = True  # the radius is the distance to the boundary, not a lower bound of it

    def __init__(self, M, c, *, norm: str = "l2", device="cpu", dtype=torch.float64):
        self.norm = check_norm(norm)
        self.device = resolve_device(device)
        self.dtype = dtype
        M = torch.as_tensor(np.asarray(M), dtype=torch.float64)
        c = torch.as_tensor(np.asarray(c), dtype=torch.float64)
        if M.ndim != 2 or c.shape != (M.shape[0],):
            raise ValueError(
                f"M must be (K, d) and c (K,), got {tuple(M.shape)} and {tuple(c.shape)}"
            )
        num_classes, dim = M.shape
        u = _unit_roundoff(dtype)
        # gamma_n = n u / (1 - n u) bounds the relative error of an n-term dot product.
        self._gamma = (dim + 3) * u / (1 - (dim + 3) * u)
        self._M = M.to(self.device, dtype)
        self._c = c.to(self.device, dtype)
        # The dual-norm table is built once, in float64, then inflated by its own rounding
        # bound so that a computed norm is never below the true one.
        if norm == "l2":
            dual = gram_pairwise_l2(M)
            sq = (M * M).sum(1)
            slack = 4 * (dim + 3) * 2.0**-53 * (sq[:, None] + sq[None, :])
            dual = (dual**2 + slack).sqrt()
        else:
            dual = torch.cdist(M, M, p=DUAL_EXPONENT[norm]) * (1 + 4 * (dim + 3) * 2.0**-53)
        # Inverse norms, with -inf on the diagonal: the j = k entry then evaluates to
        # (-slack) * (-inf) = +inf and drops out of the min without a scatter per batch.
        inv_dual = 1.0 / dual
        inv_dual.fill_diagonal_(-torch.inf)
        self._inv_dual = inv_dual.to(self.device, dtype)
        # Per-row rounding slack: gamma (||z|| (||m_k|| + ||m_j||) + |c_k| + |c_j|) is bounded
        # by gamma (2 max ||m|| ||z|| + 2 max |c|), one scalar per row instead of a (B, K) matrix.
        self._slack_z = 2 * self._gamma * float(M.norm(dim=1).max())
        self._slack_0 = 2 * self._gamma * float(c.abs().max()) + float(torch.finfo(dtype).tiny)
        self.num_classes, self.dim = num_classes, dim

    @torch.inference_mode()
    def certify(self, Z) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions (B,) int64, radii (B,) in latent ``norm`` units) for latents Z (B, d)."""
        Z = torch.as_tensor(Z).to(self.device, self.dtype)
        scores = torch.addmm(self._c, Z, self._M.T)
        top, pred = scores.max(dim=1)
        slack = torch.linalg.vector_norm(Z, dim=1).mul_(self._slack_z).add_(self._slack_0)
        # ratio_kj = (s_k - s_j - slack) / ||m_k - m_j||_q, computed in place over the scores.
        ratio = torch.sub((top - slack)[:, None], scores, out=scores)
        ratio.mul_(self._inv_dual.index_select(0, pred))
        radius = ratio.min(dim=1).values
        # A negative margin (within rounding) or 0 * inf (identical rows) certifies nothing.
        return pred, torch.nan_to_num_(radius, nan=0.0).clamp_min_(0.0)

    def scores(self, Z) -> torch.Tensor:
        Z = torch.as_tensor(Z).to(self.device, self.dtype)
        return torch.addmm(self._c, Z, self._M.T)
