"""The degrade stage (docs/theory.md section 6): what eps = KL(P || Q) implies for CA under P.

Turns CA under Q and an eps (estimated on held-out latents, or a budget the user states) into
the bound on the rows with CA under Q (:class:`BoundColumns`, which
:func:`gmcert.report.table.result_table` puts in the table), and checks whether the measured
certified accuracy sits above the bound: the falsification check a referee asks for.
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


@dataclass(frozen=True)
class BoundColumns:
    """The bound at eps on each row with CA under Q (in that order): the kl-inverse bound
    (``at_eps``, the table's ``bound_at_eps``), the looser Pinsker and Bretagnolle-Huber ones,
    the kl-inverse at the interval's upper end and at the true eps where given, whether the
    measured certified accuracy reaches it (``above``), and which eps it is (``source``)."""

    eps: float
    at_eps: np.ndarray
    pinsker: np.ndarray
    bretagnolle_huber: np.ndarray
    above: np.ndarray  # bool
    source: str
    at_eps_upper: np.ndarray | None = None
    at_true_eps: np.ndarray | None = None


def bound_columns(
    *,
    population_low,
    ci_high,
    eps: float,
    source: str,
    eps_upper: float | None = None,
    eps_true: float | None = None,
) -> BoundColumns:
    """The bounds on the rows with CA under Q (``population_low`` and the measured ``ci_high``
    aligned with them).

    ``population_low`` is the lower Clopper-Pearson end of the Monte Carlo CA_Q, so the bound
    holds for the stated eps at the interval's confidence, not only for the point estimate.
    ``above``: the measured certified accuracy's upper interval end is at or above the bound at
    eps (False would falsify the claim that KL(P || Q) <= eps).
    """
    q = np.asarray(population_low, np.float64)
    at_eps = kl_inverse_lower(q, eps)
    above = above_bound(pd.Series(np.asarray(ci_high, np.float64)), pd.Series(at_eps))
    return BoundColumns(
        eps=eps,
        at_eps=at_eps,
        pinsker=pinsker_lower(q, eps),
        bretagnolle_huber=bretagnolle_huber_lower(q, eps),
        above=above.to_numpy(bool),
        source=source,
        # At the interval's upper end; at the true eps where the data's law is known.
        at_eps_upper=None if eps_upper is None else kl_inverse_lower(q, eps_upper),
        at_true_eps=None if eps_true is None else kl_inverse_lower(q, eps_true),
    )


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


def judge(radius, bounds: BoundColumns) -> Verdict:
    """Is the measured certified accuracy at or above the bound at every radius (``above``),
    below it somewhere (``falsified``: the data refute KL(P || Q) <= eps), or is the bound 0
    everywhere (``vacuous``)? ``radius``: the radii of the rows ``bounds`` is for."""
    eps, source = bounds.eps, bounds.source
    if not bool(bounds.above.all()):
        failing = np.asarray(radius, np.float64)[~bounds.above].tolist()
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
    if (bounds.at_eps <= 0).all():
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
    bounds: BoundColumns | None = None  # None: no eps, or no rows with CA under Q


@dataclass(frozen=True)
class EpsReading:
    """What the bound takes from the eps stage's estimates, read from its result once: the eps
    the bound uses (``eps``: None when no estimator gave a joint estimate) with its interval,
    what it is (``basis``), and the raw readings' eps and interval where the bound's eps is
    null-corrected."""

    eps: float | None
    upper: float | None
    interval: tuple[float | None, float | None] | None
    basis: str
    raw: float | None = None
    raw_interval: tuple[float | None, float | None] | None = None

    @classmethod
    def of(cls, estimated: dict) -> EpsReading:
        """From :func:`gmcert.eps.stage.estimate_for_mixture`'s result."""
        eps, upper, basis = estimated["eps_hat"], estimated["eps_upper"], estimated["eps_basis"]
        raw = raw_interval = None
        # The plot marks each eps with its own estimator's interval.
        if basis == "null-corrected" and estimated["eps_raw"]["eps_hat"] is not None:
            raw = estimated["eps_raw"]["eps_hat"]
            raw_interval = tuple(estimated["eps_raw"]["interval"])
        interval = None
        if eps is not None:
            interval = tuple(estimated.get("interval") or (estimated["eps_ci_low"], upper))
        return cls(eps, upper, interval, basis, raw, raw_interval)


def degrade(
    measured: pd.DataFrame,
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
    the bound on the rows of ``measured`` (the evaluate stage's table) that ``population``
    has CA under Q for, the verdict, and the sensitivity curves. With the data's exact law
    (synthetic data), also the true eps by Monte Carlo and each estimator's error.
    ``options``: the ``divergence`` config node."""
    result: dict = {}
    reading = None
    if options.enabled:
        result.update(
            estimate_for_mixture(mixture, Z_test, y_test, options, seed=seed, device=device)
        )
        reading = EpsReading.of(result)
        if reading.eps is None:
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
    stated = options.eps is not None
    eps = options.eps if stated else reading.eps
    basis = reading.basis if reading is not None else "raw"
    if stated:
        source = "stated budget"
    else:
        source = "null-corrected estimate" if basis == "null-corrected" else "estimate"
    result.update(eps_used=eps, eps_source=source)
    rows = measured[population.rows(measured)]
    eps_upper = reading.upper if reading is not None else None
    bounds = bound_columns(
        population_low=population.ci_low,
        ci_high=rows["ci_high"].to_numpy(),
        eps=eps,
        source=source,
        eps_upper=None if stated else eps_upper,
        eps_true=eps_true,
    )
    verdict = judge(rows["radius"].to_numpy(), bounds)
    result.update(measured_above_bound=verdict.above, verdict=verdict.text)
    log.info(verdict.text)
    interval = reading.interval if reading is not None else None
    raw = raw_interval = None
    if (
        reading is not None and not stated
    ):  # a stated budget: the estimates are not what the bound uses
        raw, raw_interval = reading.raw, reading.raw_interval
    marks = (eps_upper, eps, raw, raw_interval[1] if raw_interval else None)
    finite = [e for e in marks if e is not None and math.isfinite(e)]
    grid = np.geomspace(1e-3, max([10.0, *(2 * e for e in finite)]), 200)
    curves = sensitivity_curves(population.ci_low, grid)
    if not math.isfinite(eps):  # nothing to mark on a finite axis: only the curves
        eps, interval, raw, raw_interval = None, None, None, None
    sensitivity = Sensitivity(
        rows.assign(population_Q=population.accuracy),
        grid,
        curves,
        eps,
        interval,
        raw,
        raw_interval,
        basis=source,
    )
    return Degradation(result, sensitivity, bounds)
