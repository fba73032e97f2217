"""encoder=lipschitz through whole runs: input radii are latent radii over the bound, the
run's own attack and an independent PGD never beat a certificate, and (slow) the digits
experiment meets its targets, with smoothing on top as well."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from gmcert.data import build_dataset
from gmcert.encoders import build_encoder
from gmcert.features import extract_features
from gmcert.models.heads import MixtureHead
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.pipeline import run

SMALL = [
    "dataset=synthetic",
    "dataset.num_classes=3",
    "dataset.dim=8",
    "dataset.separation=4.0",
    "dataset.n_train=240",
    "dataset.n_test=60",
    "encoder=lipschitz",
    "encoder.latent_dim=4",
    "encoder.width=16",
    "encoder.epochs=20",
    "encoder.train_batch_size=80",
    "encoder.margin=0.5",
    "certify=closed_form",
    "attack.steps=20",
    "attack.restarts=1",
    "divergence.enabled=false",
]


def _pgd_flips(model, x, radius, *, steps=60, seed=0) -> np.ndarray:
    """Projected gradient ascent on (best rival score - own score) inside each l2 ball
    ``radius`` (per row) around x; True where some iterate changed the prediction."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        label = model(x).argmax(1)
    r = torch.as_tensor(radius, dtype=x.dtype)[:, None]
    delta = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    delta = delta / delta.norm(dim=1, keepdim=True) * r * 0.5
    flipped = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        delta.requires_grad_(True)
        scores = model(x + delta)
        own = scores.gather(1, label[:, None])[:, 0]
        rival = scores.scatter(1, label[:, None], -torch.inf).max(1).values
        (grad,) = torch.autograd.grad((rival - own).sum(), delta)
        with torch.no_grad():
            flipped |= scores.argmax(1) != label
            step = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
            delta = delta + 2.5 * r / steps * step
            delta = delta * torch.clamp(r / delta.norm(dim=1, keepdim=True).clamp_min(1e-30), max=1)
    with torch.no_grad():
        flipped |= model(x + delta).argmax(1) != label
    return flipped.numpy()


def _rebuild(cfg):
    """The run's data, encoder (weights from the run's cache) and mixture, rebuilt."""
    options = OmegaConf.to_container(cfg.dataset, resolve=True)
    data = build_dataset(options.pop("name"), **options)
    options = OmegaConf.to_container(cfg.encoder, resolve=True)
    encoder = build_encoder(options.pop("name"), **options, cache_dir=cfg.paths.cache_dir)
    encoder.fit(data.train.inputs, data.train.labels)
    assert encoder.training_seconds is None  # the run's weights, from the cache
    z = extract_features(encoder, data.train.inputs, device=torch.device("cpu"))
    mixture = GaussianMixtureClassifier(covariance="shared").fit(z, data.train.labels)
    return data, encoder, mixture


def test_pgd_never_beats_a_certified_input_radius(one_thread):
    # No pipeline: a tiny trained encoder, the shared-covariance head, the closed-form
    # certificate in latent l2 divided by the bound, and our own attack in input space.
    from gmcert.certify.latent import certify_latents, latent_certifier

    data = build_dataset("synthetic", num_classes=3, dim=8, separation=4.0, n_train=240, n_test=60)
    encoder = build_encoder(
        "lipschitz",
        latent_dim=4,
        width=16,
        epochs=20,
        train_batch_size=80,
        margin=0.5,
        progress=False,
    )
    encoder.fit(data.train.inputs, data.train.labels)
    cpu = torch.device("cpu")
    z_train = extract_features(encoder, data.train.inputs, device=cpu)
    z_test = extract_features(encoder, data.test.inputs, device=cpu)
    mixture = GaussianMixtureClassifier(covariance="shared").fit(z_train, data.train.labels)
    certifier = latent_certifier(mixture, norm="l2", device=cpu, dtype=torch.float64)
    _, latent_radius = certify_latents(certifier, z_test.astype(np.float64), batch_size=512)
    radius = latent_radius / encoder.lipschitz
    keep = radius > 0
    assert keep.mean() > 0.5
    model = torch.nn.Sequential(encoder.double(), MixtureHead(mixture, dtype=torch.float64))
    x = torch.as_tensor(data.test.inputs[keep], dtype=torch.float64)
    assert not _pgd_flips(model, x, radius[keep] * (1 - 1e-6)).any()
    assert _pgd_flips(model, x, 3 * radius[keep]).any()  # the search has teeth


@pytest.mark.parametrize(
    "norm",
    [
        "l2",
        pytest.param("linf", marks=pytest.mark.slow),
        pytest.param("l1", marks=pytest.mark.slow),
    ],
)
@pytest.mark.e2e
def test_small_radii_survive_the_attack_on_digits(make_cfg, norm):
    """A barely trained encoder leaves radii near 0.02, where float32 latents put certificates
    1e-6 (relative) beyond the classifier the attack evaluates: the encoder and its stored
    latents are float64, so that the certificate is exact for the classifier as computed."""
    cfg = make_cfg(
        "experiment=digits_lipschitz",
        "encoder.epochs=3",
        "encoder.width=32",
        f"certify.norm={norm}",
        "divergence.enabled=false",
        "certify.population_samples=0",
    )
    metrics = run(cfg)
    assert metrics["attack"]["unsound_points"] == 0
    preds = pd.read_csv(f"{cfg.paths.output_dir}/predictions.csv")
    assert (preds["radius_input"].between(1e-3, 0.05)).sum() >= 5  # small radii were tested


@pytest.mark.slow
@pytest.mark.e2e
def test_small_run_certifies_in_input_space_and_survives_attacks(make_cfg):
    cfg = make_cfg(*SMALL)
    metrics = run(cfg)
    assert metrics["attack"]["unsound_points"] == 0
    preds = pd.read_csv(f"{cfg.paths.output_dir}/predictions.csv")
    data, encoder, mixture = _rebuild(cfg)
    assert 1 <= encoder.lipschitz < 1 + 1e-5
    np.testing.assert_allclose(
        preds["radius_input"], preds["radius_latent"] / encoder.lipschitz, rtol=1e-12
    )
    assert metrics["methods"]["closed_form"]["clean_accuracy"] > 0.8
    certified = preds[(preds["predict"] >= 0) & (preds["radius_input"] > 0)]
    assert len(certified) > 0.5 * len(preds)
    # An attack of our own, in input space, just inside each certified radius.
    model = torch.nn.Sequential(encoder.double(), MixtureHead(mixture, dtype=torch.float64))
    x = torch.as_tensor(data.test.inputs[certified["index"].to_numpy()], dtype=torch.float64)
    radius = certified["radius_input"].to_numpy() * (1 - 1e-6)
    assert not _pgd_flips(model, x, radius).any()
    # ... while at three times the radius it does find changes: the search has teeth.
    assert _pgd_flips(model, x, 3 * radius).any()


@pytest.mark.slow
@pytest.mark.e2e
def test_digits_lipschitz_experiment_meets_its_targets(make_cfg):
    cfg = make_cfg("experiment=digits_lipschitz")
    metrics = run(cfg)
    table = pd.read_csv(f"{cfg.paths.output_dir}/certified_accuracy.csv")
    rows = table[table["method"] == "closed_form"].set_index("radius")
    ca = rows["certified_accuracy"]
    assert ca[0.0] >= 0.93 and ca[0.5] >= 0.55 and ca[0.75] >= 0.25
    assert metrics["attack"]["unsound_points"] == 0
    assert (rows["space"] == "input").all()
    # eps from the most pessimistic estimator still leaves a non-vacuous bound at radius 0,
    # and the measured accuracy sits above it everywhere.
    divergence = metrics["divergence"]
    assert divergence["eps_used"] == divergence["eps_hat"]
    assert rows.loc[0.0, "bound_at_eps"] > 0
    assert rows["above_bound"].all()


@pytest.mark.slow
@pytest.mark.e2e
def test_smoothing_on_top_of_the_lipschitz_encoder(make_cfg):
    cfg = make_cfg(
        "experiment=digits_lipschitz",
        "certify=smoothing",
        "certify.n=200",
        "certify.n0=20",
        "certify.noise_copies=1",
        "certify.stop=60",
        "attack.enabled=false",
        "divergence.enabled=false",
    )
    metrics = run(cfg)
    for method in ("closed_form", "smoothing_gmm", "smoothing_probe"):
        assert metrics["methods"][method]["clean_accuracy"] > 0.5, method
