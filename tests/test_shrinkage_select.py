"""mixture.shrinkage=select: the intensity with the best held-out certified accuracy at the
stated radius, checked against a brute-force loop that refits every candidate from scratch."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from gmcert.certify.latent import certify_latents
from gmcert.certify.linear import LinearCertifier
from gmcert.data import build_dataset
from gmcert.fit import SELECT_GRID, heldout_certified_accuracy, select_shrinkage
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.pipeline import run


@pytest.fixture(scope="module")
def digits():
    data = build_dataset("digits")
    return data.train.inputs.reshape(len(data.train.inputs), -1), data.train.labels


def brute_force(Z, y, radius):
    fit, val = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    scores = []
    for a in SELECT_GRID:
        mixture = GaussianMixtureClassifier(covariance="shared", shrinkage=a).fit(Z[fit], y[fit])
        codes, radii = certify_latents(
            LinearCertifier(*mixture.linear_head()), Z[val], batch_size=4096
        )
        scores.append(np.mean((mixture.classes_[codes] == y[val]) & (radii >= radius)))
    return np.array(scores)


@pytest.mark.parametrize("radius", [0.0, 0.25, 0.5])
def test_scores_and_choice_match_brute_force(digits, radius):
    Z, y = digits
    mixture = GaussianMixtureClassifier(covariance="shared")
    scores = heldout_certified_accuracy(
        mixture, Z, y, param="shrinkage", grid=SELECT_GRID, radius=radius,
        holdout_fraction=0.2, seed=0,
    )  # fmt: skip
    expected = brute_force(Z, y, radius)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)
    chosen = select_shrinkage(mixture, Z, y, radius=radius, holdout_fraction=0.2, seed=0)
    assert chosen == SELECT_GRID[int(np.argmax(expected))]  # ties: the smaller intensity


def test_radius_changes_the_choice(digits):
    """Certified accuracy at a larger radius asks for more shrinkage than accuracy alone."""
    Z, y = digits
    mixture = GaussianMixtureClassifier(covariance="shared")
    at = {
        r: select_shrinkage(mixture, Z, y, radius=r, holdout_fraction=0.2, seed=0) for r in (0, 0.5)
    }
    assert at[0.5] > at[0]


def test_moments_of_other_data_are_refused(digits):
    Z, y = digits
    mixture = GaussianMixtureClassifier(covariance="shared", shrinkage=0.1)
    moments = mixture.class_moments(Z[:, :10], y)
    with pytest.raises(ValueError, match="other data"):
        mixture.fit(Z, y, moments=moments)


@pytest.mark.e2e
def test_a_run_records_the_chosen_intensity(make_cfg):
    cfg = make_cfg(
        "mixture.shrinkage=select",
        "mixture.select_radius=0.25",
        "certify=closed_form",
        "attack=none",
        "certify.population_samples=0",
    )
    metrics = run(cfg)
    assert metrics["mixture"]["shrinkage"] in SELECT_GRID
    with pytest.raises(ValueError, match="select_radius"):
        run(make_cfg("mixture.shrinkage=select", "mixture=full"))
