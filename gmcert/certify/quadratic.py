"""The exact per-sample certificate of a Gaussian mixture with per-class covariances (QDA).

For a point predicted ``k`` the certified radius is the distance to the nearest pairwise
boundary, ``R(z) = min_{j != k} dist(z, {u : s_k(u) - s_j(u) <= 0})`` (docs/theory.md
section 3). Each ``s_k - s_j`` is a quadric, and its l2 distance is solved exactly by
:func:`gmcert.certify.quadric_distance.solve_local_quadric`; the radii in ``"linf"`` and
``"l1"`` are sound lower bounds derived from the l2 one (:func:`lower_bound_from_l2`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gmcert.certify.norms import check_norm
from gmcert.certify.quadric_distance import as_real_tensor, check_symmetric, solve_local_quadric
from gmcert.device import resolve_device

__all__ = ["QuadraticCertificate", "QuadraticCertifier", "lower_bound_from_l2"]


@dataclass(frozen=True)
class QuadraticCertificate:
    """Result of :meth:`QuadraticCertifier.certificate`.

    radius: (n,) certified radius in ``norm`` (latent units); exact up to the floating-point
        safeguards of :mod:`gmcert.certify.quadric_distance` when ``exact`` (l2), a sound
        lower bound otherwise.
    delta: (n, d) the l2 minimiser towards ``nearest_class`` (NaN where radius is inf).
    nearest_class: (n,) the class j whose boundary is nearest in l2 (-1 where none exists).
    witness_verified: (n,) see :class:`gmcert.certify.quadric_distance.QuadricDistance`.
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
    check_norm(norm, "norm")
    if norm == "linf":
        # Rounded down so the division can never push the bound above the true value.
        return radius_l2 / math.sqrt(dim) * (1 - 4 * torch.finfo(radius_l2.dtype).eps)
    return radius_l2


class QuadraticCertifier:
    """Per-sample certificate for the Bayes rule of a Gaussian mixture with per-class covariances.

    Class scores ``s_k(u) = log_weights[k] - 0.5 (u - mu_k)^T P_k (u - mu_k)`` (``log_weights``
    already holds ``log pi_k - 0.5 logdet Sigma_k``). For a point predicted ``k``,
    ``R(z) = min_{j != k} dist(z, {u : s_k(u) <= s_j(u)})`` (docs/theory.md section 3), exact
    in l2 up to the safeguards of :mod:`gmcert.certify.quadric_distance`; for ``"linf"`` /
    ``"l1"`` a sound lower bound (``R_2 / sqrt(d)`` / ``R_2``), flagged by the attribute
    ``exact``.

    One eigendecomposition per unordered class pair is computed at construction:
    ``s_k - s_j`` has ``A_kj = (P_j - P_k) / 2 = -A_jk``, so both orders share eigenvectors.
    Units: the latent units of ``means``.
    """

    def __init__(
        self, means, precisions, log_weights, *, norm="l2", device="cpu", dtype=torch.float64
    ):
        check_norm(norm, "norm")
        self.device = resolve_device(device)
        self.dtype = dtype
        self.norm = norm
        self.exact = norm == "l2"
        self.means = as_real_tensor(means, "means", self.device, dtype)
        self.precisions = as_real_tensor(precisions, "precisions", self.device, dtype)
        self.log_weights = as_real_tensor(log_weights, "log_weights", self.device, dtype)
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
            check_symmetric(self.precisions[k], f"precisions[{k}]")
        # Exact symmetry makes both orders of a pair share one eigendecomposition exactly.
        self.precisions = 0.5 * (self.precisions + self.precisions.transpose(1, 2))
        if (torch.linalg.eigvalsh(self.precisions) <= 0).any():
            raise ValueError(
                "every precision matrix must be positive definite; add shrinkage to the "
                "covariances before inverting them"
            )

    def _points(self, Z):
        Z = as_real_tensor(Z, "Z", self.device, self.dtype)
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
