"""CA under the fitted Q at the table's radii, and the ceiling no classifier beats under Q
(docs/theory.md section 5), for every method that certifies Q's own rule (``under_q``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gmcert.certify.latent import latent_certifier, torch_dtype
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.population.accuracy import (
    population_certified_accuracy,
    two_class_certified_accuracy,
)
from gmcert.population.ceiling import pairwise_robust_accuracy_ceiling

CEILING_NOTE = (
    "optimal robust accuracy under Q against the latent l2 perturbations the input "
    "ball surely reaches; exact for two equiprobable classes, a sound pairwise upper "
    "bound for K > 2 (shared covariance)"
)
NO_CEILING_NOTE = "not available: needs a shared covariance and an encoder linear in its input"


@dataclass(frozen=True)
class PopulationQ:
    """CA under Q with its interval (exact: a point), and the ceiling under Q where defined,
    at each radius of each of ``methods`` (method by method, radii in the table's order)."""

    methods: tuple[str, ...]
    accuracy: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    ceiling_values: np.ndarray | None  # NaN where a method has none; None: no method has one
    method: str  # "closed_form" or "monte_carlo": how CA under Q was computed
    samples: int | None
    ceiling: str  # what the ceiling values are, or why they are absent

    def rows(self, table: pd.DataFrame) -> pd.Series:
        """Which rows of a table built from the same methods and radii these values are for."""
        return table["method"].isin(self.methods)

    def as_metrics(self) -> dict:
        """metrics.json's ``population_Q`` entry."""
        out = {"method": self.method, "ci_low": self.ci_low.tolist()}
        out["ci_high"] = self.ci_high.tolist()
        if self.samples is not None:
            out["samples"] = self.samples
        return {**out, "ceiling": self.ceiling}


@dataclass(frozen=True)
class _OneMethod:
    accuracy: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    ceiling: np.ndarray | None
    method: str
    samples: int | None


def population_q(
    methods,
    mixture: GaussianMixtureClassifier,
    *,
    radii,
    options,
    device,
    seed: int,
) -> PopulationQ | None:
    """CA under Q at ``radii`` for each method with ``under_q``: in closed form for two
    equiprobable shared-covariance classes, by Monte Carlo from Q otherwise; None when no
    method has it or ``options.population_samples`` is 0. ``options`` is the run's ``certify``
    config node; each method's ``radius_space`` says which certificate, in which norm, an
    input radius of the table stands for."""
    chosen = [m for m in methods if m.under_q]
    if not chosen or options.population_samples <= 0:
        return None
    radii = np.asarray(radii, np.float64)
    each = [_population(m, mixture, radii, options, device, seed) for m in chosen]
    ceilings = [one.ceiling for one in each]
    ceiling_values = None
    if any(c is not None for c in ceilings):
        ceiling_values = np.concatenate(
            [np.full(len(radii), np.nan) if c is None else c for c in ceilings]
        )
    return PopulationQ(
        tuple(m.name for m in chosen),
        np.concatenate([one.accuracy for one in each]),
        np.concatenate([one.ci_low for one in each]),
        np.concatenate([one.ci_high for one in each]),
        ceiling_values,
        each[-1].method,
        each[-1].samples,
        NO_CEILING_NOTE if ceiling_values is None else CEILING_NOTE,
    )


def _population(method, mixture, radii, options, device, seed) -> _OneMethod:
    where = method.radius_space
    table_radii, norm, folded = radii, method.norm, where.folded
    if folded is None and where.transfer is not None:
        # The input ball of radius r lies in the latent ball of radius factor * r.
        radii, norm = radii * where.transfer.factor, where.transfer.latent_norm
    two_class_bayes = (
        len(mixture.classes_) == 2
        and mixture.is_linear_
        and mixture.tau == 0
        and np.allclose(mixture.priors_, 0.5, rtol=0, atol=1e-12)
    )
    if two_class_bayes:
        exact = two_class_certified_accuracy(
            mixture.means_[0],
            mixture.means_[1],
            mixture.covariances_,
            radii,
            norm=norm,
            # The folded rule (an encoder linear in its input): CA under Q of that rule itself.
            input_weight=None if folded is None else where.linear.weight,
        )
        low, high, how, samples = exact, exact, "closed_form", None
        accuracy = exact
    else:
        certifier = folded or latent_certifier(
            mixture, norm=norm, device=device, dtype=torch_dtype(options.dtype)
        )
        mc = population_certified_accuracy(
            mixture,
            certifier,
            radii,
            samples=options.population_samples,
            alpha=options.ci_alpha,
            seed=seed,
            to_input=None if folded is None else where.linear.preimage,
        )
        accuracy = mc["certified_accuracy"].to_numpy()
        low, high = mc["ci_low"].to_numpy(), mc["ci_high"].to_numpy()
        how, samples = "monte_carlo", options.population_samples
    inner = (
        where.transfer.inner_l2 if where.transfer is not None else (1.0 if norm == "l2" else None)
    )
    ceiling = None
    if mixture.is_linear_ and inner is not None:
        # Latent perturbations up to inner * r are all reachable from the input ball r, so no
        # classifier of the latents beats the latent ceiling at that radius.
        ceiling = np.array(
            [
                pairwise_robust_accuracy_ceiling(
                    mixture.means_, mixture.covariances_, mixture.priors_, inner * rho
                )
                for rho in table_radii
            ]
        )
    return _OneMethod(
        np.asarray(accuracy), np.asarray(low), np.asarray(high), ceiling, how, samples
    )
