"""Input-space certificates are sound in every norm, through every encoder with a bound, at
every scale: an attack in input space (gmcert.attack, which shares no code with the
certifiers) never changes the prediction strictly inside a certified input radius.

These are the three failure classes an audit found: a linf / l1 radius obtained by dividing by
an l2 Lipschitz bound, float32 rounding of a linear encoder, and predictions that disagreed
with the certificate at tiny scales."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gmcert.attack import minimum_norm_attack
from gmcert.certify.methods import CertifyInputs, ClosedForm
from gmcert.certify.transfer import radius_transfer
from gmcert.data import LabelledData
from gmcert.data.digits import build_digits
from gmcert.data.synthetic import build_synthetic
from gmcert.encoders import build_encoder
from gmcert.models.heads import MixtureHead
from gmcert.models.mixture import GaussianMixtureClassifier

POINTS = 60
ENCODERS = {
    "identity": {},
    "pca": {"n_components": 12, "whiten": False},
    "pca-whiten": {"n_components": 12, "whiten": True},
}


def _scaled(data: LabelledData, scale: float) -> LabelledData:
    return LabelledData.from_arrays(
        data.name,
        data.train.inputs.astype(np.float64) * scale,
        data.train.labels,
        data.test.inputs.astype(np.float64) * scale,
        data.test.labels,
        data.num_classes,
    )


@pytest.fixture(scope="module")
def datasets():
    return {
        "digits": build_digits(),
        "synthetic": build_synthetic(num_classes=3, dim=16, separation=3.0, n_train=600),
    }


def _certified_and_attacked(data, encoder_name, norm, covariance):
    name = "pca" if encoder_name.startswith("pca") else encoder_name
    encoder = build_encoder(name, **ENCODERS[encoder_name]).fit(data.train.inputs)
    latents = lambda x: encoder(torch.as_tensor(x, dtype=torch.float64)).double().numpy()  # noqa: E731
    mixture = GaussianMixtureClassifier(covariance=covariance, reg_covar=1e-12).fit(
        latents(data.train.inputs), data.train.labels
    )
    options = OmegaConf.create({"norm": norm, "batch_size": 4096, "dtype": "float64"})
    inputs = CertifyInputs(
        mixture=mixture,
        encoder=encoder,
        data=data,
        train_latents=latents(data.train.inputs),
        test_latents=latents(data.test.inputs),
        device=torch.device("cpu"),
        options=options,
        seed=0,
        transfer=radius_transfer(encoder, norm, data.test.input_dim),
    )
    method = ClosedForm(inputs)
    positions = np.arange(POINTS)
    certified = method.certify(positions)
    model = torch.nn.Sequential(encoder, MixtureHead(mixture, dtype=torch.float64)).eval()
    x = torch.as_tensor(data.test.inputs[positions], dtype=torch.float64)
    attack = minimum_norm_attack(model, x, norm=norm, steps=30, restarts=1)
    return method, certified, attack, model, x


# Every combination runs in `make test-full`; these cover each axis in the fast suite.
FAST_CASES = {
    ("digits", "pca", "linf", 1.0),
    ("digits", "pca-whiten", "l1", 1e-6),
    ("digits", "identity", "l2", 1e6),
    ("synthetic", "pca-whiten", "linf", 1e6),
    ("synthetic", "pca", "l2", 1e-6),
}
CASES = [
    pytest.param(*case, marks=() if case in FAST_CASES else pytest.mark.slow)
    for case in (
        (dataset, encoder, norm, scale)
        for dataset in ("digits", "synthetic")
        for encoder in ENCODERS
        for norm in ("l2", "linf", "l1")
        for scale in (1e-6, 1.0, 1e6)
    )
]


@pytest.mark.parametrize(("dataset", "encoder_name", "norm", "scale"), CASES)
def test_no_attack_inside_a_certified_input_radius(datasets, dataset, encoder_name, norm, scale):
    data = _scaled(datasets[dataset], scale)
    method, certified, attack, model, x = _certified_and_attacked(
        data, encoder_name, norm, "shared"
    )
    assert method.space == "input" and method.exact
    # The certified prediction is the model's prediction.
    assert np.array_equal(certified.predict, model(x).argmax(1).numpy())  # classes are 0..K-1
    radius = certified.radius_input
    assert np.all(attack.radius >= radius * (1 - 1e-6)), "an attack beat a certificate"
    # Exact certificates: the attack meets them (so this test would see an inflated radius).
    found = np.isfinite(attack.radius)
    assert np.median(attack.radius[found] / radius[found]) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_quadratic_heads_through_pca_are_sound_lower_bounds(datasets, norm):
    data = _scaled(datasets["synthetic"], 1.0)
    method, certified, attack, _, _ = _certified_and_attacked(data, "pca", norm, "full")
    assert method.space == "input" and not method.exact
    assert np.all(attack.radius >= certified.radius_input * (1 - 1e-6))
    assert np.all(certified.radius_input > 0)


@pytest.fixture(scope="module")
def conv_digits():
    """Digits as 3 x 8 x 8 images through a random ResNet-18 with its spectral l2 bound."""
    digits = build_digits()

    def images(x):
        return np.repeat(x.reshape(-1, 1, 8, 8), 3, axis=1)

    data = LabelledData.from_arrays(
        "digits",
        images(digits.train.inputs),
        digits.train.labels,
        images(digits.test.inputs),
        digits.test.labels,
        10,
    )
    encoder = build_encoder(
        "resnet18", weights="random", lipschitz="spectral", image_size=32, source_size=(8, 8)
    )
    return data, encoder


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_a_conv_net_with_a_spectral_bound_is_sound_in_every_norm(conv_digits, norm):
    data, encoder = conv_digits
    with torch.inference_mode():
        z_train = encoder(torch.as_tensor(data.train.inputs)).double().numpy()
        z_test = encoder(torch.as_tensor(data.test.inputs[:6])).double().numpy()
    mixture = GaussianMixtureClassifier(covariance="shared").fit(z_train, data.train.labels)
    inputs = CertifyInputs(
        mixture=mixture,
        encoder=encoder,
        data=data,
        train_latents=z_train,
        test_latents=z_test,
        device=torch.device("cpu"),
        options=OmegaConf.create({"norm": norm, "batch_size": 4096, "dtype": "float64"}),
        seed=0,
        transfer=radius_transfer(encoder, norm, data.test.input_dim),
    )
    method = ClosedForm(inputs)
    assert method.space == "input" and not method.exact
    certified = method.certify(np.arange(6))
    model = torch.nn.Sequential(encoder, MixtureHead(mixture, dtype=torch.float64)).eval()
    x = torch.as_tensor(data.test.inputs[:6], dtype=torch.float64)
    attack = minimum_norm_attack(
        model, x, norm=norm, steps=10, restarts=0, targeted=1, candidates=3, batch_size=6
    )
    assert np.all(certified.radius_input > 0)
    assert np.all(attack.radius >= certified.radius_input * (1 - 1e-6))
