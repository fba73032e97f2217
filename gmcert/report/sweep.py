"""`gmcert-report DIR...`: one combined table and plot from many run folders.

A run folder is any folder with Hydra's ``.hydra/`` or a ``predictions.csv``. Each is named by
its overrides. Failed jobs (``failed.json``), unsound ones (``unsound.json``: an attack beat a
certificate), half-written ones (predictions but no table) and damaged ones (a file the report
reads that cannot be parsed or lacks what it must hold) are listed and skipped; a damaged folder
makes the report exit non-zero after it has written the others. Jobs
that certified index ranges of one configuration on the same data (``certify.start`` /
``stop`` / ``shard``) share a run fingerprint; when their ranges are disjoint and together
contiguous, their predictions are merged and the table recomputed, identical to the table of
one unsplit run. Anything else (two complete runs of one configuration, overlapping or
gapped parts) is listed side by side, each named by its folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from gmcert.bounds.degradation import above_bound
from gmcert.io import atomic_write, write_csv
from gmcert.report.eps_sweep import write_eps_sweeps
from gmcert.report.table import method_table

log = logging.getLogger(__name__)


@dataclass
class RunFolder:
    path: Path
    name: str
    status: str  # complete | failed | unsound | incomplete | damaged
    reason: str = ""
    fingerprint: str | None = None
    config: dict = field(default_factory=dict)
    indices: tuple[int, int] | None = None  # the test positions [first, stop) it certified
    metrics: dict = field(default_factory=dict)
    table: pd.DataFrame | None = None  # its certified_accuracy.csv, read once


class DamagedFile(ValueError):
    """A file of a run folder that the report cannot use: unreadable, unparsable, or without
    what it must hold. The folder is listed as damaged; the other folders are reported."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path.name}: {why}")


# The columns a table needs for the report to place it (the rest are optional extras).
TABLE_COLUMNS = ("method", "norm", "space", "radius", "certified_accuracy", "ci_low", "ci_high")
PREDICTION_COLUMNS = ("method", "index", "label", "predict", "correct")
NUMERIC_COLUMNS = ("radius", "certified_accuracy", "ci_low", "ci_high", "index", "predict")


def _read(path: Path, parse):
    """``parse(text)`` of one file, or DamagedFile saying which file and why."""
    try:
        return parse(path.read_text())
    except OSError as err:
        raise DamagedFile(path, f"cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise DamagedFile(
            path, f"cannot be read as text ({err.reason} at byte {err.start})"
        ) from None
    except json.JSONDecodeError as err:
        raise DamagedFile(path, f"not valid JSON ({err})") from None
    except yaml.YAMLError as err:
        raise DamagedFile(path, f"not valid YAML ({str(err).splitlines()[0]})") from None


def _mapping(path: Path, value, what: str) -> dict:
    if not isinstance(value, dict):
        raise DamagedFile(path, f"holds a {type(value).__name__}, not the {what} it should")
    return value


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError) as err:
        raise DamagedFile(path, f"cannot be read ({err})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DamagedFile(path, f"not a readable CSV table ({str(err).strip()})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DamagedFile(path, f"lacks the column(s) {', '.join(missing)}")
    numeric = [c for c in NUMERIC_COLUMNS if c in frame and frame[c].dtype.kind not in "fiub"]
    if numeric:
        raise DamagedFile(path, f"the column(s) {', '.join(numeric)} hold text, not numbers")
    return frame


def _overrides_name(path: Path) -> str:
    file = path / ".hydra" / "overrides.yaml"
    overrides = _read(file, yaml.safe_load) if file.exists() else None
    if overrides is not None and not isinstance(overrides, list):
        raise DamagedFile(file, f"holds a {type(overrides).__name__}, not a list of overrides")
    # Index ranges and shards split one configuration; they do not name a different run.
    split = ("hydra.", "paths.", "certify.start", "certify.stop", "certify.shard")
    kept = [str(o) for o in overrides or [] if not str(o).startswith(split)]
    return " ".join(kept) or path.name


def _failed_reason(path: Path) -> str:
    """The error a failed job recorded, or what is wrong with its failed.json."""
    try:
        record = _read(path, json.loads)
    except DamagedFile as err:
        return f"failed.json is damaged ({err}); see run.log in the folder"
    error = record.get("error") if isinstance(record, dict) else None
    if not isinstance(error, str) or not error.strip():
        return "failed.json records no error; see run.log in the folder"
    return error.strip()


def _certified_indices(path: Path, metrics: dict) -> tuple[int, int]:
    indices = metrics.get("certified_indices")
    if (
        not isinstance(indices, list)
        or len(indices) != 2
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices)
        or not 0 <= indices[0] <= indices[1]
    ):
        raise DamagedFile(path, f"certified_indices is {indices!r}, not a range [first, stop)")
    return indices[0], indices[1]


def inspect_run(path: Path) -> RunFolder:
    """What one folder holds. Never raises for a damaged folder: it comes back as
    ``status="damaged"`` with the file and what is wrong with it."""
    run = RunFolder(path, path.name, "complete")
    unsound = path / "unsound.json"
    if unsound.exists():
        # Its table was written, but an attack beat its certificates: never a result, even
        # when the record of the beaten points itself is damaged.
        try:
            points = len(_read(unsound, json.loads))
            run.reason = f"an attack beat {points} certified radii"
        except (DamagedFile, TypeError) as err:
            run.reason = f"an attack beat a certificate (its record is damaged: {err})"
        run.status = "unsound"
        return run
    try:
        run.name = _overrides_name(path)
        config_file = path / ".hydra" / "config.yaml"
        if config_file.exists():
            run.config = _mapping(config_file, _read(config_file, yaml.safe_load) or {}, "config")
        stamp = path / "run_fingerprint.txt"
        run.fingerprint = _read(stamp, str.strip) if stamp.exists() else None
        failed = path / "failed.json"
        if failed.exists():
            run.status, run.reason = "failed", _failed_reason(failed)
        elif not (path / "certified_accuracy.csv").exists() or not (path / "metrics.json").exists():
            run.status = "incomplete"
            run.reason = "no certified_accuracy.csv / metrics.json: interrupted or still running"
        else:
            metrics_file = path / "metrics.json"
            run.metrics = _mapping(metrics_file, _read(metrics_file, json.loads), "metrics")
            run.indices = _certified_indices(metrics_file, run.metrics)
            run.table = _read_csv(path / "certified_accuracy.csv", TABLE_COLUMNS)
            eps_row(run)  # a malformed eps section is found here, not half-way through the report
    except DamagedFile as err:
        run.status = "damaged"
        run.reason = f"{err}; rerun this job (same overrides, hydra.run.dir=<this folder>)"
    return run


def find_runs(dirs) -> list[RunFolder]:
    runs = []
    for root in map(Path, dirs):
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist; pass run folders or a multirun folder")
        candidates = {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
        candidates |= {p.parent for p in root.rglob("predictions.csv")}
        candidates |= {p.parent for p in root.rglob("failed.json")}
        runs += [inspect_run(p) for p in sorted(candidates)]
    return runs


def _merged_table(group: list[RunFolder]) -> pd.DataFrame:
    """Recompute one table from the union of the group's predictions (split certification)."""
    first = group[0].table
    predictions = pd.concat(
        [_read_csv(r.path / "predictions.csv", PREDICTION_COLUMNS) for r in group]
    )
    predictions = predictions.drop_duplicates(subset=["method", "index"], keep="first")
    certify = group[0].config.get("certify", {})
    tables = []
    for (method, norm, space), rows in first.groupby(["method", "norm", "space"], sort=False):
        table = method_table(
            predictions[predictions["method"] == method],
            method=method,
            norm=norm,
            space=space,
            radii=rows["radius"].to_numpy(),
            alpha=certify.get("ci_alpha", 0.05),
        )
        # Columns computed from Q or eps, not from test points, are the same in every part;
        # those that depend on the points are recomputed, or left empty when they cannot be.
        for extra in first.columns.difference(table.columns):
            table[extra] = rows[extra].to_numpy()
        table["empirical_robust_accuracy"] = np.nan  # the parts' attacks are not merged
        if "above_bound" in table:
            table["above_bound"] = above_bound(table["ci_high"], table["bound_at_eps"])
        tables.append(table[first.columns])
    return pd.concat(tables, ignore_index=True)


def parts_of_one_run(group: list[RunFolder]) -> bool:
    """Whether runs of one fingerprint are the parts of one split run: their certified index
    ranges are disjoint and, in order, leave no gap."""
    ranges = sorted(r.indices for r in group)
    return all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def combine(runs: list[RunFolder]) -> pd.DataFrame:
    """Long table of every complete run (split parts merged), with a ``run`` column."""
    complete = [r for r in runs if r.status == "complete"]
    groups: dict[str, list[RunFolder]] = {}
    for r in complete:
        groups.setdefault(r.fingerprint or str(r.path), []).append(r)
    named = []  # (name, folder, table)
    for group in groups.values():
        if len(group) > 1 and parts_of_one_run(group):
            parts = sorted(r.indices for r in group)
            first, stop = parts[0][0], parts[-1][1]
            name = f"{group[0].name} (merged {len(group)} parts, points {first}-{stop - 1})"
            try:
                named.append((name, None, _merged_table(group)))
            except DamagedFile as err:
                # One damaged part spoils the merge: every part is listed, none reported.
                for r in group:
                    r.status = "damaged"
                    r.reason = f"{err} (in one part of a split run: {name}); rerun that part"
        else:
            if len(group) > 1:
                log.warning(
                    "%d runs of one configuration certified overlapping or gapped index "
                    "ranges; listed side by side, not merged: %s",
                    len(group),
                    ", ".join(str(r.path) for r in group),
                )
            for r in group:
                named.append((r.name, r.path, r.table.copy()))
    if not named:
        return pd.DataFrame()
    counts = pd.Series([name for name, _, _ in named]).value_counts()
    tables = []
    for name, folder, table in named:
        if counts[name] > 1 and folder is not None:
            name = f"{name} [{folder.name}]"  # two runs must never share a row of the table
        table.insert(0, "run", name)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _eps_row(name: str, div: dict) -> dict:
    row = {"run": name, "eps_used": div["eps_used"], "eps_source": div["eps_source"]}
    if "eps_true" in div:
        row["eps_true"] = div["eps_true"]["estimate"]
        row["eps_true_se"] = div["eps_true"]["stderr"]
    for estimator, est in (div.get("estimates") or {}).get("joint", {}).items():
        row[estimator] = est["estimate"]
        # No interval where the bootstrap had too few points (or n_boot = 0).
        if est.get("ci_low") is not None and est.get("ci_high") is not None:
            row[f"{estimator}_ci"] = f"[{est['ci_low']:.3g}, {est['ci_high']:.3g}]"
        if "eps_true" in div:
            row[f"{estimator}_error"] = est["estimate"] - div["eps_true"]["estimate"]
    row["measured_above_bound"] = div.get("measured_above_bound")
    return row


def eps_row(run: RunFolder) -> dict | None:
    """The run's eps results as one row (None without them); DamagedFile where its
    metrics.json holds a divergence section of the wrong form."""
    div = run.metrics.get("divergence") or {}
    if not isinstance(div, dict) or "eps_used" not in div:
        return None
    try:
        return _eps_row(run.name, div)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        why = f"its divergence section is malformed ({type(err).__name__}: {err})"
        raise DamagedFile(run.path / "metrics.json", why) from None


def eps_table(runs: list[RunFolder]) -> pd.DataFrame:
    """One row per complete run with eps results: estimates with intervals, the true eps where
    the data law is known, each estimator's error, and the falsification verdict."""
    rows = [eps_row(r) for r in runs if r.status == "complete"]
    return pd.DataFrame([row for row in rows if row is not None])


def wide_table(combined: pd.DataFrame) -> pd.DataFrame:
    """Rows = run / method, columns = radii: the layout of the literature's tables."""
    wide = combined.pivot_table(
        index=["run", "method"], columns="radius", values="certified_accuracy", sort=False
    )
    wide.columns = [f"{r:g}" for r in wide.columns]
    return wide


def _marked(wide: pd.DataFrame, bold) -> pd.DataFrame:
    best = wide.max(axis=0)
    return wide.apply(
        lambda col: [
            bold(f"{v:.3f}")
            if v == best[col.name] and v > 0
            else ("" if np.isnan(v) else f"{v:.3f}")
            for v in col
        ]
    )


def markdown(frame: pd.DataFrame) -> str:
    """A pipe table; floats to 4 significant digits."""

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * len(frame.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def to_markdown(wide: pd.DataFrame) -> str:
    marked = _marked(wide, lambda s: f"**{s}**")
    marked.columns = [f"r = {c}" for c in marked.columns]
    return markdown(marked.reset_index())


def to_latex(wide: pd.DataFrame) -> str:
    def esc(s):
        return str(s).replace("_", r"\_").replace("%", r"\%")

    marked = _marked(wide, lambda s: rf"\textbf{{{s}}}")
    cols = "ll" + "c" * len(marked.columns)
    lines = [
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        "run & method & " + " & ".join(f"$r = {c}$" for c in marked.columns) + r" \\",
        r"\midrule",
    ]
    for (run, method), row in marked.iterrows():
        lines.append(f"{esc(run)} & {esc(method)} & " + " & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def plot_runs(combined: pd.DataFrame, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for (run, method), rows in combined.groupby(["run", "method"], sort=False):
        (line,) = ax.plot(
            rows["radius"],
            rows["certified_accuracy"],
            marker="o",
            markersize=3,
            label=f"{run}: {method}",
        )
        if rows["ci_low"].notna().any():
            ax.fill_between(rows["radius"], rows["ci_low"], rows["ci_high"], alpha=0.12)
        for column, style in (("population_Q", "--"), ("ceiling_Q", "-.")):
            if column in rows and rows[column].notna().any():
                ax.plot(rows["radius"], rows[column], style, color=line.get_color(), alpha=0.7)
    spaces = ", ".join(sorted(set(combined["norm"] + " " + combined["space"])))
    ax.set(
        xlabel=f"radius ({spaces})",
        ylabel="certified accuracy",
        ylim=(0, 1.02),
        title="solid: measured; dashed: CA under Q; dash-dot: ceiling under Q",
    )
    ax.grid(alpha=0.3)
    # Run names can be long: the legend goes beside the axes, and the figure grows to fit it.
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    atomic_write(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight"))
    plt.close(fig)


def report(dirs, out_dir) -> dict:
    """Write combined.{csv,md,tex,png}, runs.csv and, for a sweep over eps, bound_vs_eps.*
    (:mod:`gmcert.report.eps_sweep`) into ``out_dir``; return a summary."""
    runs = find_runs(dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    combined = combine(runs)  # first: a damaged part of a split run is found while merging
    eps = eps_table(runs)
    status = pd.DataFrame(
        [
            {"run": r.name, "status": r.status, "reason": r.reason, "folder": str(r.path)}
            for r in runs
        ],
        columns=["run", "status", "reason", "folder"],
    )
    write_csv(out / "runs.csv", status)
    if not eps.empty:
        write_csv(out / "eps.csv", eps)
        atomic_write(out / "eps.md", lambda p: p.write_text(markdown(eps)))
    if not combined.empty:
        write_csv(out / "combined.csv", combined)
        wide = wide_table(combined)
        atomic_write(out / "combined.md", lambda p: p.write_text(to_markdown(wide)))
        atomic_write(out / "combined.tex", lambda p: p.write_text(to_latex(wide)))
        plot_runs(combined, out / "combined.png")
    sweeps = write_eps_sweeps(runs, out)
    return {"runs": runs, "combined": combined, "eps": eps, "eps_sweeps": sweeps, "out_dir": out}


def report_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gmcert-report",
        description="Combine run folders (or multirun folders) into one table and plot.",
    )
    parser.add_argument("dirs", nargs="+", help="run folders or folders that contain them")
    parser.add_argument("--out", help="where to write (default: outputs/report/<date>)")
    args = parser.parse_args(argv)
    out = args.out or f"outputs/report/{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
    try:
        result = report(args.dirs, out)
    except (FileNotFoundError, ValueError) as err:
        print(f"gmcert-report: error: {err}")
        return 2
    if not result["runs"]:
        print(
            f"gmcert-report: no run folders under {' '.join(args.dirs)} (none holds .hydra/, "
            "predictions.csv or failed.json)"
        )
        return 1
    for r in result["runs"]:
        if r.status != "complete":
            print(f"skipped ({r.status}): {r.path}: {r.reason}")
    damaged = [r for r in result["runs"] if r.status == "damaged"]
    if result["combined"].empty:
        print("no complete runs found")
        return 1
    print(to_markdown(wide_table(result["combined"])))
    if not result["eps"].empty:
        print(markdown(result["eps"]))
    for sweep in result["eps_sweeps"]:
        print(sweep.read_text())
    print(f"wrote {result['out_dir']}")
    if damaged:
        print(f"gmcert-report: {len(damaged)} run folder(s) damaged, left out of the table (above)")
        return 1
    return 0
