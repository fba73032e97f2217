"""One run's plots: certified accuracy vs radius, and the eps bound vs eps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNG files, they never open windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gmcert.confidence import certified_count  # noqa: E402
from gmcert.io import atomic_write  # noqa: E402

# Columns drawn beside the measured curve: (column, line style, legend label).
REFERENCE_CURVES = (
    ("population_Q", "--", "CA under Q"),
    ("ceiling_Q", "-.", "ceiling under Q"),
    ("bound_at_eps", ":", "bound at eps"),
)


def plot_certified_accuracy(
    predictions: pd.DataFrame,
    table: pd.DataFrame,
    path,
    *,
    title: str,
    radius_columns: dict[str, str],
    attack_radius: dict[str, pd.Series] | None = None,
):
    """One curve per method, its radii read from ``radius_columns[method]`` (the method's
    ``radius_space.column``), with the table's Clopper-Pearson intervals as error bars; where
    ``attack_radius`` gives a method's attack radii (by index), the band up to its empirical
    robust accuracy is shaded: the true robust accuracy lies in it (for smoothing, up to the
    Monte Carlo error of its certificates and of PREDICT)."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    published = table[~table["method"].isin(predictions["method"].unique())]
    for method, rows in published.groupby("method", sort=False):
        ax.plot(
            rows["radius"],
            rows["certified_accuracy"],
            "s:",
            color="gray",
            markersize=3,
            label=f"{method}",
        )
    for method, rows in predictions.groupby("method", sort=False):
        space = table.loc[table["method"] == method, "space"].iloc[0]
        radii = rows[radius_columns[method]].to_numpy()
        finite = radii[np.isfinite(radii)]
        top = max(float(finite.max()) if finite.size else 1.0, float(table["radius"].max()))
        grid = np.linspace(0, top * 1.05, 400)
        correct = rows["correct"].to_numpy(bool)
        curve = certified_count(correct, np.nan_to_num(radii), grid) / max(len(correct), 1)
        (line,) = ax.step(grid, curve, where="post", label=f"{method} ({space} radius)")
        if attack_radius and method in attack_radius:
            radius = attack_radius[method]
            attacked = rows.set_index("index").loc[radius.index, "correct"].to_numpy(bool)
            upper = certified_count(attacked, radius.to_numpy(), grid) / len(attacked)
            ax.fill_between(
                grid,
                curve,
                upper,
                step="post",
                color=line.get_color(),
                alpha=0.15,
                label=f"{method}: up to empirical robust accuracy (attack)",
            )
        at = table[table["method"] == method]
        ax.errorbar(
            at["radius"],
            at["certified_accuracy"],
            yerr=[
                at["certified_accuracy"] - at["ci_low"],
                at["ci_high"] - at["certified_accuracy"],
            ],
            fmt="o",
            color=line.get_color(),
            markersize=3,
            capsize=2,
        )
        for column, style, label in REFERENCE_CURVES:
            if column in at and at[column].notna().any():
                ax.plot(
                    at["radius"],
                    at[column],
                    style,
                    color=line.get_color(),
                    alpha=0.7,
                    label=f"{method}: {label}",
                )
    norm = table["norm"].iloc[0]
    ax.set(xlabel=f"{norm} radius", ylabel="certified accuracy", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def plot_eps_sensitivity(
    table: pd.DataFrame,
    curves: np.ndarray,
    eps_grid,
    path,
    *,
    eps_hat: float | None,
    eps_interval=None,
    raw: float | None = None,
    raw_interval=None,
    basis: str = "estimate",
    title: str = "",
):
    """The kl-inverse bound vs eps at each radius, with the measured certified accuracy marked
    at the eps the bound uses (a point below its curve would falsify KL(P || Q) <= eps). That
    eps (``basis``: e.g. the null-corrected estimate) is a solid line with its interval shaded;
    the raw readings' eps, where given, a dashed line with its interval hatched, so a reader
    sees how far the null calibration moved the run. Values at or below the axis's left end
    (eps <= 0) are drawn at that end."""
    rows = table[table["population_Q"].notna()]
    left = eps_grid[0]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (_, row) in enumerate(rows.iterrows()):
        (line,) = ax.plot(eps_grid, curves[:, i], label=f"bound, r = {row['radius']:g}")
        if eps_hat is not None:
            ax.plot([max(eps_hat, left)], [row["certified_accuracy"]], "o", color=line.get_color())

    def span(interval, **style):
        lo, hi = interval
        if lo is not None and hi is not None:
            ax.axvspan(max(lo, left), max(hi, left), **style)

    if raw is not None:
        ax.axvline(max(raw, left), color="0.45", lw=1.0, ls="--", label=f"raw eps {raw:.3g}")
        if raw_interval is not None:
            hatched = {"facecolor": "none", "edgecolor": "0.6", "hatch": "//", "lw": 0}
            span(raw_interval, label="raw interval", **hatched)
    if eps_hat is not None:
        ax.axvline(max(eps_hat, left), color="k", lw=1.2, label=f"{basis} {eps_hat:.3g}")
        if eps_interval is not None:
            span(eps_interval, color="k", alpha=0.12, label=f"{basis} interval")
    ax.set(
        xscale="log",
        xlabel="eps = KL(P || Q) (nats)",
        ylabel="certified accuracy bound",
        ylim=(0, 1.02),
        title=title or f"bound implied by eps, evaluated at the {basis}; dots: measured",
    )
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
