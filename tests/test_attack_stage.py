"""The attack stage in a run: empirical robust accuracy beside certified accuracy, tightness,
and the UNSOUND alarm when a certificate claims more than the model delivers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import QUICK

from gmcert.attack.stage import UnsoundCertificate
from gmcert.certify.methods import ClosedForm
from gmcert.cli import run_job
from gmcert.pipeline import run

FAST = (*QUICK, "attack.enabled=true")


def _closed_form_rows(out_dir) -> pd.DataFrame:
    table = pd.read_csv(out_dir / "certified_accuracy.csv")
    return table[table["method"] == "closed_form"]


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("encoder=pca", "encoder.n_components=16", "certify=linf"),
        ("encoder=pca", "encoder.n_components=16", "encoder.whiten=true", "certify.norm=l1"),
        ("mixture=full", "certify.norm=linf", "certify.stop=60"),
    ],
    ids=["identity-l2", "pca-linf", "pca-whiten-l1", "full-linf"],
)
@pytest.mark.e2e
def test_attack_never_beats_a_certificate_and_bounds_accuracy_from_above(make_cfg, overrides):
    cfg = make_cfg(*FAST, *overrides)
    metrics = run(cfg)
    attack = metrics["attack"]
    assert attack["unsound_points"] == 0
    assert attack["points"] == metrics["certified_points"]
    rows = _closed_form_rows(Path(cfg.paths.output_dir))
    assert (rows["empirical_robust_accuracy"] >= rows["certified_accuracy"] - 1e-12).all()
    # At radius 0 both are the clean accuracy.
    first = rows.iloc[0]
    assert first["empirical_robust_accuracy"] == pytest.approx(first["certified_accuracy"])
    if "mixture=full" not in overrides:
        # Linear rules in the input are certified exactly: the attack meets the radius.
        assert attack["tightness_median"] == pytest.approx(1.0, abs=1e-6)
    else:
        assert 0 < attack["tightness_median"] <= 1.0 + 1e-9


@pytest.mark.e2e
def test_attack_skip_attacks_the_points_whose_index_is_a_multiple(make_cfg):
    cfg = make_cfg(*FAST, "attack.skip=4", "certify.stop=101")
    metrics = run(cfg)
    assert metrics["attack"]["points"] == 26  # indices 0, 4, ..., 100
    assert metrics["attack"]["unsound_points"] == 0
    none = make_cfg(*FAST, "attack.skip=200", "certify.start=1", "certify.stop=150")
    none.paths.output_dir += "-none"
    with pytest.raises(ValueError, match="attack.skip=200 leaves no test point"):
        run(none)


@pytest.mark.e2e
def test_an_over_certified_radius_ends_the_run_unsound(make_cfg, monkeypatch, tmp_path):
    honest = ClosedForm.certify

    def inflated(self, positions):
        certified = honest(self, positions)
        return replace(certified, radius_input=certified.radius_input * 1.5)

    monkeypatch.setattr(ClosedForm, "certify", inflated)
    cfg = make_cfg(*FAST, "certify.stop=100")
    with pytest.raises(UnsoundCertificate, match=r"UNSOUND: an attack changed the prediction"):
        run(cfg)
    violations = json.loads((tmp_path / "run" / "unsound.json").read_text())
    assert violations, "the planted over-certification must be caught"
    first = violations[0]
    assert first["attack_radius"] < first["certified_radius"]
    delta = np.asarray(first["perturbation"])
    assert np.linalg.norm(delta) == pytest.approx(first["attack_radius"], rel=1e-9)
    # Everything else was still written before the run ended.
    assert (tmp_path / "run" / "certified_accuracy.csv").exists()


@pytest.mark.e2e
def test_the_command_line_exits_non_zero_with_unsound(make_cfg, monkeypatch, capsys):
    honest = ClosedForm.certify
    monkeypatch.setattr(
        ClosedForm,
        "certify",
        lambda self, p: replace(honest(self, p), radius_input=honest(self, p).radius_input * 2),
    )
    with pytest.raises(SystemExit, match=r"^3$") as exit_info:
        run_job(make_cfg(*FAST, "certify.stop=40"))
    assert exit_info.value.code == 3
    assert "UNSOUND" in capsys.readouterr().err


def test_attack_enabled_rejects_anything_but_true_false_auto(make_cfg):
    with pytest.raises(ValueError, match="attack.enabled must be true, false or auto"):
        run(make_cfg(*QUICK, "attack.enabled=sometimes"))
