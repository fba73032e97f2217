"""One run's certified-accuracy table (docs/theory.md section 5): CA(r) from per-point radii
with exact intervals, per-method summaries, and the table as printed at the end of a run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gmcert.bounds.confidence import clopper_pearson_lower, clopper_pearson_upper


def certified_count(correct, radii, at) -> np.ndarray:
    """How many points are correct with a radius >= r, for each r in ``at``."""
    correct = np.asarray(correct, bool)
    radii = np.asarray(radii, np.float64)
    at = np.asarray(at, np.float64)
    return ((correct[None, :]) & (radii[None, :] >= at[:, None])).sum(axis=1)


def certified_accuracy(correct, radii, at, *, alpha: float) -> pd.DataFrame:
    """CA(r) = mean(correct and radius >= r) at each r in ``at``, abstentions counting wrong.

    ``ci_low`` / ``ci_high`` are one-sided Clopper-Pearson bounds, each holding with
    probability at least 1 - alpha over the draw of the n test points.
    """
    n = len(correct)
    hits = certified_count(correct, radii, at)
    return pd.DataFrame(
        {
            "radius": np.asarray(at, np.float64),
            "certified_accuracy": hits / max(n, 1),
            "ci_low": clopper_pearson_lower(hits, n, alpha),
            "ci_high": clopper_pearson_upper(hits, n, alpha),
            "n": n,
        }
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


@dataclass
class Evaluation:
    """The evaluate stage's output: the table and per-method summary metrics."""

    table: pd.DataFrame
    summary: dict


def evaluate(predictions: pd.DataFrame, methods, *, radii, alpha: float) -> Evaluation:
    """certified_accuracy.csv rows and per-method summary metrics."""
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
        radius = rows[f"radius_{method.space}"].to_numpy()
        correct = rows["correct"].to_numpy(bool)
        summary[method.name] = {
            "clean_accuracy": float(correct.mean()),
            "average_certified_radius": average_certified_radius(correct, radius),
            "abstain_rate": float((rows["predict"] == -1).mean()),
            "radius_space": method.space,
            "exact": method.exact,
            "points": int(len(rows)),
            "seconds_per_point": float(rows["seconds"].mean()),
        }
        if method.smoothing is not None:
            s = method.smoothing
            # The largest radius CERTIFY can return (nA = n): a cap, not a measurement.
            summary[method.name].update(
                radius_cap=s.radius_cap,
                sigma=s.sigma,
                n=s.n,
                n0=s.n0,
                alpha=s.alpha,
                at_cap=float((radius >= s.radius_cap * (1 - 1e-9)).mean()),
            )
    return Evaluation(pd.concat(tables, ignore_index=True), summary)


def add_empirical_robust_accuracy(table: pd.DataFrame, predictions: pd.DataFrame, attacks) -> dict:
    """Beside each attacked method's certified accuracy (a lower bound on robust accuracy) its
    empirical robust accuracy (an upper bound): correct, and no attack found within r (for
    smoothing: PREDICT kept the certified class up to r). Returns metrics.json's ``attack``
    entry: the closed form's tightness (certified over attack radius) and timings at its top
    level, each smoothing method's under ``smoothing``."""
    table["empirical_robust_accuracy"] = np.nan
    entry: dict = {}
    smoothing: dict = {}
    for attacked in attacks:
        summary = _empirical(table, predictions, attacked)
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
    return entry


def _empirical(table: pd.DataFrame, predictions: pd.DataFrame, attacked) -> dict:
    """Fill one attacked method's empirical_robust_accuracy rows; its tightness summary."""
    method = attacked.method
    rows = table["method"] == method
    points = predictions[predictions["method"] == method].set_index("index")
    points = points.loc[attacked.radius.index]
    correct = points["correct"].to_numpy(bool)
    attack = attacked.radius.to_numpy()
    hits = certified_count(correct, attack, table.loc[rows, "radius"].to_numpy())
    table.loc[rows, "empirical_robust_accuracy"] = hits / max(len(correct), 1)
    certified = points[f"radius_{attacked.space}"].to_numpy()
    both = correct & np.isfinite(attack) & (attack > 0)
    return {
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
