"""Point masses in the latent law: where they exist, KL(P || Q) is infinite.

Every Gaussian component of Q has a density (its covariance carries ``reg_covar`` > 0 on the
diagonal), so KL(P_k || Q_k) is finite only if P_k has a density too. A coordinate that takes
one exact value on a positive share of a class's points (the exact zeros of post-ReLU
features, a dead unit, a clipped pixel) is a point mass of P_k's marginal, so P_k has no
density and KL(P_k || Q_k) = +inf, whatever the estimators print: they assume a density and
return finite numbers. A continuous law repeats a value with probability 0, so a value shared
by ``min_share`` of a class's points (and by at least two) is taken as a point mass.
"""

from __future__ import annotations

import numpy as np


def point_masses(Z, codes, *, min_share: float = 0.01) -> dict:
    """Per class: how many coordinates have a value held by at least ``min_share`` of the
    class's points (and by two or more), and the largest such share.

    Returns ``{"found": bool, "min_share": ..., "per_class": {code: {"coordinates": int,
    "largest_share": float, "value": float | None}}}``; ``value`` is the most repeated value
    in the coordinate with the largest share (e.g. 0.0 for ReLU features).
    """
    Z = np.asarray(Z)
    per_class, found = {}, False
    for code in np.unique(codes):
        Zk = np.sort(Z[codes == code], axis=0)
        n = len(Zk)
        # Lengths of runs of equal values in each sorted column: the largest is the mass.
        starts = np.ones_like(Zk, dtype=bool)
        starts[1:] = Zk[1:] != Zk[:-1]
        largest, value, coordinates = 0, None, 0
        for j in range(Zk.shape[1]):
            edges = np.flatnonzero(starts[:, j])
            runs = np.diff(np.append(edges, n))
            top = int(runs.argmax())
            if runs[top] >= max(2, min_share * n):
                coordinates += 1
                if runs[top] > largest:
                    largest, value = int(runs[top]), float(Zk[edges[top], j])
        per_class[int(code)] = {
            "coordinates": coordinates,
            "largest_share": largest / n if n else 0.0,
            "value": value,
        }
        found |= coordinates > 0
    return {"found": found, "min_share": min_share, "per_class": per_class}
