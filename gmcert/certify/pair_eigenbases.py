"""The eigenbases of a quadratic rule's class-pair boundaries, within a memory budget.

Each pair ``a < b`` of classes with precisions ``P_a, P_b`` has the boundary matrix
``A_ab = (P_b - P_a) / 2``; the exact certificate (:mod:`gmcert.certify.quadratic`) needs its
eigendecomposition. K = 10 classes decompose every pair up front; K = 1000 cannot keep all
K (K - 1) / 2 of them, so they are decomposed when first needed and the least recently used
are dropped.
"""

from __future__ import annotations

from collections import OrderedDict

import torch


class PairEigenbases:
    """Eigendecompositions of ``A_ab = (P_b - P_a) / 2`` for the class pairs ``a < b``, indexed
    row-major in the strict upper triangle.

    All pairs are decomposed up front (batched) when their ``K (K - 1) / 2 (d^2 + d)`` numbers
    fit in ``budget`` bytes; otherwise (K = 1000 at d = 64 would need 16 GiB) a pair is
    decomposed when a round first needs it and kept in a least-recently-used cache of at most
    ``budget`` bytes, and callers take the pairs of a round in :meth:`chunks` of half the cache.
    The matrices themselves are rebuilt on demand (bitwise the same for both orders: x - y
    rounds to exactly -(y - x)).
    """

    # Pairs decomposed per batched call (bounds the temporary (batch, d, d) matrices).
    BATCH = 256

    def __init__(self, precisions, budget):
        self.precisions = precisions
        K, d = precisions.shape[:2]
        self.per_pair = (d * d + d) * torch.finfo(precisions.dtype).bits // 8
        self.capacity = max(2, int(budget) // self.per_pair)
        a, b = torch.triu_indices(K, K, offset=1, device=precisions.device)
        self.first, self.second = a, b
        self.complete = len(a) <= self.capacity
        self.cache = OrderedDict()
        if self.complete:
            parts = [
                self._decompose(a[s : s + self.BATCH], b[s : s + self.BATCH])
                for s in range(0, len(a), self.BATCH)
            ]
            self.eigenvalues = torch.cat([p[0] for p in parts]) if parts else None
            self.eigenvectors = torch.cat([p[1] for p in parts]) if parts else None

    def matrices(self, pairs):
        """[U x (d, d)]: ``A_ab`` of ``pairs``, rebuilt (cheaper than keeping K^2 / 2 of them)."""
        first, second = self.first[pairs], self.second[pairs]
        built = 0.5 * (self.precisions[second] - self.precisions[first])
        return list(built)

    def _decompose(self, a, b):
        return torch.linalg.eigh(0.5 * (self.precisions[b] - self.precisions[a]))

    def lowest_eigenvalues(self):
        """(lowest, scale), each (K, K): ``lambda_min(A_kj)`` and ``max |lambda(A_kj)|`` for
        every ordered pair, or None unless every pair is decomposed. ``A_jk = -A_kj``, so the
        lowest eigenvalue of the reversed order is minus the highest."""
        if not self.complete:
            return None
        K = self.precisions.shape[0]
        lowest = torch.zeros(K, K, dtype=self.precisions.dtype, device=self.precisions.device)
        scale = torch.zeros_like(lowest)
        if self.eigenvalues is not None:
            low, high = self.eigenvalues[:, 0], self.eigenvalues[:, -1]
            lowest[self.first, self.second] = low
            lowest[self.second, self.first] = -high
            magnitude = torch.maximum(low.abs(), high.abs())
            scale[self.first, self.second] = magnitude
            scale[self.second, self.first] = magnitude
        return lowest, scale

    def chunks(self, n_pairs):
        """(first, last) ranges of a round's sorted distinct pairs that fit the cache."""
        step = n_pairs if self.complete else max(1, self.capacity // 2)
        return [(s, min(s + step, n_pairs)) for s in range(0, n_pairs, step)]

    def get(self, pairs):
        """(eigenvalues (U, d), eigenvectors [U x (d, d)], matrices [U x (d, d)], whether each
        matrix is exactly zero [U]) of ``pairs``."""
        index = pairs.tolist()
        matrices = self.matrices(pairs)
        # All eigenvalues exactly 0 <=> the matrix is exactly 0 (eigh maps 0 to exactly 0, and
        # a nonzero symmetric matrix has an eigenvalue of at least its Frobenius norm / sqrt(d)).
        if self.complete:
            values = self.eigenvalues[pairs]
            zero = (values == 0).all(-1).tolist()
            return values, [self.eigenvectors[p] for p in index], matrices, zero
        missing = [p for p in index if p not in self.cache]
        for p in index:
            if p in self.cache:
                self.cache.move_to_end(p)
        for s in range(0, len(missing), self.BATCH):
            batch = torch.tensor(missing[s : s + self.BATCH], device=pairs.device)
            values, vectors = self._decompose(self.first[batch], self.second[batch])
            for p, lam, vec in zip(batch.tolist(), values, vectors, strict=True):
                self.cache[p] = (lam, vec)
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)  # the least recently used; this round's are newest
        entries = [self.cache[p] for p in index]
        values = torch.stack([e[0] for e in entries])
        return values, [e[1] for e in entries], matrices, (values == 0).all(-1).tolist()
