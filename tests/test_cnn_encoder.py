"""encoder=cnn: the ordinary CNN gmcert trains with cross-entropy, then freezes.

What must hold: training is reproducible and cached by content; the frozen encoder's
``lipschitz`` is a true upper bound (no pair of inputs, random or optimised to stretch the
map, beats it); bad inputs are refused with a message; the encoder runs through the pipeline
with input-space radii.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config, largest_stretch, write_idx

from gmcert.encoders import ENCODERS, TrainedCNNEncoder, build_encoder
from gmcert.encoders.cnn import build_network
from gmcert.pipeline import run

TINY = {
    "channels": [4, 8],
    "latent_dim": 16,
    "epochs": 2,
    "train_batch_size": 32,
    "progress": False,
}


def images(n=120, side=8, seed=0):
    """Two classes a CNN can tell apart: a bright left half or a bright right half."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.uniform(0, 0.3, (n, 1, side, side)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 0, :, : side // 2] += 0.6 * (label == 0)
        x[i, 0, :, side // 2 :] += 0.6 * (label == 1)
    return x, y


def test_network_shapes():
    net = build_network((3, 16, 12), (4, 8), 10)
    assert net(torch.zeros(2, 3, 16, 12)).shape == (2, 10)


def test_fit_learns_and_the_latents_are_post_relu():
    x, y = images()
    enc = TrainedCNNEncoder(**{**TINY, "epochs": 15}, lr=0.01).fit(x, y)
    z = enc(torch.as_tensor(x)).numpy()
    assert z.shape == (len(x), 16) and z.dtype == np.float64
    assert (z >= 0).all()
    assert enc.train_accuracy > 0.9
    assert enc.training_seconds > 0
    assert np.isfinite(enc.lipschitz) and enc.lipschitz > 0


def test_training_is_reproducible_and_cached(tmp_path):
    x, y = images()
    first = TrainedCNNEncoder(**TINY, cache_dir=tmp_path).fit(x, y)
    again = TrainedCNNEncoder(**TINY).fit(x, y)  # no cache: trains afresh, same seed
    cached = TrainedCNNEncoder(**TINY, cache_dir=tmp_path).fit(x, y)
    assert cached.training_seconds is None  # loaded, not trained
    xt = torch.as_tensor(x)
    for other in (again, cached):
        assert torch.equal(first(xt), other(xt))
        assert other.lipschitz == first.lipschitz
    reseeded = TrainedCNNEncoder(**{**TINY, "seed": 1}, cache_dir=tmp_path).fit(x, y)
    assert reseeded.weights_source != first.weights_source
    assert not torch.equal(first(xt), reseeded(xt))


def test_lipschitz_bound_is_not_beaten():
    """Random pairs, then pairs optimised by gradient ascent on the stretch ratio."""
    x, y = images()
    enc = TrainedCNNEncoder(**TINY, lr=0.01).fit(x, y)
    best = largest_stretch(enc, x[:32], noise=0.05)
    assert 0 < best <= enc.lipschitz
    # The bound is a bound, not a wild overestimate of this small network's stretch.
    assert enc.lipschitz < 1000 * best


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (np.zeros((10, 64), np.float32), "in-memory images"),
        (np.zeros((10, 1, 6, 6), np.float32), "not divisible by 4"),
    ],
)
def test_bad_inputs_are_refused(inputs, message):
    with pytest.raises(ValueError, match=message):
        TrainedCNNEncoder(**TINY).fit(inputs, np.zeros(len(inputs), np.int64))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"channels": []}, "at least one conv block"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"lr": 0}, "lr"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        TrainedCNNEncoder(**{**TINY, **options})


def test_registered_and_composed(tmp_path):
    assert ENCODERS["cnn"].trained
    assert isinstance(build_encoder("cnn", **TINY), TrainedCNNEncoder)
    cfg = compose_config(tmp_path, ["encoder=cnn", "seed=5"])
    assert cfg.encoder.name == "cnn" and cfg.encoder.seed == 5
    assert list(cfg.encoder.channels) == [32, 64]


@pytest.mark.e2e
def test_pipeline_certifies_input_radii_through_the_bound(make_cfg, tmp_path):
    """A whole run on fake IDX files: input radii are latent radii over the spectral bound,
    and the run's own attack (every certified point, in input space) never beats one."""
    write_idx(tmp_path / "idx")
    cfg = make_cfg(
        "dataset=fashion_mnist",
        f"dataset.root={tmp_path / 'idx'}",
        "dataset.fallback_roots=[]",
        "encoder=cnn",
        "encoder.channels=[4,8]",
        "encoder.latent_dim=16",
        "encoder.epochs=2",
        "certify=closed_form",
        "certify.radii=[0.0,0.001,0.01]",
        "attack.steps=20",
        "attack.restarts=1",
        "divergence.enabled=false",
        "certify.population_samples=0",
    )
    metrics = run(cfg)
    assert metrics["attack"]["unsound_points"] == 0
    assert metrics["lipschitz"] > 1
    preds = pd.read_csv(f"{cfg.paths.output_dir}/predictions.csv")
    np.testing.assert_allclose(
        preds["radius_input"], preds["radius_latent"] / metrics["lipschitz"], rtol=1e-12
    )
    assert (preds["radius_input"] > 0).mean() > 0.5
    table = pd.read_csv(f"{cfg.paths.output_dir}/certified_accuracy.csv")
    assert (table["space"] == "input").all()


@pytest.mark.parametrize("norm", ["linf", "l1"])
@pytest.mark.e2e
def test_pipeline_certificates_survive_the_attack_in_linf_and_l1(make_cfg, tmp_path, norm):
    write_idx(tmp_path / "idx")
    cfg = make_cfg(
        "dataset=fashion_mnist",
        f"dataset.root={tmp_path / 'idx'}",
        "dataset.fallback_roots=[]",
        "encoder=cnn",
        "encoder.channels=[4,8]",
        "encoder.latent_dim=16",
        "encoder.epochs=2",
        "certify=closed_form",
        f"certify.norm={norm}",
        "attack.steps=20",
        "attack.restarts=1",
        "divergence.enabled=false",
        "certify.population_samples=0",
    )
    metrics = run(cfg)
    assert metrics["attack"]["unsound_points"] == 0
    assert metrics["attack"]["found"] > 0
    preds = pd.read_csv(f"{cfg.paths.output_dir}/predictions.csv")
    assert (preds["radius_input"] > 0).mean() > 0.5
