"""End to end: the default pipeline writes every output, resumes, and rejects bad data clearly."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import QUICK

from gmcert.data.digits import build_digits
from gmcert.data.specs import DATASETS
from gmcert.io import PredictionLog
from gmcert.pipeline import run

# The closed-form certificate alone: no eps estimation, no attack stage.
TABLE_COLUMNS = [
    "method",
    "norm",
    "space",
    "radius",
    "certified_accuracy",
    "ci_low",
    "ci_high",
    "n",
    "population_Q",
]


@pytest.mark.e2e
def test_default_run_writes_every_output(make_cfg):
    # The default, lighter: fewer noise draws (more points per noise batch), one noisy copy
    # per train point for the noise-trained heads, a shorter attack.
    cfg = make_cfg(
        "certify.n=200",
        "certify.n0=20",
        "certify.noise_batch=4000",
        "certify.noise_copies=1",
        "attack.steps=10",
        "attack.restarts=1",
    )
    metrics = run(cfg)
    out = cfg.paths.output_dir
    table = pd.read_csv(f"{out}/certified_accuracy.csv")
    assert list(table.columns[: len(TABLE_COLUMNS)]) == TABLE_COLUMNS
    for _, rows in table.groupby("method"):
        assert rows["radius"].tolist() == list(cfg.certify.radii)
        assert rows["certified_accuracy"].is_monotonic_decreasing
    assert (table["ci_low"] <= table["certified_accuracy"]).all()
    assert (table["certified_accuracy"] <= table["ci_high"]).all()
    assert set(table["method"]) == {"closed_form", "smoothing_gmm", "smoothing_probe"}
    assert table.loc[table["method"] == "closed_form", "bound_at_eps"].notna().all()
    preds = pd.read_csv(f"{out}/predictions.csv")
    assert list(preds.columns) == PredictionLog.COLUMNS
    smoothed = preds[preds["method"] != "closed_form"]
    assert smoothed["radius_latent"].isna().all() and (smoothed["radius_input"] >= 0).all()
    preds = preds[preds["method"] == "closed_form"]
    assert len(preds) == 360 and preds["index"].is_unique
    assert (preds["correct"] == (preds["predict"] == preds["label"])).all()
    # Identity encoder: Lipschitz 1, so input radii equal latent radii.
    np.testing.assert_array_equal(preds["radius_input"], preds["radius_latent"])
    written = json.loads(open(f"{out}/metrics.json").read())
    for key in ("methods", "stage_seconds", "throughput", "device", "versions", "git_commit"):
        assert key in written
    assert written["methods"]["smoothing_gmm"]["radius_cap"] > 0
    assert "eps_hat" in written["divergence"] and "verdict" in written["divergence"]
    summary = written["methods"]["closed_form"]
    assert summary["clean_accuracy"] > 0.9
    assert summary["average_certified_radius"] > 0
    assert set(written["stage_seconds"]) == {
        "data",
        "encode",
        "fit",
        "reuse",
        "heads",
        "certify",
        "attack",
        "evaluate",
        "divergence",
    }
    assert metrics["methods"] == written["methods"]
    for plot in ("certified_accuracy.png", "eps_sensitivity.png"):
        with open(f"{out}/{plot}", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # The table agrees with the per-point radii.
    ok = preds["correct"] & (preds["radius_input"] >= 0.25)
    row = table[(table["radius"] == 0.25) & (table["method"] == "closed_form")].iloc[0]
    assert row["certified_accuracy"] == pytest.approx(ok.mean())


@pytest.mark.e2e
def test_rerun_in_same_folder_resumes_without_duplicates(make_cfg):
    cfg = make_cfg(*QUICK, "certify.stop=100")
    run(cfg)
    first = pd.read_csv(f"{cfg.paths.output_dir}/predictions.csv")
    cfg.certify.stop = None  # the same job, extended to every test point
    run(cfg)
    both = pd.read_csv(f"{cfg.paths.output_dir}/predictions.csv")
    assert len(first) == 100 and len(both) == 360 and both["index"].is_unique
    pd.testing.assert_frame_equal(
        both.iloc[:100].drop(columns="seconds"), first.drop(columns="seconds")
    )


@pytest.mark.e2e
def test_folder_of_another_config_is_refused(make_cfg):
    run(make_cfg(*QUICK))
    with pytest.raises(ValueError, match="different configuration"):
        run(make_cfg(*QUICK, "mixture.shrinkage=oas"))


@pytest.mark.e2e
def test_synthetic_encoders_and_pca(make_cfg):
    metrics = run(
        make_cfg(
            *QUICK,
            "dataset=synthetic",
            "dataset.dim=4",
            "encoder=pca",
            "encoder.n_components=3",
        )
    )
    assert metrics["lipschitz"] == pytest.approx(1.0)
    assert metrics["methods"]["closed_form"]["clean_accuracy"] > 0.8


def _patched_digits(monkeypatch, corrupt):
    def build(**options):
        data = build_digits(**options)
        corrupt(data)
        return data

    monkeypatch.setitem(DATASETS, "digits", replace(DATASETS["digits"], build=build))


def test_nan_in_data_is_a_clear_error(make_cfg, monkeypatch):
    def corrupt(data):
        data.train.inputs[5, 3] = np.nan

    _patched_digits(monkeypatch, corrupt)
    with pytest.raises(ValueError, match=r"train split has 1 inputs with NaN.*rows: \[5\]"):
        run(make_cfg("certify=closed_form"))


def test_empty_class_is_a_clear_error(make_cfg, monkeypatch):
    def corrupt(data):
        keep = data.train.labels != 3
        data.train.inputs, data.train.labels = data.train.inputs[keep], data.train.labels[keep]
        data.train.indices = data.train.indices[keep]

    _patched_digits(monkeypatch, corrupt)
    with pytest.raises(ValueError, match=r"classes \[3\] have no samples in the train split"):
        run(make_cfg("certify=closed_form"))


@pytest.mark.e2e
def test_a_second_run_in_a_busy_folder_is_refused(make_cfg, tmp_path):
    import fcntl

    cfg = make_cfg("certify.methods=[closed_form]", "divergence.enabled=false")
    out_dir = tmp_path / "run"
    out_dir.mkdir(parents=True)
    with open(out_dir / ".gmcert.lock", "a+") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="is in use by another gmcert run"):
            run(cfg)
        assert not (out_dir / "predictions.csv").exists()
    run(cfg)  # the other run is gone: this one goes ahead
    assert (out_dir / "predictions.csv").exists()
