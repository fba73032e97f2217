"""The write stage: one run's table, plots and metrics.json, each written atomically."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gmcert.bounds.degradation import Degradation
from gmcert.io import write_csv, write_json
from gmcert.report.plots import plot_certified_accuracy, plot_eps_sensitivity


def write_run(
    out_dir: Path,
    table: pd.DataFrame,
    predictions: pd.DataFrame,
    degradation: Degradation | None,
    metrics: dict,
    *,
    title: str,
) -> None:
    write_csv(out_dir / "certified_accuracy.csv", table)
    plot_certified_accuracy(predictions, table, out_dir / "certified_accuracy.png", title=title)
    if degradation is not None and degradation.sensitivity is not None:
        s = degradation.sensitivity
        plot_eps_sensitivity(
            s.rows,
            s.curves,
            s.eps_grid,
            out_dir / "eps_sensitivity.png",
            eps_hat=s.eps,
            eps_interval=s.interval,
        )
    write_json(out_dir / "metrics.json", metrics)


def radius_units(lipschitz) -> str:
    if lipschitz:
        return "input space, l_p norm of [0, 1] pixel units (latent radius / Lipschitz bound)"
    return "latent space (no certified Lipschitz bound for this encoder)"
