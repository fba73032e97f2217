"""One report for a sweep over eps: the certified-accuracy bound against eps.

Jobs of ``gmcert-run -m divergence.eps=a,b,c`` share their predictions (certified once), so
their certified-accuracy tables repeat the same measured numbers; what changes is the bound
each eps implies. Complete runs whose configurations differ in ``divergence.eps`` alone form
one sweep, reported as ``bound_vs_eps.{csv,md,png}``: per method and radius, the bound at
every eps beside the measured certified accuracy and the accuracy under Q.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from gmcert.io import atomic_write, write_csv

# What the bound table needs from each run's certified_accuracy.csv.
BOUND_COLUMNS = ("method", "radius", "certified_accuracy", "population_Q", "eps", "bound_at_eps")


def _sweep_key(config: dict) -> str:
    """A run's configuration without what an eps sweep varies, nor where files live."""
    config = {k: v for k, v in config.items() if k != "paths"}
    config["divergence"] = {k: v for k, v in (config.get("divergence") or {}).items() if k != "eps"}
    return json.dumps(config, sort_keys=True, default=str)


def eps_sweeps(runs) -> list[pd.DataFrame]:
    """Each group of complete runs (:class:`~gmcert.report.sweep.RunFolder`) that differ only
    in eps, with at least two eps values, as one long table: ``method, radius, eps,
    eps_source, bound_at_eps, certified_accuracy, population_Q, above_bound``, sorted."""
    groups: dict[str, list] = {}
    for run in runs:
        table = run.table
        if run.status != "complete" or table is None:
            continue
        if not set(BOUND_COLUMNS) <= set(table.columns) or table["bound_at_eps"].isna().all():
            continue
        groups.setdefault(_sweep_key(run.config), []).append(run)
    sweeps = []
    for group in groups.values():
        rows = pd.concat(
            [r.table[r.table["bound_at_eps"].notna()] for r in group], ignore_index=True
        )
        if rows["eps"].nunique() < 2:
            continue
        columns = [*BOUND_COLUMNS, "eps_source", "above_bound"]
        rows = rows[[c for c in columns if c in rows.columns]]
        rows = rows.drop_duplicates(subset=["method", "radius", "eps"])
        sweeps.append(rows.sort_values(["method", "radius", "eps"], ignore_index=True))
    return sweeps


def to_markdown(sweep: pd.DataFrame) -> str:
    """Per method: rows = eps, columns = radii (the bound), then the measured accuracy and the
    accuracy under Q, which no eps changes."""
    parts = []
    for method, rows in sweep.groupby("method", sort=False):
        radii = sorted(rows["radius"].unique())
        header = "| eps | " + " | ".join(f"r = {r:g}" for r in radii) + " |"
        lines = [f"**{method}**: the certified-accuracy bound at each eps", "", header]
        lines.append("|" + " --- |" * (len(radii) + 1))
        wide = rows.pivot_table(index="eps", columns="radius", values="bound_at_eps")
        for eps, bounds in wide.iterrows():
            lines.append(f"| {eps:g} | " + " | ".join(f"{bounds[r]:.3f}" for r in radii) + " |")
        for column, name in (("certified_accuracy", "measured"), ("population_Q", "under Q")):
            first = rows.groupby("radius")[column].first()
            lines.append(f"| {name} | " + " | ".join(f"{first[r]:.3f}" for r in radii) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def plot(sweep: pd.DataFrame, path) -> None:
    """Bound against eps, a line per radius; the measured accuracy at that radius dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(sweep["method"]))
    fig, axes = plt.subplots(
        1, len(methods), figsize=(5.5 * len(methods), 4), dpi=120, squeeze=False
    )
    for ax, method in zip(axes[0], methods, strict=True):
        rows = sweep[sweep["method"] == method]
        for radius, line in rows.groupby("radius"):
            (drawn,) = ax.plot(
                line["eps"], line["bound_at_eps"], marker="o", label=f"r = {radius:g}"
            )
            ax.axhline(line["certified_accuracy"].iloc[0], ls=":", color=drawn.get_color())
        positive = rows["eps"][rows["eps"] > 0]
        if not positive.empty:
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        ax.set_xlim(left=0)
        ax.set(xlabel="eps = KL(P || Q) (nats)", ylabel="certified accuracy", ylim=(0, 1.02))
        ax.set_title(f"{method}: bound at eps (solid), measured (dotted)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    atomic_write(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight"))
    plt.close(fig)


def write_eps_sweeps(runs, out_dir) -> list[Path]:
    """``bound_vs_eps.{csv,md,png}`` per eps sweep among ``runs`` (numbered when several);
    returns the markdown files written."""
    written = []
    sweeps = eps_sweeps(runs)
    for number, sweep in enumerate(sweeps, start=1):
        stem = "bound_vs_eps" if len(sweeps) == 1 else f"bound_vs_eps_{number}"
        out = Path(out_dir)
        write_csv(out / f"{stem}.csv", sweep)
        text = to_markdown(sweep)
        written.append(atomic_write(out / f"{stem}.md", lambda p, text=text: p.write_text(text)))
        plot(sweep, out / f"{stem}.png")
    return written
