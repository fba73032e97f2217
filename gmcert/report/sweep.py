"""`gmcert-report DIR...`: one combined table and plot from many run folders.

A run folder is any folder with Hydra's ``.hydra/`` or a ``predictions.csv``. Each is named by
its overrides. Failed jobs (``failed.json``), unsound ones (``unsound.json``: an attack beat a
certificate) and half-written ones (predictions but no table) are listed and skipped. Jobs
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

from gmcert.io import atomic_write, write_csv
from gmcert.report.table import method_table

log = logging.getLogger(__name__)


@dataclass
class RunFolder:
    path: Path
    name: str
    status: str  # complete | failed | unsound | incomplete
    reason: str = ""
    fingerprint: str | None = None
    config: dict = field(default_factory=dict)
    indices: tuple[int, int] | None = None  # the test positions [first, stop) it certified


def _overrides_name(path: Path) -> str:
    file = path / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(file.read_text()) if file.exists() else None
    # Index ranges and shards split one configuration; they do not name a different run.
    split = ("hydra.", "paths.", "certify.start", "certify.stop", "certify.shard")
    kept = [o for o in overrides or [] if not o.startswith(split)]
    return " ".join(kept) or path.name


def inspect_run(path: Path) -> RunFolder:
    config_file = path / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
    stamp = path / "run_fingerprint.txt"
    run = RunFolder(
        path,
        _overrides_name(path),
        "complete",
        config=config or {},
        fingerprint=stamp.read_text().strip() if stamp.exists() else None,
    )
    failed, unsound = path / "failed.json", path / "unsound.json"
    if unsound.exists():
        # Its table was written, but an attack beat its certificates: never a result.
        points = len(json.loads(unsound.read_text()))
        run.status, run.reason = "unsound", f"an attack beat {points} certified radii"
    elif failed.exists():
        run.status, run.reason = "failed", json.loads(failed.read_text()).get("error", "")
    elif not (path / "certified_accuracy.csv").exists() or not (path / "metrics.json").exists():
        run.status = "incomplete"
        run.reason = "no certified_accuracy.csv / metrics.json: interrupted or still running"
    else:
        first, stop = json.loads((path / "metrics.json").read_text())["certified_indices"]
        run.indices = (int(first), int(stop))
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
    first = pd.read_csv(group[0].path / "certified_accuracy.csv")
    predictions = pd.concat([pd.read_csv(r.path / "predictions.csv") for r in group])
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
            bound = table["bound_at_eps"]
            merged_above = table["ci_high"] >= bound - 1e-12
            table["above_bound"] = merged_above.where(bound.notna(), pd.NA).astype("boolean")
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
            named.append((name, None, _merged_table(group)))
        else:
            if len(group) > 1:
                log.warning(
                    "%d runs of one configuration certified overlapping or gapped index "
                    "ranges; listed side by side, not merged: %s",
                    len(group),
                    ", ".join(str(r.path) for r in group),
                )
            for r in group:
                named.append((r.name, r.path, pd.read_csv(r.path / "certified_accuracy.csv")))
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


def eps_table(runs: list[RunFolder]) -> pd.DataFrame:
    """One row per complete run with eps results: estimates with intervals, the true eps where
    the data law is known, each estimator's error, and the falsification verdict."""
    rows = []
    for r in runs:
        if r.status != "complete":
            continue
        div = json.loads((r.path / "metrics.json").read_text()).get("divergence") or {}
        if "eps_used" not in div:
            continue
        row = {"run": r.name, "eps_used": div["eps_used"], "eps_source": div["eps_source"]}
        if "eps_true" in div:
            row["eps_true"] = div["eps_true"]["estimate"]
            row["eps_true_se"] = div["eps_true"]["stderr"]
        for name, est in (div.get("estimates") or {}).get("joint", {}).items():
            row[name] = est["estimate"]
            # No interval where the bootstrap had too few points (or n_boot = 0).
            if est.get("ci_low") is not None and est.get("ci_high") is not None:
                row[f"{name}_ci"] = f"[{est['ci_low']:.3g}, {est['ci_high']:.3g}]"
            if "eps_true" in div:
                row[f"{name}_error"] = est["estimate"] - div["eps_true"]["estimate"]
        row["measured_above_bound"] = div.get("measured_above_bound")
        rows.append(row)
    return pd.DataFrame(rows)


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
    """Write combined.{csv,md,tex,png} and runs.csv into ``out_dir``; return a summary."""
    runs = find_runs(dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    status = pd.DataFrame(
        [
            {"run": r.name, "status": r.status, "reason": r.reason, "folder": str(r.path)}
            for r in runs
        ],
        columns=["run", "status", "reason", "folder"],
    )
    write_csv(out / "runs.csv", status)
    combined = combine(runs)
    eps = eps_table(runs)
    if not eps.empty:
        write_csv(out / "eps.csv", eps)
        atomic_write(out / "eps.md", lambda p: p.write_text(markdown(eps)))
    if not combined.empty:
        write_csv(out / "combined.csv", combined)
        wide = wide_table(combined)
        atomic_write(out / "combined.md", lambda p: p.write_text(to_markdown(wide)))
        atomic_write(out / "combined.tex", lambda p: p.write_text(to_latex(wide)))
        plot_runs(combined, out / "combined.png")
    return {"runs": runs, "combined": combined, "eps": eps, "out_dir": out}


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
    for r in result["runs"]:
        if r.status != "complete":
            print(f"skipped ({r.status}): {r.path}  {r.reason}")
    if result["combined"].empty:
        print("no complete runs found")
        return 1
    print(to_markdown(wide_table(result["combined"])))
    if not result["eps"].empty:
        print(markdown(result["eps"]))
    print(f"wrote {result['out_dir']}")
    return 0
