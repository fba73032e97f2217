"""The per-class estimators as :func:`~gmcert.eps.estimate.estimate_eps` runs them.

The joint divergence splits into one KL per class, each a sample X_k ~ P_{z|k} against a
*known* Gaussian N(mu_k, Sigma_k). :class:`ClassContext` holds what the estimators of one class
share (the sample, the one Cholesky factor of Sigma_k, the within-class neighbour distances,
independently seeded random streams); :data:`ESTIMATORS` is the registry of estimators by name.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gmcert.eps.dv import dv_gaussian_from_cholesky
from gmcert.eps.knn import kl_knn
from gmcert.eps.neighbours import Neighbours, NeighbourSearch
from gmcert.eps.plugin import entropy_kozachenko_leonenko, plugin_from_parts
from gmcert.eps.results import TermEstimate
from gmcert.gaussian import cholesky

__all__ = ["ClassContext", "ESTIMATORS"]


@dataclass
class ClassContext:
    """What the per-class estimators share: the sample, Q's parameters, the neighbour cache."""

    X: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    search: NeighbourSearch
    q_ratio: int
    seed: tuple[int, ...]
    dv_split: float = 0.5  # share of the class's points the DV discriminator is fitted on
    C_grid: tuple[float, ...] = (0.01, 0.1, 1.0)  # dv_logistic's regularisation grid
    rho: Neighbours | None = None
    chol: np.ndarray | None = None

    def cholesky(self) -> np.ndarray:
        # One factorisation per class, shared by every estimator (d^3 each).
        if self.chol is None:
            self.chol = cholesky(self.cov, "covariance of this class")
        return self.chol

    def within_distances(self) -> Neighbours:
        if self.rho is None:
            self.rho = self.search.distances(self.X)
        return self.rho

    def rng_for(self, name: str) -> np.random.Generator:
        # Independent streams per (class, estimator): adding an estimator never changes
        # another's numbers.
        return np.random.default_rng([*self.seed, zlib.crc32(name.encode())])


def _class_knn(ctx: ClassContext) -> TermEstimate:
    rng = ctx.rng_for("knn")
    m = ctx.q_ratio * len(ctx.X)
    Y = ctx.mean + rng.standard_normal((m, len(ctx.mean))) @ ctx.cholesky().T
    return kl_knn(ctx.X, Y, search=ctx.search, rho=ctx.within_distances())


def _class_plugin(ctx: ClassContext) -> TermEstimate:
    ent = entropy_kozachenko_leonenko(ctx.X, search=ctx.search, rho=ctx.within_distances())
    return plugin_from_parts(ctx.X, ctx.mean, ctx.cholesky(), ent)


def _class_dv_with(discriminator: str) -> Callable[[ClassContext], TermEstimate]:
    name = "dv" if discriminator == "generative" else f"dv_{discriminator}"

    def run(ctx: ClassContext) -> TermEstimate:
        return dv_gaussian_from_cholesky(
            ctx.X,
            ctx.mean,
            ctx.cholesky(),
            discriminator=discriminator,
            split=ctx.dv_split,
            q_expectation="exact",
            q_ratio=ctx.q_ratio,
            C_grid=ctx.C_grid,
            rng=ctx.rng_for(name),
        )

    return run


# Registry of per-class estimators: name -> (minimum class size, function of a context).
ESTIMATORS: dict[str, tuple[int, Callable[[ClassContext], TermEstimate]]] = {
    "knn": (3, _class_knn),
    "plugin": (3, _class_plugin),
    "dv": (8, _class_dv_with("generative")),
    "dv_logistic": (8, _class_dv_with("logistic")),
}
