"""The write stage: one run's table, plots and metrics.json, each written atomically; a run
whose certificates an attack beat ends here, UNSOUND, after writing everything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gmcert.attack.stage import UnsoundCertificate, unsound_findings
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
    attacks=(),
) -> None:
    """``attacks``: the attack stage's results, one per attacked method (Attacked;
    SmoothedAttacked for smoothing)."""
    write_csv(out_dir / "certified_accuracy.csv", table)
    plot_certified_accuracy(
        predictions,
        table,
        out_dir / "certified_accuracy.png",
        title=title,
        attack_radius={attacked.method: attacked.radius for attacked in attacks} or None,
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
    # Every confirmed flip inside a smoothing radius; UNSOUND only beyond what alpha allows.
    flips = [f for attacked in attacks for f in getattr(attacked, "flips", [])]
    if flips:
        write_json(out_dir / "smoothing_flips.json", flips)
    violations = unsound_findings(attacks)
    if violations:
        write_json(out_dir / "unsound.json", violations)
        where = sorted({f"{v['method']} ({v['norm']}, {v['space']} space)" for v in violations})
        raise UnsoundCertificate(
            f"UNSOUND: an attack changed the prediction strictly inside {len(violations)}"
            f" certified radii of {', '.join(where)}; the points, perturbations and both radii"
            f" are in {out_dir / 'unsound.json'}"
        )


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
