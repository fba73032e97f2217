"""k-th nearest-neighbour distances, the shared step of the kNN and plug-in estimators.

Searches run in torch on a caller-chosen device, in memory-bounded row blocks; the returned
distances are exact float64. Exact duplicates are skipped (see :func:`kth_neighbour_distance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from gmcert.checks import as_matrix
from gmcert.eps.checks import check_k

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_SEARCH",
    "NeighbourSearch",
    "Neighbours",
    "kth_neighbour_distance",
]

# Default memory budget for one block of pairwise distances (bytes). 256 MiB keeps a 2-core
# laptop responsive and is far below any GPU's memory.
DEFAULT_MAX_BATCH_BYTES = 256 * 2**20


class Neighbours(NamedTuple):
    """k-th neighbour distances and how many points had zero-distance neighbours skipped."""

    distance: np.ndarray  # (n,) float64, Euclidean, > 0
    zero_skipped: int  # points for which at least one exact duplicate was skipped


@dataclass(frozen=True)
class NeighbourSearch:
    """How the kNN-based estimators search: neighbour order ``k`` and the search settings of
    :func:`kth_neighbour_distance` (``device``, ``precision``, ``max_batch_bytes``)."""

    k: int = 1
    device: str | torch.device = "cpu"
    precision: str = "auto"
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES

    def distances(self, X, Y=None) -> Neighbours:
        """:func:`kth_neighbour_distance` of X within X (``Y=None``) or in Y, these settings."""
        return kth_neighbour_distance(
            X,
            Y,
            k=self.k,
            device=self.device,
            precision=self.precision,
            max_batch_bytes=self.max_batch_bytes,
        )

    def within(self, X: np.ndarray, rho: Neighbours | None = None) -> Neighbours:
        """Distances within the (n, d) matrix X: ``rho`` when given (checked to be for n
        points), else computed."""
        if rho is None:
            return self.distances(X)
        if rho.distance.shape != (len(X),):
            raise ValueError("rho was computed for a different X; omit it to recompute")
        return rho


DEFAULT_SEARCH = NeighbourSearch()  # k = 1, CPU, float32 candidates, 256 MiB blocks


def kth_neighbour_distance(
    X,
    Y=None,
    *,
    k: int = 1,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
) -> Neighbours:
    """Euclidean distance from each row of X (n, d) to its k-th nearest neighbour.

    With ``Y=None`` the neighbours are the other rows of X (the point itself excluded by
    index); otherwise the rows of Y (m, d). Exact duplicates (distance exactly 0 in float64)
    are skipped, so the k-th *distinct-location* neighbour is used: a sample with atoms has
    KL(P || Q) = inf against any continuous Q, and log 0 would turn one duplicate into an
    infinite estimate. ``zero_skipped`` counts affected points; report it.

    Search: squared distances by one matrix product per row block of at most
    ``max_batch_bytes`` on ``device``, keeping ``k + 8`` candidates per row with ``topk``; the
    candidates' distances are then recomputed
    exactly in float64 from coordinate differences and re-ranked. ``precision`` sets the dtype
    of the candidate search only: "float32" (fast; the float64 refinement makes the returned
    values exact, a rank swap can only occur between candidates whose distances agree to
    float32 round-off), "float64", or "auto" (= float32). Data are centred first so the
    matrix-product form does not lose digits to a large common offset.

    Returns:
        Neighbours(distance (n,) float64 > 0, zero_skipped int).
    """
    X = as_matrix(X, "X")
    self_search = Y is None
    Yn = X if self_search else as_matrix(Y, "Y")
    n, d = X.shape
    if Yn.shape[1] != d:
        raise ValueError(f"X has d={d} columns but Y has {Yn.shape[1]}; they must match")
    m = Yn.shape[0]
    check_k(k, m - 1 if self_search else m, "X minus the point itself" if self_search else "Y")
    if precision not in ("auto", "float32", "float64"):
        raise ValueError(f"precision must be 'auto', 'float32' or 'float64', got {precision!r}")
    search_dtype = torch.float64 if precision == "float64" else torch.float32
    device = torch.device(device)

    centre = X.mean(axis=0)
    x64 = torch.as_tensor(X - centre, dtype=torch.float64, device=device)
    y64 = x64 if self_search else torch.as_tensor(Yn - centre, dtype=torch.float64, device=device)
    xs, ys = x64.to(search_dtype), y64.to(search_dtype)

    n_cand = min(k + 8, m - 1 if self_search else m)
    itemsize = 4 if search_dtype == torch.float32 else 8
    # The block of squared distances plus one same-sized temporary (topk); the refinement
    # gathers (rows, n_cand, d) float64 coordinates.
    rows_search = max_batch_bytes // max(1, 2 * m * itemsize)
    rows_refine = max_batch_bytes // max(1, 2 * n_cand * d * 8)
    block = int(max(1, min(n, rows_search, rows_refine)))
    # Candidates are ranked by |x|^2 - 2 x.y + |y|^2 (one addmm; the ranking needs no square
    # root, and cdist's own kernel was 1.5-3x slower here); the float64 refinement below makes
    # the returned distances exact.
    y_sq = (ys * ys).sum(dim=1)

    out = torch.empty(n, dtype=torch.float64, device=device)
    skipped = torch.zeros(n, dtype=torch.bool, device=device)
    short_rows: list[int] = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        dist = torch.addmm(y_sq, xs[start:stop], ys.T, alpha=-2.0)
        if self_search:
            rows = torch.arange(stop - start, device=device)
            dist[rows, rows + start] = float("inf")
        cand = torch.topk(dist, n_cand, dim=1, largest=False).indices
        del dist
        exact = torch.linalg.vector_norm(y64[cand] - x64[start:stop, None, :], dim=2)
        zero = exact == 0
        skipped[start:stop] = zero.any(dim=1)
        exact = torch.where(zero, torch.full_like(exact, float("inf")), exact)
        kth = torch.kthvalue(exact, k, dim=1).values
        out[start:stop] = kth
        bad = torch.nonzero(~torch.isfinite(kth)).flatten()
        short_rows.extend((bad + start).tolist())
    for i in short_rows:
        # More than n_cand - k duplicates of this point: search its whole row exactly.
        row = torch.linalg.vector_norm(y64 - x64[i], dim=1)
        if self_search:
            row[i] = float("inf")
        row = row[row > 0]
        if row.numel() < k:
            raise ValueError(
                f"row {i} of X has fewer than k={k} neighbours at non-zero distance (too many "
                "exact duplicates); deduplicate the latents or lower k"
            )
        out[i] = torch.kthvalue(row, k).values
    return Neighbours(out.cpu().numpy(), int(skipped.sum().item()))
