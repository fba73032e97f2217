"""Torch heads equal the estimators they wrap; the smoothed probe stays a sane classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import QUICK

from gmcert.data.digits import build_digits
from gmcert.models.heads import LinearProbeHead, MixtureHead, fit_linear_probe
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.pipeline import run


@pytest.fixture(scope="module")
def digits():
    return build_digits()


@pytest.mark.parametrize("covariance", ["shared", "full", "lowrank"])
def test_mixture_head_predicts_like_the_mixture(digits, covariance):
    mixture = GaussianMixtureClassifier(covariance=covariance).fit(
        digits.train.inputs, digits.train.labels
    )
    scores = MixtureHead(mixture)(torch.from_numpy(digits.test.inputs)).numpy()
    agree = (scores.argmax(1) == mixture.predict(digits.test.inputs)).mean()
    assert agree >= 0.995  # float32 head vs float64 estimator: ties may differ, nothing more


def test_probe_head_is_the_probe_on_raw_latents(digits):
    probe = fit_linear_probe(digits.train.inputs, digits.train.labels, seed=0)
    head = LinearProbeHead(probe)
    X = (digits.test.inputs - probe.mean) / probe.scale
    expected = probe.logistic.decision_function(X)
    got = head(torch.from_numpy(digits.test.inputs)).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    assert (got.argmax(1) == digits.test.labels).mean() > 0.9


@pytest.mark.parametrize(
    "method, extra",
    [
        ("smoothing_probe_clean", []),
        # Trained on one noisy copy of each train point (the default is 4: slower, no wiser).
        ("smoothing_probe", ["certify.noise_copies=1"]),
    ],
    ids=["clean_trained", "noise_trained"],
)
@pytest.mark.e2e
def test_smoothed_probe_keeps_its_accuracy_on_digits(make_cfg, method, extra):
    """Per-feature standardisation once gave near-constant pixels huge weights, and pixel
    noise then made the smoothed probe abstain on most points."""
    metrics = run(
        make_cfg(
            *QUICK,
            f"certify.methods=[{method}]",
            "certify.n=200",
            "certify.n0=20",
            "certify.noise_batch=4000",
            *extra,
        )
    )
    assert metrics["methods"][method]["clean_accuracy"] > 0.8
