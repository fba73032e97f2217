"""kNN estimate of KL(P || Q) from two samples (Wang, Kulkarni and Verdu 2009).

k-th neighbour distances of X within X and in a sample Y ~ Q. Consistent; in high d the bias
does not vanish at practical n and can have either sign, so read it beside the plug-in and
Donsker-Varadhan estimates (:mod:`gmcert.eps.plugin`, :mod:`gmcert.eps.dv`).
"""

from __future__ import annotations

import math

import numpy as np

from gmcert.checks import as_matrix
from gmcert.eps.neighbours import DEFAULT_SEARCH, Neighbours, NeighbourSearch
from gmcert.eps.results import TermEstimate

__all__ = ["kl_knn"]


def kl_knn(
    X,
    Y,
    *,
    search: NeighbourSearch = DEFAULT_SEARCH,
    rho: Neighbours | None = None,
) -> TermEstimate:
    """kNN estimate of KL(P || Q) (Wang, Kulkarni and Verdu 2009), X (n, d) ~ P, Y (m, d) ~ Q.

    ``D = (d / n) sum_i log(nu_k(i) / rho_k(i)) + log(m / (n - 1))``, rho_k(i) the k-th
    neighbour distance of X_i among the other X, nu_k(i) its k-th neighbour distance in Y.
    Asymptotically unbiased and consistent for fixed k; at finite n the bias is O(n^(-2/d))-ish
    and can be several nats (either sign) once d is in the tens, so read it beside ``plugin``
    and ``dv``. Per-sample terms are ``d log(nu/rho) + log(m/(n-1))``.

    ``search`` sets k and the neighbour search; ``rho`` may pass precomputed within-X distances
    (same k) to share work with the plug-in.
    """
    X = as_matrix(X, "X")
    Y = as_matrix(Y, "Y")
    n, d = X.shape
    if n < 2:
        raise ValueError("kl_knn needs at least 2 samples from P (n >= k + 1)")
    rho = search.within(X, rho)
    nu = search.distances(X, Y)
    m = Y.shape[0]
    terms = d * (np.log(nu.distance) - np.log(rho.distance)) + math.log(m / (n - 1))
    return TermEstimate(
        float(terms.mean()),
        terms,
        info={"k": search.k, "n": n, "m": m, "zero_skipped": rho.zero_skipped + nu.zero_skipped},
    )
