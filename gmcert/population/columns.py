"""The table's population columns (docs/theory.md section 5): CA under the fitted Q beside the
closed-form rows, and the ceiling no classifier beats under Q."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gmcert.certify.latent import folded_certifier, latent_certifier, torch_dtype
from gmcert.certify.transfer import RadiusTransfer
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.population.accuracy import (
    population_certified_accuracy,
    two_class_certified_accuracy,
)
from gmcert.population.ceiling import pairwise_robust_accuracy_ceiling


@dataclass(frozen=True)
class PopulationQ:
    """CA under Q at the table's closed-form radii, with its interval (exact: a point)."""

    method: str  # "closed_form" or "monte_carlo"
    ci_low: np.ndarray
    ci_high: np.ndarray
    samples: int | None
    ceiling: str  # what the ceiling_Q column holds, or why it is absent

    def as_metrics(self) -> dict:
        out = {"method": self.method, "ci_low": self.ci_low.tolist()}
        out["ci_high"] = self.ci_high.tolist()
        if self.samples is not None:
            out["samples"] = self.samples
        return {**out, "ceiling": self.ceiling}


def add_population_columns(
    table: pd.DataFrame,
    mixture: GaussianMixtureClassifier,
    *,
    transfer: RadiusTransfer,
    options,
    device,
    seed: int,
) -> PopulationQ | None:
    """Add ``population_Q`` (and ``ceiling_Q`` where defined) to the closed-form rows: in closed
    form for two equiprobable shared-covariance classes, by Monte Carlo from Q otherwise.
    ``options`` is the run's ``certify`` config node; ``transfer`` says which latent radius, in
    which norm, an input radius of the table stands for."""
    table["population_Q"] = np.nan
    rows = table["method"] == "closed_form"
    if not rows.any() or options.population_samples <= 0:
        return None
    radii, norm = table.loc[rows, "radius"].to_numpy(), options.norm
    in_input = table.loc[rows, "space"].iloc[0] == "input"
    # An encoder linear in its input: CA under Q of the folded input-space rule itself.
    linear = transfer.linear if in_input else None
    folded = folded_certifier(
        mixture, linear, norm=norm, device=device, dtype=torch_dtype(options.dtype)
    )
    if in_input and folded is None:
        # The input ball of radius r lies in the latent ball of radius factor * r.
        radii, norm = radii * transfer.factor, transfer.latent_norm
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
            input_weight=None if folded is None else linear.weight,
        )
        table.loc[rows, "population_Q"] = exact
        low, high, method, samples = exact, exact, "closed_form", None
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
            to_input=None if folded is None else linear.preimage,
        )
        table.loc[rows, "population_Q"] = mc["certified_accuracy"].to_numpy()
        low, high = mc["ci_low"].to_numpy(), mc["ci_high"].to_numpy()
        method, samples = "monte_carlo", options.population_samples
    inner = transfer.inner_l2 if in_input else (1.0 if options.norm == "l2" else None)
    if mixture.is_linear_ and inner is not None:
        # Latent perturbations up to inner * r are all reachable from the input ball r, so no
        # classifier of the latents beats the latent ceiling at that radius.
        table["ceiling_Q"] = np.nan
        table.loc[rows, "ceiling_Q"] = [
            pairwise_robust_accuracy_ceiling(
                mixture.means_, mixture.covariances_, mixture.priors_, inner * rho
            )
            for rho in table.loc[rows, "radius"].to_numpy()
        ]
        ceiling = (
            "optimal robust accuracy under Q against the latent l2 perturbations the input "
            "ball surely reaches; exact for two equiprobable classes, a sound pairwise upper "
            "bound for K > 2 (shared covariance)"
        )
    else:
        ceiling = "not available: needs a shared covariance and an encoder linear in its input"
    return PopulationQ(method, np.asarray(low), np.asarray(high), samples, ceiling)
