"""CA under Q: the two-class closed form against certification of samples from Q."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gmcert.certify.latent import certify_latents
from gmcert.certify.linear import LinearCertifier
from gmcert.gaussian import sample_gaussian_mixture
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.population.accuracy import population_certified_accuracy, two_class_certified_accuracy


def bayes_head(means, cov):
    """The exact Bayes rule of an equal-prior shared-covariance mixture, as (M, c)."""
    P = np.linalg.inv(cov)
    M = means @ P
    return M, -0.5 * np.einsum("kd,kd->k", M, means)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_closed_form_matches_200k_samples(norm):
    # One fixed draw: a correct formula lands within 3 SE with probability ~0.997 per radius.
    rng = np.random.default_rng(2024)
    dim = 5
    A = rng.standard_normal((dim, dim))
    cov = A @ A.T / dim + 0.5 * np.eye(dim)
    means = rng.standard_normal((2, dim))
    radii = np.array([0.0, 0.1, 0.3, 0.6, 1.0])
    predicted = two_class_certified_accuracy(means[0], means[1], cov, radii, norm=norm)

    Z, y = sample_gaussian_mixture(200_000, means, cov, [0.5, 0.5], rng)
    M, c = bayes_head(means, cov)
    codes, radius = certify_latents(LinearCertifier(M, c, norm=norm), Z, batch_size=65536)
    measured = ((codes == y)[None, :] & (radius[None, :] >= radii[:, None])).mean(axis=1)
    se = np.sqrt(predicted * (1 - predicted) / len(y))
    assert np.all(np.abs(measured - predicted) <= 3 * se + 1e-12), (measured, predicted, se)


def test_monte_carlo_population_agrees_with_closed_form():
    """The pipeline's Monte Carlo CA_Q, on a fitted mixture with equal priors, matches Phi(.)."""
    rng = np.random.default_rng(1)
    means = np.array([[1.0, 0.0, 0.0], [-1.0, 0.5, 0.0]])
    cov = np.diag([1.0, 0.5, 2.0])
    Z, y = sample_gaussian_mixture(4000, means, cov, [0.5, 0.5], rng)
    mixture = GaussianMixtureClassifier(shrinkage="none", priors="uniform").fit(Z, y)
    M, c = mixture.linear_head()
    radii = np.array([0.0, 0.2, 0.5])
    mc = population_certified_accuracy(
        mixture, LinearCertifier(M, c), radii, samples=100_000, alpha=0.001, seed=0
    )
    exact = two_class_certified_accuracy(
        mixture.means_[0], mixture.means_[1], mixture.covariances_, radii
    )
    assert np.all(mc["ci_low"] <= exact) and np.all(exact <= mc["ci_high"])


def test_isotropic_closed_form_is_phi_of_margin():
    mu = np.array([1.5, 0.0])
    ca = two_class_certified_accuracy(-mu, mu, np.eye(2), [0.0, 0.5])
    np.testing.assert_allclose(ca, stats.norm.cdf(np.linalg.norm(mu) - np.array([0.0, 0.5])))
