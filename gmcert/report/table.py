"""One run's certified-accuracy table (docs/theory.md section 5): CA(r) from per-point radii
with exact intervals, per-method summaries, and the one place that owns the table's columns:
the stages after certify return their values (CA under Q, empirical robust accuracy, published
rows, the eps bound) and :func:`result_table` puts them in, in :data:`COLUMNS`' order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gmcert.confidence import certified_accuracy, certified_count

# What the evaluate stage measures: one row per method and radius (also gmcert-report's merge).
MEASURED = ("method", "norm", "space", "radius", "certified_accuracy", "ci_low", "ci_high", "n")
# certified_accuracy.csv's columns, in this order; a column whose stage did not run is left out.
COLUMNS = (
    *MEASURED,
    "population_Q",  # CA under Q (gmcert.population.columns.PopulationQ)
    "ceiling_Q",  # the ceiling under Q, where defined
    "empirical_robust_accuracy",  # from the attack stage's radii (Empirical)
    "eps",  # the eps bound (gmcert.bounds.degradation.BoundColumns) ...
    "bound_at_eps",
    "pinsker_at_eps",
    "bretagnolle_huber_at_eps",
    "bound_at_eps_upper",
    "bound_at_true_eps",
    "above_bound",
    "eps_source",
)


def average_certified_radius(correct, radii) -> float:
    """Mean radius over all points, counting wrong or abstained points as 0."""
    correct = np.asarray(correct, bool)
    return float(np.where(correct, np.asarray(radii, np.float64), 0.0).mean())


def method_table(rows: pd.DataFrame, *, method, norm, space, radii, alpha) -> pd.DataFrame:
    """certified_accuracy.csv rows of one method from its predictions.csv rows."""
    table = certified_accuracy(
        rows["correct"].to_numpy(bool), rows[f"radius_{space}"].to_numpy(), radii, alpha=alpha
    )
    table.insert(0, "method", method)
    table.insert(1, "norm", norm)
    table.insert(2, "space", space)
    return table


@dataclass(frozen=True)
class SmoothingSummary:
    """A smoothing method's settings beside its results; ``radius_cap``: the largest radius
    CERTIFY can return (nA = n), a cap, not a measurement; ``at_cap``: the share of points
    at it."""

    radius_cap: float
    sigma: float
    n: int
    n0: int
    alpha: float
    at_cap: float


@dataclass(frozen=True)
class MethodSummary:
    """One method's summary over its certified points (metrics.json's ``methods`` entry)."""

    clean_accuracy: float
    average_certified_radius: float
    abstain_rate: float
    radius_space: str
    exact: bool
    points: int
    seconds_per_point: float
    smoothing: SmoothingSummary | None = None

    def as_metrics(self) -> dict:
        out = {
            "clean_accuracy": self.clean_accuracy,
            "average_certified_radius": self.average_certified_radius,
            "abstain_rate": self.abstain_rate,
            "radius_space": self.radius_space,
            "exact": self.exact,
            "points": self.points,
            "seconds_per_point": self.seconds_per_point,
        }
        if self.smoothing is not None:
            s = self.smoothing
            out.update(
                radius_cap=s.radius_cap,
                sigma=s.sigma,
                n=s.n,
                n0=s.n0,
                alpha=s.alpha,
                at_cap=s.at_cap,
            )
        return out


@dataclass(frozen=True)
class Evaluation:
    """The evaluate stage's output: the measured table (:data:`MEASURED` columns) and each
    method's summary, by method name."""

    table: pd.DataFrame
    summary: dict[str, MethodSummary]

    def summary_metrics(self) -> dict:
        """metrics.json's ``methods`` entry."""
        return {name: s.as_metrics() for name, s in self.summary.items()}


def evaluate(predictions: pd.DataFrame, methods, *, radii, alpha: float) -> Evaluation:
    """certified_accuracy.csv's measured rows and per-method summaries."""
    tables, summary = [], {}
    for method in methods:
        rows = predictions[predictions["method"] == method.name]
        tables.append(
            method_table(
                rows,
                method=method.name,
                norm=method.norm,
                space=method.space,
                radii=radii,
                alpha=alpha,
            )
        )
        radius = rows[method.radius_space.column].to_numpy()
        correct = rows["correct"].to_numpy(bool)
        smoothing = None
        if method.smoothing is not None:
            s = method.smoothing
            smoothing = SmoothingSummary(
                radius_cap=s.radius_cap,
                sigma=s.sigma,
                n=s.n,
                n0=s.n0,
                alpha=s.alpha,
                at_cap=float((radius >= s.radius_cap * (1 - 1e-9)).mean()),
            )
        summary[method.name] = MethodSummary(
            clean_accuracy=float(correct.mean()),
            average_certified_radius=average_certified_radius(correct, radius),
            abstain_rate=float((rows["predict"] == -1).mean()),
            radius_space=method.space,
            exact=method.exact,
            points=int(len(rows)),
            seconds_per_point=float(rows["seconds"].mean()),
            smoothing=smoothing,
        )
    return Evaluation(pd.concat(tables, ignore_index=True), summary)


@dataclass(frozen=True)
class Empirical:
    """Each attacked method's empirical robust accuracy at the table's radii (an upper bound
    on its robust accuracy), and metrics.json's ``attack`` entry."""

    accuracy: dict[str, np.ndarray]
    metrics: dict


def empirical_robust_accuracy(predictions: pd.DataFrame, attacks, *, radii) -> Empirical:
    """Beside each attacked method's certified accuracy (a lower bound on robust accuracy) its
    empirical robust accuracy (an upper bound): correct, and no attack found within r (for
    smoothing: PREDICT kept the certified class up to r). The ``attack`` entry holds the
    deterministic methods' tightness (certified over attack radius) and timings at its top
    level, each smoothing method's under ``smoothing``."""
    radii = np.asarray(radii, np.float64)
    accuracy: dict[str, np.ndarray] = {}
    entry: dict = {}
    smoothing: dict = {}
    for attacked in attacks:
        accuracy[attacked.method], summary = _empirical(predictions, attacked, radii)
        details = getattr(attacked, "details", None)
        if details is None:
            summary["attack"] = (
                "gmcert.attack minimum-norm search, and the exact boundary projection where "
                "the rule is linear in the attacked space"
            )
            entry.update(summary)
        else:
            smoothing[attacked.method] = {**summary, **details}
    entry["smoothing"] = smoothing  # empty: attack.smoothing=false, or no smoothing method
    return Empirical(accuracy, entry)


def _empirical(predictions: pd.DataFrame, attacked, radii) -> tuple[np.ndarray, dict]:
    """One attacked method's empirical robust accuracy at ``radii``; its tightness summary."""
    method = attacked.method
    points = predictions[predictions["method"] == method].set_index("index")
    points = points.loc[attacked.radius.index]
    correct = points["correct"].to_numpy(bool)
    attack = attacked.radius.to_numpy()
    accuracy = certified_count(correct, attack, radii) / max(len(correct), 1)
    certified = points[f"radius_{attacked.space}"].to_numpy()
    both = correct & np.isfinite(attack) & (attack > 0)
    return accuracy, {
        "method": method,
        "norm": attacked.norm,
        "space": attacked.space,
        "points": int(len(attack)),
        "seconds": attacked.seconds,
        "found": int(np.isfinite(attack).sum()),
        "median_certified_radius": float(np.median(certified[correct])) if correct.any() else None,
        "median_attack_radius": float(np.median(attack[both])) if both.any() else None,
        "tightness_median": float(np.median(certified[both] / attack[both]))
        if both.any()
        else None,
        "unsound_points": len(attacked.violations),
    }


def published_table(curves) -> pd.DataFrame:
    """Rows in the table's layout for published curves (gmcert.report.published), or an
    empty frame."""
    frames = [
        pd.DataFrame(
            {
                "method": curve.method,
                "norm": curve.norm,
                "space": curve.space,
                "radius": list(curve.accuracy),
                "certified_accuracy": list(curve.accuracy.values()),
            }
        )
        for curve in curves
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def result_table(
    measured: pd.DataFrame,
    *,
    population=None,
    empirical: Empirical | None = None,
    published=None,
    bounds=None,
) -> pd.DataFrame:
    """certified_accuracy.csv: the evaluate stage's ``measured`` rows, CA under Q and the
    ceiling on the rows of ``population`` (``gmcert.population.columns.PopulationQ``; the
    ``population_Q`` column is always there, NaN without it), each attacked method's
    ``empirical`` robust accuracy, the ``published`` curves as rows of their own, and the
    ``bounds`` (``gmcert.bounds.degradation.BoundColumns``) on the rows with CA under Q."""
    table = measured.copy()
    table["population_Q"] = np.nan
    if population is not None:
        rows = population.rows(table)
        table.loc[rows, "population_Q"] = population.accuracy
        if population.ceiling_values is not None:
            table["ceiling_Q"] = np.nan
            table.loc[rows, "ceiling_Q"] = population.ceiling_values
    if empirical is not None:
        table["empirical_robust_accuracy"] = np.nan
        for method, values in empirical.accuracy.items():
            table.loc[table["method"] == method, "empirical_robust_accuracy"] = values
    if published is not None:
        table = pd.concat([table, published_table(published)], ignore_index=True)
    if bounds is not None:
        rows = table["population_Q"].notna()
        table["eps"] = np.nan
        table.loc[rows, "eps"] = bounds.eps
        for column, values in (
            ("bound_at_eps", bounds.at_eps),
            ("pinsker_at_eps", bounds.pinsker),
            ("bretagnolle_huber_at_eps", bounds.bretagnolle_huber),
            ("bound_at_eps_upper", bounds.at_eps_upper),
            ("bound_at_true_eps", bounds.at_true_eps),
        ):
            if values is not None:
                table[column] = np.nan
                table.loc[rows, column] = values
        above = pd.Series(pd.NA, index=table.index, dtype="boolean")
        above[rows] = bounds.above
        table["above_bound"] = above
        table["eps_source"] = pd.Series(pd.NA, index=table.index, dtype="string")
        table.loc[rows, "eps_source"] = bounds.source  # which eps the bound is at
    return table[[column for column in COLUMNS if column in table]]


def format_table(table: pd.DataFrame) -> str:
    """The run's table as printed at the end of ``gmcert-run``: one line per method and radius,
    with the interval, CA under Q and the eps bound where they exist."""
    shown = pd.DataFrame(
        {
            "method": table["method"],
            "radius": table["radius"].map("{:g}".format),
            "certified": table["certified_accuracy"].map("{:.3f}".format),
            "interval": [
                f"[{lo:.3f}, {hi:.3f}]"
                for lo, hi in zip(table["ci_low"], table["ci_high"], strict=True)
            ],
        }
    )
    for column, title in (
        ("empirical_robust_accuracy", "attacked"),
        ("population_Q", "CA under Q"),
        ("ceiling_Q", "ceiling under Q"),
        ("bound_at_eps", "bound at eps"),
    ):
        if column in table and table[column].notna().any():
            shown[title] = table[column].map(lambda v: "" if np.isnan(v) else f"{v:.3f}")
    return shown.to_string(index=False)


def read_table(run_dir) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / "certified_accuracy.csv")
