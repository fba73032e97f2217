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
from gmcert.certify.pair_eigenbases import PairEigenbases
from gmcert.certify.quadric_distance import (
    Blocks,
    as_real_tensor,
    check_symmetric,
    first_root,
    solve_in_blocks,
)
from gmcert.device import resolve_device
from gmcert.memory import check_memory

__all__ = ["QuadraticCertificate", "QuadraticCertifier", "lower_bound_from_l2"]

# Memory for the class pairs' eigenbases: every pair is decomposed up front when all fit (K = 10
# at d = 256 takes 24 MB); beyond, pairs are decomposed when first needed and the least
# recently used dropped (all pairs of K = 1000 at d = 64 would take 16 GiB).
PAIR_CACHE_BYTES = 1 << 30
# Memory for one chunk of points' (K, rows, d) score and gradient tensors.
WORKING_BYTES = 1 << 28
# A rival is skipped only when its lower bound exceeds the best radius by this relative margin,
# so that the pruned minimum equals the unpruned one unless a pair's computed radius is more
# than this far below its true distance (rounding-dominated cases; both stay sound).
PRUNE_MARGIN = 1e-6


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

    Pairs that cannot decide a point's radius are not solved (``prune``): every rival ``j`` gets
    the cheap lower bound of :meth:`_lower_bounds` on its distance; rivals are solved exactly in
    rounds of 1, 15, 60, 240, ... in increasing order of that bound, and a rival whose bound exceeds
    the smallest radius solved so far (by the relative ``PRUNE_MARGIN``) is skipped, with all
    rivals after it. A skipped pair's true distance is at least its bound, hence larger than a
    radius already found, so it cannot lower the minimum (docs/theory.md section 3.2,
    "Pruning and many classes").

    Eigendecompositions of ``A_kj = (P_j - P_k) / 2`` (one per unordered pair: ``A_kj = -A_jk``
    share eigenvectors) are all computed at construction when they fit in
    ``pair_cache_bytes``; otherwise (large K) only the pairs a round needs are decomposed, in
    chunks, and the least recently used are dropped. Points are processed in chunks whose
    ``(K, rows, d)`` work tensors fit in ``working_bytes``. What cannot fit at all (the K
    precision matrices themselves) is refused at construction. Units: the latent units of
    ``means``.
    """

    def __init__(
        self,
        means,
        precisions,
        log_weights,
        *,
        norm="l2",
        device="cpu",
        dtype=torch.float64,
        prune=True,
        pair_cache_bytes=PAIR_CACHE_BYTES,
        working_bytes=WORKING_BYTES,
    ):
        check_norm(norm, "norm")
        self.device = resolve_device(device)
        self.dtype = dtype
        self.norm = norm
        self.exact = norm == "l2"
        self.prune = bool(prune)
        self.means = as_real_tensor(means, "means", self.device, dtype)
        self.precisions = as_real_tensor(precisions, "precisions", self.device, dtype)
        self.log_weights = as_real_tensor(log_weights, "log_weights", self.device, dtype)
        K, d = self._check_shapes()
        itemsize = torch.finfo(dtype).bits // 8
        # Precisions, their magnitudes and the eigenvalue check's copy, plus one chunk of work.
        check_memory(
            3 * K * d * d * itemsize + working_bytes,
            f"the quadratic certificate of {K} classes in {d} dimensions",
            "use a linear family (covariance=shared) or fewer latent dimensions",
        )
        self.working_bytes = int(working_bytes)
        spectra = self._validate()
        self._abs_precisions = self.precisions.abs()
        # ||(|P_k|)||_2: bounds the magnitudes |c|^T |P_k| |c| <= rho ||c||^2 and
        # || |P_k| |c| || <= rho ||c|| of the summands of scores and gradients.
        self._abs_norm = torch.linalg.eigvalsh(self._abs_precisions)[:, -1]
        self._spectrum_min, self._spectrum_max = spectra[:, 0], spectra[:, -1]
        self._pairs = PairEigenbases(self.precisions, pair_cache_bytes)

    @property
    def n_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def scores(self, Z) -> torch.Tensor:
        """(n, K) class scores ``s_k(z)``."""
        Z = self._points(Z)
        parts = [self._scores(Z[rows])[2].T for rows in self._chunks(Z.shape[0])]
        return torch.cat(parts) if parts else Z.new_empty((0, self.n_classes))

    def predict(self, Z) -> torch.Tensor:
        """(n,) argmax of the scores (ties: the lowest index)."""
        return self.scores(Z).argmax(-1)

    def radii(self, Z, pred=None) -> torch.Tensor:
        """(n,) certified radius in ``self.norm``; see :meth:`certificate`."""
        return self.certificate(Z, pred).radius

    def certify(self, Z) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions (n,) int64, radii (n,) in latent ``norm`` units), the interface shared
        with :class:`gmcert.certify.linear.LinearCertifier`."""
        pred, cert = self._run(self._points(Z), None)
        return pred, cert.radius

    def certificate(self, Z, pred=None) -> QuadraticCertificate:
        """Certificate for each row of ``Z`` (n, d) and its class ``pred`` (n,), default the
        prediction. Where ``pred`` is not the strict argmax the radius is 0."""
        Z = self._points(Z)
        if pred is not None:
            pred = self._labels(pred, Z.shape[0])
        return self._run(Z, pred)[1]

    @torch.no_grad()
    def _run(self, Z, pred):
        n = Z.shape[0]
        out_pred = torch.empty(n, dtype=torch.long, device=self.device)
        radius = torch.full((n,), math.inf, dtype=self.dtype, device=self.device)
        delta = torch.full((n, self.dim), math.nan, dtype=self.dtype, device=self.device)
        nearest = torch.full((n,), -1, dtype=torch.long, device=self.device)
        verified = torch.zeros(n, dtype=torch.bool, device=self.device)
        for rows in self._chunks(n):
            given = None if pred is None else pred[rows]
            out_pred[rows], r, dl, j, ok = self._certify_chunk(Z[rows], given)
            radius[rows], delta[rows], nearest[rows], verified[rows] = r, dl, j, ok
        radius = lower_bound_from_l2(radius, self.dim, self.norm)
        cert = QuadraticCertificate(radius, delta, nearest, verified, self.norm, self.exact)
        return out_pred, cert

    def _chunks(self, n):
        """Row slices whose (K, rows, d) work tensors (about six of them) fit the budget."""
        per_row = 6 * self.n_classes * self.dim * torch.finfo(self.dtype).bits // 8
        step = max(1, self.working_bytes // per_row)
        return [slice(start, min(start + step, n)) for start in range(0, n, step)]

    def _scores(self, Z):
        """(centred (K, n, d), pulled ``P_k (z - mu_k)`` (K, n, d), scores (K, n))."""
        centred = Z[None, :, :] - self.means[:, None, :]
        pulled = torch.einsum("kde,kne->knd", self.precisions, centred)
        quad = (pulled * centred).sum(-1)
        return centred, pulled, self.log_weights[:, None] - 0.5 * quad

    def _certify_chunk(self, Z, pred):
        K, n = self.n_classes, Z.shape[0]
        centred, pulled, scores = self._scores(Z)
        if pred is None:
            pred = scores.argmax(0)
        radius = torch.full((n,), math.inf, dtype=self.dtype, device=self.device)
        delta = torch.full((n, self.dim), math.nan, dtype=self.dtype, device=self.device)
        nearest = torch.full((n,), -1, dtype=torch.long, device=self.device)
        verified = torch.zeros(n, dtype=torch.bool, device=self.device)
        if K == 1 or n == 0:
            return pred, radius, delta, nearest, verified
        points = torch.arange(n, device=self.device)
        # The constraint g = s_k - s_j of every rival j, for each point's class k.
        values = scores[pred, points][None] - scores  # (K, n)
        gradients = pulled - pulled[pred, points][None]  # (K, n, d)

        magnitudes = self._magnitudes(centred)
        bound = self._lower_bounds(values, gradients, magnitudes, pred)
        bound[pred, points] = math.inf  # not a rival
        order = bound.argsort(dim=0, stable=True)  # rivals by increasing bound; own class last
        sorted_bound = bound.gather(0, order)
        n_rivals = K - 1
        solved = torch.zeros((n_rivals, n), dtype=torch.bool, device=self.device)
        if self.prune:
            # First round: every rival among the nearest 16 whose bound is below a cheap upper
            # bound on the radius, so that one round usually settles a point.
            limit = min(16, n_rivals)
            threshold = self._upper_bound(values, gradients, order[0], pred)
        else:
            limit, threshold = n_rivals, torch.full_like(radius, math.inf)
        first = True
        while True:
            # Pruning proof: docs/theory.md section 3.2. NaN-free: bounds are finite or inf.
            pending = ~solved[:limit] & (sorted_bound[:limit] <= threshold * (1 + PRUNE_MARGIN))
            if first:
                pending[0] = True  # the nearest rival by the bound, always
            first = False
            if pending.any():
                slot, point = pending.nonzero(as_tuple=True)
                rival = order[slot, point]
                k = pred[point]
                scale = [m[k, point] + m[rival, point] for m in magnitudes]
                r, dl, ok = self._solve_pairs(
                    point, k, rival, values[rival, point], gradients[rival, point], *scale
                )
                self._keep_smallest(point, rival, r, dl, ok, radius, delta, nearest, verified)
                solved[:limit] |= pending
                threshold = radius
                continue
            threshold = radius
            # The bounds are sorted: nothing beyond ``limit`` is pending unless its first is.
            if limit == n_rivals or not (sorted_bound[limit] <= radius * (1 + PRUNE_MARGIN)).any():
                break
            limit = min(4 * limit, n_rivals)
        return pred, radius, delta, nearest, verified

    def _upper_bound(self, values, gradients, rival, pred):
        """(n,) an upper bound on each point's radius (used only to choose what to solve first):
        the first crossing of the boundary with ``rival`` along ``-b``, where
        ``g(z - t b / ||b||) = g - t ||b|| + t^2 u^T A u`` (inf where the ray never crosses)."""
        points = torch.arange(values.shape[1], device=self.device)
        b = gradients[rival, points]
        norm = torch.linalg.vector_norm(b, dim=-1)
        u = b / norm[:, None]
        # u^T A_kj u = (u^T P_j u - u^T P_k u) / 2, one product per class.
        curvature = torch.zeros_like(norm)
        for cls, sign in ((rival, 0.5), (pred, -0.5)):
            for c in torch.unique(cls).tolist():
                rows = (cls == c).nonzero().squeeze(-1)
                curvature[rows] += sign * ((u[rows] @ self.precisions[c]) * u[rows]).sum(-1)
        g = values[rival, points]
        crossing = first_root(g.clamp(min=0), -norm, curvature)
        return torch.where(g > 0, crossing, 0.0)

    @staticmethod
    def _keep_smallest(point, rival, r, dl, ok, radius, delta, nearest, verified):
        """Per point, the smallest radius so far (ties: the lowest rival class, as an unpruned
        minimum over classes in order would pick)."""
        best = radius.scatter_reduce(0, point, r, reduce="amin")
        at_best = r == best[point]
        # Rows whose minimum is still held by an earlier round keep it unless a tie has a lower
        # class (inf radii have no class: nearest stays -1).
        earlier = torch.where(radius == best, nearest, torch.full_like(nearest, 2**62))
        earlier = torch.where(earlier < 0, torch.full_like(earlier, 2**62), earlier)
        winner_class = earlier.scatter_reduce(
            0, point[at_best], rival[at_best], reduce="amin", include_self=True
        )
        take = at_best & (rival == winner_class[point]) & torch.isfinite(r)
        changed = point[take]
        radius.copy_(best)
        delta[changed], nearest[changed], verified[changed] = dl[take], rival[take], ok[take]

    def _magnitudes(self, centred):
        """(K, n) bounds on the magnitudes of the summands of each score, ``|w_k| + |c|^T |P_k|
        |c| / 2``, and of each ``P_k c``, ``|| |P_k| |c| ||``, through ``rho = || |P_k| ||_2``:
        ``|c|^T |P| |c| <= rho ||c||^2`` and ``|| |P| |c| || <= rho ||c||``. They scale the
        rounding-error estimates of the bounds and of the solver (an upper bound on the exact
        magnitudes, so only ever more conservative; O(K n d) instead of O(K n d^2))."""
        centred_norm = torch.linalg.vector_norm(centred, dim=-1)
        pulled = self._abs_norm[:, None] * centred_norm
        return self.log_weights.abs()[:, None] + 0.5 * pulled * centred_norm, pulled

    def _lower_bounds(self, values, gradients, magnitudes, pred):
        """(K, n) a lower bound on each rival's distance, from ``g``, ``||grad||`` and a bound
        ``nu`` on the negative curvature of ``A_kj``: ``g(z + delta) >= g - ||b|| r - nu r^2``
        for ``||delta|| <= r``, positive for ``r`` below the root
        ``2 g / (||b|| + sqrt(||b||^2 + 4 nu g))``. ``g`` and ``||b||`` are first taken down /
        up by the solver's own rounding-error estimate (``magnitudes`` from
        :meth:`_magnitudes`)."""
        d, eps = self.dim, torch.finfo(self.dtype).eps
        points = torch.arange(values.shape[1], device=self.device)
        score_bound, pulled_bound = magnitudes
        grad_norm = torch.linalg.vector_norm(gradients, dim=-1)
        value_err = 8 * (d + 2) * eps * (score_bound[pred, points][None] + score_bound)
        gradient_err = (
            4 * (d + 2) * eps * (pulled_bound[pred, points][None] + pulled_bound + grad_norm)
        )
        g = (values - value_err).clamp(min=0)
        slope = grad_norm + gradient_err
        nu = self._negative_curvature()[pred].T  # (K, n)
        bound = 2 * g / (slope + (slope**2 + 4 * nu * g).sqrt())
        return torch.nan_to_num(bound, nan=0.0) * (1 - 1e-12)

    def _negative_curvature(self):
        """(K, K): ``nu[k, j] >= max(0, -lambda_min(A_kj))``, with the solver's eigenvalue shift
        and a rounding margin added. Exact per pair where every pair is decomposed; otherwise
        from the class spectra, ``A_kj = (P_j - P_k) / 2 >= (lambda_min(P_j) - lambda_max(P_k))
        / 2``."""
        if not hasattr(self, "_nu"):
            eps = torch.finfo(self.dtype).eps
            exact = self._pairs.lowest_eigenvalues()
            if exact is not None:
                lowest, scale = exact
            else:
                lowest = 0.5 * (self._spectrum_min[None, :] - self._spectrum_max[:, None])
                scale = 0.5 * (self._spectrum_max[None, :] + self._spectrum_max[:, None])
            margin = (16 * self.dim + 64) * eps * scale
            self._nu = (margin - lowest).clamp(min=0)
        return self._nu

    def _solve_pairs(self, point, k, j, values, gradients, value_scale, gradient_scale):
        """Exact distances for the items (point, class k, rival j), grouped by class pair."""
        K = self.n_classes
        a, b = torch.minimum(k, j), torch.maximum(k, j)
        pair = a * K - a * (a + 1) // 2 + (b - a - 1)  # row-major strict upper triangle
        sign = torch.where(k < j, 1.0, -1.0).to(self.dtype)
        perm = pair.argsort(stable=True)
        pair, point, k, j = pair[perm], point[perm], k[perm], j[perm]
        values, gradients, sign = values[perm], gradients[perm], sign[perm]
        value_scale, gradient_scale = value_scale[perm], gradient_scale[perm]
        unique, counts = torch.unique_consecutive(pair, return_counts=True)
        radius = torch.empty_like(values)
        delta = torch.empty_like(gradients)
        verified = torch.empty_like(values, dtype=torch.bool)
        bounds = [0, *counts.cumsum(0).tolist()]
        for first, last in self._pairs.chunks(len(unique)):
            lo, hi = bounds[first], bounds[last]
            eigenvalues, eigenvectors, matrices, zero = self._pairs.get(unique[first:last])
            offsets = [o - lo for o in bounds[first : last + 1]]
            blocks = Blocks(offsets, eigenvectors, matrices, sign[lo:hi], zero)
            item_pair = torch.repeat_interleave(counts[first:last])
            out = solve_in_blocks(
                values[lo:hi],
                gradients[lo:hi],
                sign[lo:hi, None] * eigenvalues[item_pair],
                blocks,
                value_scale=value_scale[lo:hi],
                gradient_scale=gradient_scale[lo:hi],
            )
            radius[lo:hi], delta[lo:hi] = out.radius, out.delta
            verified[lo:hi] = out.witness_verified
        back = perm.argsort()
        return radius[back], delta[back], verified[back]

    def _check_shapes(self):
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
        return K, d

    def _validate(self):
        """Finite, symmetric, positive-definite precisions; returns their spectra (K, d)."""
        K = self.n_classes
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
        spectra = torch.linalg.eigvalsh(self.precisions)
        if (spectra <= 0).any():
            raise ValueError(
                "every precision matrix must be positive definite; add shrinkage to the "
                "covariances before inverting them"
            )
        return spectra

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
