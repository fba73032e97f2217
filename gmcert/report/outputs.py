"""The write stage: one run's table, plots and metrics.json, each written atomically, and the
attack's findings (a run whose certificates an attack beat is then ended UNSOUND by
:func:`gmcert.attack.stage.raise_if_unsound`, after everything is written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gmcert.bounds.degradation import Degradation
from gmcert.data import LabelledData
from gmcert.features import Encoded
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
    methods,
    findings=None,
) -> Path | None:
    """``methods``: the run's certification methods (where each one's radii are).
    ``findings``: the attack stage's (``gmcert.attack.results.Findings``: attack radii per
    attacked method, smoothing's confirmed flips, the UNSOUND findings), None when it did not
    run. Returns the file the UNSOUND findings were written to, None when there are none."""
    write_csv(out_dir / "certified_accuracy.csv", table)
    plot_certified_accuracy(
        predictions,
        table,
        out_dir / "certified_accuracy.png",
        title=title,
        radius_columns={method.name: method.radius_space.column for method in methods},
        attack_radius=(findings.attack_radius or None) if findings is not None else None,
    )
    if degradation is not None and degradation.sensitivity is not None:
        s = degradation.sensitivity
        plot_eps_sensitivity(
            s.rows,
            s.curves,
            s.eps_grid,
            out_dir / "eps_sensitivity.png",
            eps_hat=s.eps,
            eps_interval=s.interval,
            raw=s.raw,
            raw_interval=s.raw_interval,
            basis=s.basis,
        )
    write_json(out_dir / "metrics.json", metrics)
    if findings is None:
        return None
    if findings.flips:
        write_json(out_dir / "smoothing_flips.json", findings.flips)
    if not findings.unsound:
        return None
    write_json(out_dir / "unsound.json", findings.unsound)
    return out_dir / "unsound.json"


def describe_run(data: LabelledData, encoder_name: str, latents: Encoded, mixture, positions):
    """metrics.json's description of what was run on what."""
    lipschitz = latents.encoder.lipschitz
    return {
        "dataset": data.name,
        "encoder": encoder_name,
        "covariance": mixture.covariance,
        "num_classes": data.num_classes,
        "latent_dim": int(latents.train.shape[1]),
        "train_points": len(data.train),
        "test_points": len(data.test),
        "certified_points": int(len(positions)),
        "certified_indices": [int(positions[0]), int(positions[-1]) + 1],
        "lipschitz": lipschitz,
        "radius_units": radius_units(lipschitz),
        "mixture": {
            "shrinkage": np.asarray(mixture.shrinkage_).tolist(),
            "train_accuracy": float((mixture.predict(latents.train) == data.train.labels).mean()),
        },
        "cache_hits": latents.cache_hits,
    }


def radius_units(lipschitz) -> str:
    if lipschitz:
        return "input space: certify.norm distances in [0, 1] pixel units"
    return "latent space (no certified Lipschitz bound for this encoder)"
