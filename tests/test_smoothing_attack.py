"""The attack on smoothed classifiers (gmcert.attack.smoothing): its direction, its PREDICT,
its statistics, and in a run: every smoothing row gets an empirical robust accuracy, a correct
radius is never flagged, a planted wrong one (sigma doubled in the radius) ends the run
UNSOUND with the point and perturbation written."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import QUICK
from scipy import stats
from torch import nn

from gmcert.attack.smoothing import (
    _StraightThrough,
    binomial_allowance,
    flip_p_value,
    soft_smoothed_direction,
)
from gmcert.attack.stage import UnsoundCertificate
from gmcert.certify.methods import Smoothing
from gmcert.certify.smoothing import ABSTAIN, SmoothedClassifier
from gmcert.cli import run_job
from gmcert.denoisers.batched import BatchedDenoiser
from gmcert.pipeline import run

# A quick run of smoothing_gmm alone, attacked.
SMOOTHED = (
    *QUICK,
    "certify.methods=[smoothing_gmm]",
    "certify.stop=40",
    "certify.n=1000",
    "certify.n0=50",
    "certify.population_samples=0",
    "attack.enabled=true",
)


def _linear(weight, bias) -> nn.Module:
    layer = nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight))
        layer.bias.copy_(torch.as_tensor(bias))
    return layer.eval()


def test_the_gradient_direction_on_a_linear_base_is_the_normal_of_its_boundary():
    # Two classes split by w.x + b = 0: the smoothed classifier has that boundary too, and
    # the fastest way down the soft smoothed probability of the class at x is along -w.
    rng = np.random.default_rng(0)
    w = rng.normal(size=8)
    base = _linear(np.stack([w / 2, -w / 2]), np.array([0.1, -0.1]))
    x = torch.as_tensor(rng.normal(size=(5, 8)) * 0.3)
    target = base(x).argmax(dim=1)
    direction = soft_smoothed_direction(
        base,
        x,
        target,
        [11, 12, 13, 14, 15],
        sigma=0.25,
        budget=torch.full((5,), 0.5, dtype=torch.float64),
        steps=5,
        samples=64,
        rows=1000,
    )
    towards = torch.as_tensor(w) * torch.where(target == 0, -1.0, 1.0).double()[:, None]
    cosine = (direction * towards).sum(1) / towards.norm(dim=1)
    assert torch.allclose(direction.norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert (cosine > 0.99).all(), cosine


def test_predict_batch_is_cohen_et_al_predict_with_scipy_binomtest():
    base = _linear(np.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]]), np.zeros(3))
    smoothed = SmoothedClassifier(base, 3, 0.5, batch_size=256)
    # Points from clearly class 0 through the tie to clearly class 1.
    xs = torch.as_tensor(np.linspace(-0.3, 0.3, 13)[:, None] * np.array([1.0, -1.0]))
    seeds = list(range(13))
    got = smoothed.predict_batch(xs, n=400, alpha=0.01, seeds=seeds, stream=7)
    counts = smoothed.sample_counts(xs, 400, seeds=seeds, stream=7).numpy()
    expected = []
    for row in counts:
        order = np.argsort(-row, kind="stable")
        n_a, n_b = row[order[0]], row[order[1]]
        p = stats.binomtest(int(n_a), int(n_a + n_b), 0.5).pvalue
        expected.append(ABSTAIN if p > 0.01 else order[0])
    assert got.tolist() == expected
    assert ABSTAIN in expected and 0 in expected and 1 in expected  # all three outcomes met
    one = smoothed.predict(xs[3], n=400, alpha=0.01, seed=3)
    assert one == smoothed.predict_batch(xs[3:4], n=400, alpha=0.01, seeds=[3])[0]


def test_a_denoiser_without_gradients_is_passed_straight_through():
    denoiser = BatchedDenoiser(nn.Tanh(), name="tanh")  # inference mode: no gradient
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(denoiser(x).sum(), x)
    through = _StraightThrough(denoiser)
    out = through(x)
    assert torch.allclose(out, torch.tanh(x))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.ones_like(x))  # the identity in the backward pass


def test_the_flip_allowance_is_the_binomial_tail_at_level_alpha():
    for points, alpha in [(360, 0.001), (40, 0.001), (1000, 0.01), (0, 0.001)]:
        allowed = binomial_allowance(points, 2 * alpha, alpha)
        assert flip_p_value(allowed, points, 2 * alpha) >= alpha
        if allowed < points:
            assert flip_p_value(allowed + 1, points, 2 * alpha) < alpha
    assert binomial_allowance(360, 0.002, 0.001) == 4  # 5 flips: P = 0.00086 < 0.001


def _table(cfg) -> pd.DataFrame:
    return pd.read_csv(Path(cfg.paths.output_dir) / "certified_accuracy.csv")


@pytest.mark.e2e
def test_a_correct_smoothing_radius_is_attacked_and_never_flagged(make_cfg):
    cfg = make_cfg(*SMOOTHED)
    metrics = run(cfg)
    entry = metrics["attack"]["smoothing"]["smoothing_gmm"]
    assert entry["points"] == 40 and entry["unsound"] is False
    assert entry["confirmed_flips"] <= entry["flips_allowed"]
    assert entry["found"] > 0 and 0 < entry["tightness_median"] <= 1.5
    assert entry["predict_n"] == 1000 and entry["gradient_samples"] == 32
    assert not (Path(cfg.paths.output_dir) / "unsound.json").exists()
    table = _table(cfg)
    rows = table[table["method"] == "smoothing_gmm"]
    assert rows["empirical_robust_accuracy"].notna().all()
    # The attacked column bounds from above: below the certified one only by points whose
    # PREDICT abstained inside their radius (counted as not robust) or flips alpha allows.
    slack = (entry["inside_certified"] + entry["flips_allowed"]) / entry["points"]
    assert (rows["empirical_robust_accuracy"] >= rows["certified_accuracy"] - slack).all()
    assert rows["empirical_robust_accuracy"].iloc[-2] > rows["certified_accuracy"].iloc[-2]


@pytest.mark.e2e
def test_sigma_doubled_in_the_radius_is_caught_and_written(make_cfg, monkeypatch, tmp_path):
    honest = Smoothing.certify

    def doubled(self, positions):  # R = 2 sigma Phi^-1(pA_lower): twice the true radius
        certified = honest(self, positions)
        return replace(certified, radius_input=certified.radius_input * 2)

    monkeypatch.setattr(Smoothing, "certify", doubled)
    cfg = make_cfg(*SMOOTHED)
    with pytest.raises(UnsoundCertificate, match=r"UNSOUND: .*smoothing_gmm \(l2, input space\)"):
        run(cfg)
    out = Path(cfg.paths.output_dir)
    violations = json.loads((out / "unsound.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    entry = metrics["attack"]["smoothing"]["smoothing_gmm"]
    assert len(violations) == entry["confirmed_flips"] > entry["flips_allowed"]
    assert entry["unsound"] is True and entry["flip_p_value"] < 0.001
    first = violations[0]
    assert first["method"] == "smoothing_gmm"
    assert first["attack_radius"] < first["certified_radius"]
    assert first["class_at_perturbation"] != first["certified_class"]
    delta, x = np.asarray(first["perturbation"]), np.asarray(first["input"])
    assert np.linalg.norm(delta) == pytest.approx(first["attack_radius"], rel=1e-9)
    assert x.shape == delta.shape == (64,)
    assert json.loads((out / "smoothing_flips.json").read_text()) == violations


@pytest.mark.e2e
def test_smoothing_attack_options_are_checked_and_can_be_turned_off(make_cfg, capsys):
    with pytest.raises(ValueError, match="attack.smoothing_samples"):
        run(make_cfg(*SMOOTHED, "attack.smoothing_samples=0"))
    cfg = make_cfg(*SMOOTHED, "attack.smoothing=false")
    cfg.paths.output_dir += "-off"
    metrics = run(cfg)
    assert metrics["attack"] is None  # nothing else in certify.methods to attack
    assert "empirical_robust_accuracy" not in _table(cfg)
    both = make_cfg(
        *SMOOTHED, "certify.methods=[closed_form,smoothing_gmm]", "attack.smoothing=false"
    )
    both.paths.output_dir += "-closed-form-only"
    metrics = run_job(both)
    assert metrics["attack"]["method"] == "closed_form" and metrics["attack"]["smoothing"] == {}
    table = _table(both).set_index("method")
    assert table.loc["closed_form", "empirical_robust_accuracy"].notna().all()
    assert table.loc["smoothing_gmm", "empirical_robust_accuracy"].isna().all()
    assert "closed_form points attacked" in capsys.readouterr().out


def test_a_base_without_input_gradients_is_refused_in_one_line():
    class Frozen(nn.Module):
        def forward(self, x):
            with torch.no_grad():
                return torch.stack([x.sum(1), -x.sum(1)], dim=1)

    with pytest.raises(ValueError, match="attack.smoothing=false"):
        soft_smoothed_direction(
            Frozen().eval(),
            torch.zeros(2, 3),
            torch.zeros(2, dtype=torch.long),
            [1, 2],
            sigma=0.5,
            budget=torch.ones(2),
            steps=1,
            samples=4,
            rows=100,
        )


@pytest.mark.e2e
def test_denoised_and_clean_smoothing_are_attacked_too(make_cfg):
    cfg = make_cfg(
        *SMOOTHED,
        "certify.methods=[smoothing_probe_clean]",
        "certify.stop=12",
        "certify.n=300",
        "denoiser=custom",
        "denoiser.builder=torch.nn:Tanh",  # a denoiser that changes the input, no gradient
    )
    entry = run(cfg)["attack"]["smoothing"]["smoothing_probe_clean"]
    assert entry["points"] == 12 and entry["found"] > 0
    assert "denoiser as the identity" in entry["attack"]
    assert _table(cfg)["empirical_robust_accuracy"].notna().all()
