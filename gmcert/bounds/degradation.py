"""The degrade stage (docs/theory.md section 6): what eps = KL(P || Q) implies for CA under P.

Turns CA under Q and an eps (estimated on held-out latents, or a budget the user states) into
the table's bound columns, and checks whether the measured certified accuracy sits above the
bound: the falsification check a referee asks for.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gmcert.bounds.kl import bretagnolle_huber_lower, kl_inverse_lower, pinsker_lower
from gmcert.data import GroundTruth
from gmcert.eps import true_kl
from gmcert.eps.stage import estimate_for_mixture
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.population.columns import PopulationQ

log = logging.getLogger(__name__)


def add_bound_columns(
    table: pd.DataFrame,
    *,
    population_low,
    eps: float,
    eps_upper: float | None = None,
    eps_true: float | None = None,
) -> pd.DataFrame:
    """Bound columns on the rows that have CA under Q (``population_low`` aligned with them).

    ``population_low`` is the lower Clopper-Pearson end of the Monte Carlo CA_Q, so the bound
    holds for the stated eps at the interval's confidence, not only for the point estimate.
    ``above_bound``: the measured certified accuracy's upper interval end is at or above the
    bound at eps (False would falsify the claim that KL(P || Q) <= eps).
    """
    rows = table["population_Q"].notna()
    q = np.asarray(population_low, np.float64)
    table["eps"] = np.nan
    table.loc[rows, "eps"] = eps
    for column, values in {
        "bound_at_eps": kl_inverse_lower(q, eps),
        "pinsker_at_eps": pinsker_lower(q, eps),
        "bretagnolle_huber_at_eps": bretagnolle_huber_lower(q, eps),
    }.items():
        table[column] = np.nan
        table.loc[rows, column] = values
    # At the interval's upper end; at the true eps where the data's law is known.
    for column, value in (("bound_at_eps_upper", eps_upper), ("bound_at_true_eps", eps_true)):
        if value is not None:
            table[column] = np.nan
            table.loc[rows, column] = kl_inverse_lower(q, value)
    table["above_bound"] = above_bound(table["ci_high"], table["bound_at_eps"])
    return table


def above_bound(ci_high: pd.Series, bound: pd.Series) -> pd.Series:
    """Whether the measured certified accuracy's upper interval end reaches the bound at eps
    (a nullable boolean: NA where there is no bound); 1e-12 of slack for rounding."""
    return (ci_high >= bound - 1e-12).where(bound.notna(), pd.NA).astype("boolean")


def sensitivity_curves(population_low, eps_grid) -> np.ndarray:
    """The kl-inverse bound on a grid of eps (rows) for each CA_Q value (columns)."""
    return kl_inverse_lower(np.asarray(population_low)[None, :], np.asarray(eps_grid)[:, None])


@dataclass(frozen=True)
class Verdict:
    kind: str  # "above" | "falsified" | "vacuous"
    text: str

    @property
    def above(self) -> bool:
        return self.kind != "falsified"


def judge(table: pd.DataFrame, *, eps: float, source: str) -> Verdict:
    """Is the measured certified accuracy at or above the bound at ``eps`` at every radius
    (``above``), below it somewhere (``falsified``: the data refute KL(P || Q) <= eps), or is
    the bound 0 everywhere (``vacuous``)? Needs the columns of :func:`add_bound_columns`."""
    rows = table["population_Q"].notna()
    if not bool(table.loc[rows, "above_bound"].all()):
        failing = table.loc[rows & ~table["above_bound"].fillna(True), "radius"].tolist()
        return Verdict(
            "falsified",
            f"measured certified accuracy falls BELOW the bound at eps = {eps:.4g} at radii "
            f"{failing}: KL(P || Q) <= eps is falsified by these data",
        )
    if math.isinf(eps):
        return Verdict(
            "vacuous",
            f"eps = inf ({source}): the latents put a point mass on single values (e.g. the "
            "exact zeros of ReLU features), so P has no density and KL(P || Q) is infinite for "
            "every Gaussian mixture Q; the bound is 0 at every radius",
        )
    if (table.loc[rows, "bound_at_eps"] <= 0).all():
        return Verdict(
            "vacuous",
            f"the bound at eps = {eps:.4g} ({source}) is 0 at every radius: vacuous, the "
            "latents are too far from the mixture for eps to guarantee anything",
        )
    return Verdict(
        "above",
        f"measured certified accuracy is at or above the bound at eps = {eps:.4g} ({source}) "
        "at every radius",
    )


@dataclass(frozen=True)
class Sensitivity:
    """The bound on a grid of eps for each radius with CA under Q, for eps_sensitivity.png."""

    rows: pd.DataFrame
    eps_grid: np.ndarray
    curves: np.ndarray  # (len(eps_grid), len(rows))
    eps: float | None  # None when eps is infinite
    interval: tuple[float | None, float | None] | None
    # The raw readings' eps and interval, marked beside the (null-corrected) eps the bound
    # uses; None when the two are the same (no null calibration) or eps is infinite.
    raw: float | None = None
    raw_interval: tuple[float | None, float | None] | None = None
    basis: str = "estimate"  # what ``eps`` is: "null-corrected", "raw" or "stated budget"


@dataclass(frozen=True)
class Degradation:
    metrics: dict  # metrics.json's "divergence" entry
    sensitivity: Sensitivity | None


def degrade(
    table: pd.DataFrame,
    population: PopulationQ | None,
    mixture: GaussianMixtureClassifier,
    Z_test,
    y_test,
    options,
    *,
    seed: int,
    device,
    truth: GroundTruth | None = None,
) -> Degradation:
    """eps (estimated on the held-out test latents, or the stated budget ``options.eps``) ->
    bound columns in ``table``, the verdict, and the sensitivity curves. With the data's exact
    law (synthetic data), also the true eps by Monte Carlo and each estimator's error.
    ``options``: the ``divergence`` config node."""
    result: dict = {}
    eps_hat = eps_upper = interval = raw = raw_interval = None
    if options.enabled:
        result.update(
            estimate_for_mixture(mixture, Z_test, y_test, options, seed=seed, device=device)
        )
        eps_hat, eps_upper = result["eps_hat"], result["eps_upper"]
        # The plot marks each eps with its own estimator's interval.
        if result["eps_basis"] == "null-corrected" and result["eps_raw"]["eps_hat"] is not None:
            raw = result["eps_raw"]["eps_hat"]
            raw_interval = tuple(result["eps_raw"]["interval"])
        if eps_hat is not None:
            interval = tuple(result.get("interval") or (result["eps_ci_low"], eps_upper))
        else:
            result["note"] = "no estimator gave a joint eps estimate (see the estimates' notes)"
            if options.eps is None:
                return Degradation(result, None)
    if population is None:
        result["note"] = "no CA under Q for these methods, so no bound"
        return Degradation(result, None)
    eps_true = None
    if truth is not None:
        result["eps_true"] = true_kl(truth, mixture, samples=options.truth_samples, seed=seed + 1)
        if "estimates" in result:
            truth_value = result["eps_true"]["estimate"]
            result["estimator_error"] = {
                name: v["estimate"] - truth_value
                for name, v in result["estimates"]["joint"].items()
                if v["estimate"] is not None
            }
            null = result["estimates"].get("null")
            if null:
                result["corrected_error"] = {
                    name: v["corrected"] - truth_value
                    for name, v in null["joint"].items()
                    if v["corrected"] is not None
                }
        # 3 standard errors above the Monte Carlo estimate: the bound at the true eps, safely.
        eps_true = max(result["eps_true"]["estimate"] + 3 * result["eps_true"]["stderr"], 0.0)
    eps = options.eps if options.eps is not None else eps_hat
    basis = result.get("eps_basis", "raw")
    if options.eps is not None:
        source = "stated budget"
    else:
        source = "null-corrected estimate" if basis == "null-corrected" else "estimate"
    result.update(eps_used=eps, eps_source=source)
    add_bound_columns(
        table,
        population_low=population.ci_low,
        eps=eps,
        eps_upper=eps_upper if options.eps is None else None,
        eps_true=eps_true,
    )
    table["eps_source"] = pd.Series(pd.NA, index=table.index, dtype="string")
    table.loc[table["population_Q"].notna(), "eps_source"] = source  # which eps the bound is at
    verdict = judge(table, eps=eps, source=source)
    result.update(measured_above_bound=verdict.above, verdict=verdict.text)
    log.info(verdict.text)
    if options.eps is not None:  # a stated budget: the estimates are not what the bound uses
        raw = raw_interval = None
    marks = (eps_upper, eps, raw, raw_interval[1] if raw_interval else None)
    finite = [e for e in marks if e is not None and math.isfinite(e)]
    grid = np.geomspace(1e-3, max([10.0, *(2 * e for e in finite)]), 200)
    rows = table[table["population_Q"].notna()]
    curves = sensitivity_curves(population.ci_low, grid)
    if not math.isfinite(eps):  # nothing to mark on a finite axis: only the curves
        eps, interval, raw, raw_interval = None, None, None, None
    return Degradation(
        result,
        Sensitivity(rows, grid, curves, eps, interval, raw, raw_interval, basis=source),
    )
