"""encoder=lipschitz architecture=conv: convolution blocks whose norm is capped while training;
the bound of the frozen network (exact convolution norms) must hold against random pairs and
an attack on the stretch ratio, and the layers it relies on must be what they claim."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import largest_stretch, write_idx
from torch.nn.utils import parametrize

from gmcert.encoders.lipschitz import LipschitzEncoder
from gmcert.encoders.lipschitz_layers import ChannelGroupSort, normalized_conv
from gmcert.encoders.spectral import conv2d_norm_bound
from gmcert.pipeline import run

CONV = dict(
    architecture="conv",
    channels=[4, 8, 4],
    width=16,
    latent_dim=4,
    epochs=3,
    train_batch_size=32,
    margin=0.5,
    progress=False,
)


def images(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.uniform(0, 0.3, (n, 1, 8, 8))
    for i, k in enumerate(y):
        x[i, 0, 2 * k : 2 * k + 3] += 0.6
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def fitted():
    x, y = images()
    return LipschitzEncoder(**CONV).fit(x, y), x


def test_capped_convolution_keeps_its_operator_norm_at_most_one():
    torch.manual_seed(0)
    conv = normalized_conv(3, 6, (10, 10))
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(5.0)  # far above 1 before the cap
    weight = conv.weight.detach()
    assert conv2d_norm_bound(weight, (10, 10), padding=1) <= 1 + 3e-4  # bound within 1e-4
    parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    assert isinstance(conv, torch.nn.Conv2d) and torch.equal(conv.weight, weight)


def test_channel_group_sort_permutes_channels_at_each_pixel():
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    y = ChannelGroupSort(2)(x)
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1))
    pairs = y.reshape(2, 3, 2, 3, 3)
    assert (pairs[:, :, 0] >= pairs[:, :, 1]).all()
    with pytest.raises(ValueError, match="divisible by 2"):
        ChannelGroupSort(2)(torch.zeros(1, 3, 2, 2))


def test_bound_is_near_one_and_never_beaten(fitted):
    encoder, x = fitted
    assert 1.0 <= encoder.lipschitz < 1.01
    best = largest_stretch(encoder, x[:32], noise=0.1)
    assert 0 < best <= encoder.lipschitz


def test_cached_weights_give_the_same_encoder(tmp_path):
    x, y = images()
    first = LipschitzEncoder(**CONV, cache_dir=tmp_path).fit(x, y)
    again = LipschitzEncoder(**CONV, cache_dir=tmp_path).fit(x, y)
    assert again.training_seconds is None
    xt = torch.as_tensor(x)
    assert torch.equal(first(xt), again(xt)) and first.lipschitz == again.lipschitz


@pytest.mark.parametrize(
    ("options", "inputs", "message"),
    [
        ({}, np.zeros((8, 64), np.float32), "needs images"),
        ({}, np.zeros((8, 1, 6, 6), np.float32), "divisible by 4"),
        ({"channels": [3]}, np.zeros((8, 1, 8, 8), np.float32), "multiples of encoder.group_size"),
        ({"architecture": "resnet"}, None, "mlp or conv"),
    ],
)
def test_bad_inputs_and_options_are_refused(options, inputs, message):
    with pytest.raises(ValueError, match=message):
        encoder = LipschitzEncoder(**{**CONV, **options})
        encoder.fit(inputs, np.zeros(len(inputs), np.int64))


@pytest.mark.parametrize(
    "norm",
    [
        "l2",
        pytest.param("linf", marks=pytest.mark.slow),
        pytest.param("l1", marks=pytest.mark.slow),
    ],
)
# Trains a conv Lipschitz encoder in the run: 41, 64 and 104 CPU s in three measurements on
# 2 shared cores (the last inside the whole fast suite), so more than the default budget.
@pytest.mark.e2e(budget=300)
def test_pipeline_certificates_survive_the_attack_in_every_norm(make_cfg, tmp_path, norm):
    """A whole run on fake IDX images: the run's own input-space attack (every point) never
    gets inside a certified radius in l2, linf or l1."""
    write_idx(tmp_path / "idx")
    cfg = make_cfg(
        "dataset=fashion_mnist",
        f"dataset.root={tmp_path / 'idx'}",
        "dataset.fallback_roots=[]",
        "encoder=lipschitz",
        "encoder.architecture=conv",
        "encoder.channels=[4,8,4]",
        "encoder.width=16",
        "encoder.latent_dim=4",
        "encoder.epochs=3",
        "encoder.train_batch_size=50",
        "encoder.margin=0.5",
        "certify=closed_form",
        f"certify.norm={norm}",
        "attack.steps=20",
        "attack.restarts=1",
        "divergence.enabled=false",
        "certify.population_samples=0",
    )
    metrics = run(cfg)
    assert metrics["attack"]["unsound_points"] == 0
    assert metrics["attack"]["found"] > 0  # the attack did find class changes, outside
    preds = pd.read_csv(f"{cfg.paths.output_dir}/predictions.csv")
    assert (preds["radius_input"] > 0).mean() > 0.3
