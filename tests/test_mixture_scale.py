"""`GaussianMixtureClassifier.predict` is the certified rule at every latent scale.

The joint log-likelihoods add terms common to all classes (-1/2 z' P z, -1/2 log det Sigma,
the Gaussian normaliser) whose rounding, at small latent scales, exceeds the differences
between classes; ``predict`` compares the centred scores the certifiers use instead. The
reference here is the certifiers themselves (`LinearCertifier`, `QuadraticCertifier`), on test
points and on points placed within 1e-9 (relative) of a decision boundary by bisection.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from gmcert.certify.linear import LinearCertifier
from gmcert.certify.quadratic import QuadraticCertifier
from gmcert.data.digits import build_digits
from gmcert.models.mixture import GaussianMixtureClassifier

SCALES = (1e-8, 1e-6, 1.0, 1e6)
BOUNDARY_STEPS = 30  # bisection of [0, 1]: 2^-30 < 1e-9 of the segment's length


@pytest.fixture(scope="module")
def digits():
    return build_digits()


def certifier_predict(mixture):
    """Class codes of the certified rule: the certifier's own prediction."""
    if mixture.is_linear_:
        M, c = mixture.linear_head()
        certifier = LinearCertifier(M, c)
        return lambda Z: certifier.certify(torch.from_numpy(Z))[0].numpy()
    certifier = QuadraticCertifier(mixture.means_, mixture.class_precisions(), mixture.log_weights_)
    # certify() returns the same predictions, plus radii that are not needed here.
    return lambda Z: certifier.predict(torch.from_numpy(Z)).numpy()


def near_boundary(predict, Z, *, seed=0):
    """Points within 2^-BOUNDARY_STEPS of the segment length from a boundary of ``predict``, on
    both sides: bisect the segment from each point to a point of another class."""
    codes = predict(Z)
    partner = np.random.default_rng(seed).permutation(len(Z))
    differ = codes != codes[partner]
    start, end, start_code = Z[differ], Z[partner][differ], codes[differ]
    lo, hi = np.zeros(len(start)), np.ones(len(start))
    for _ in range(BOUNDARY_STEPS):
        mid = 0.5 * (lo + hi)
        same = predict(start + mid[:, None] * (end - start)) == start_code
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    assert np.all(hi - lo <= 1e-9)
    inside = start + lo[:, None] * (end - start)
    outside = start + hi[:, None] * (end - start)
    return np.concatenate([inside, outside])


CASES = [
    (covariance, scale, reg)
    for covariance in ("shared", "isotropic", "full", "diag")
    for scale in SCALES
    for reg in ("absolute", "relative")
    # diag has no shrinkage: at scale 1e6 an absolute ridge of 1e-6 on the (near-)constant
    # pixels gives a condition number ~1e18, and the class scores themselves (not a common
    # term) reach ~1e15, so any two evaluation orders round differently near the boundary.
    if not (covariance == "diag" and scale > 1 and reg == "absolute")
]


@pytest.mark.parametrize(("covariance", "scale", "reg"), CASES)
def test_predict_is_the_certified_rule_at_every_scale(digits, covariance, scale, reg):
    # reg="relative" (reg_covar's meaning: relative to the data's variance) makes the fit
    # equivariant (the same model in scaled units); reg="absolute" adds a ridge of 1e-6 at
    # every scale, which dominates the covariances at small scales (the regime where the
    # joint log-likelihoods' common terms used to decide near the boundary: 50-76 % agreement
    # with the certifier on the boundary points).
    variance = np.var(digits.train.inputs * scale, axis=0).mean()
    params = {"reg_covar": 1e-6 / variance} if reg == "absolute" else {}
    mixture = GaussianMixtureClassifier(covariance=covariance, **params).fit(
        digits.train.inputs * scale, digits.train.labels
    )
    predict = certifier_predict(mixture)
    Z = digits.test.inputs * scale
    boundary = near_boundary(predict, Z)
    assert len(boundary) >= 300  # the rule has boundaries among the test points
    for points in (Z, boundary):
        expected = mixture.classes_[predict(points)]
        np.testing.assert_array_equal(mixture.predict(points), expected)
        scores = mixture.decision_function(points)
        np.testing.assert_array_equal(mixture.classes_[scores.argmax(1)], expected)
    # The two sides of each boundary point pair really are predicted differently.
    inside, outside = np.split(mixture.predict(boundary), 2)
    assert np.all(inside != outside)


@pytest.mark.parametrize("covariance", ["shared", "full"])
def test_scaled_fit_predicts_the_same_classes(digits, covariance):
    """reg_covar follows the data's scale, so the fit is the same model in other units:
    predictions on (clean) test points do not depend on the scale."""
    reference = None
    for scale in SCALES:
        mixture = GaussianMixtureClassifier(covariance=covariance)
        mixture.fit(digits.train.inputs * scale, digits.train.labels)
        pred = mixture.predict(digits.test.inputs * scale)
        reference = pred if reference is None else reference
        np.testing.assert_array_equal(pred, reference)
    assert (reference == digits.test.labels).mean() > 0.9


@pytest.mark.parametrize("covariance", ["shared", "full"])
def test_class_scores_differ_from_the_joint_log_likelihood_by_a_common_term(digits, covariance):
    mixture = GaussianMixtureClassifier(covariance=covariance).fit(
        digits.train.inputs, digits.train.labels
    )
    Z = digits.test.inputs[:50]
    jll = mixture.predict_joint_log_proba(Z)
    # The joint log-likelihoods keep their meaning: log pi_k + log N(z; mu_k, Sigma_k).
    covs = mixture.class_covariances()
    expected = np.column_stack(
        [
            np.log(mixture.priors_[k]) + stats.multivariate_normal(mu, covs[k]).logpdf(Z)
            for k, mu in enumerate(mixture.means_)
        ]
    )
    np.testing.assert_allclose(jll, expected, rtol=1e-9)
    np.testing.assert_allclose(mixture.predict_proba(Z).sum(1), 1.0, rtol=1e-12)
    gap = jll - mixture.class_scores(Z)
    np.testing.assert_allclose(gap - gap[:, :1], 0.0, atol=1e-9 * np.abs(jll).max())
    if covariance == "shared":
        M, c = mixture.linear_head()
        np.testing.assert_array_equal(mixture.class_scores(Z), Z @ M.T + c)
    else:
        scores = QuadraticCertifier(
            mixture.means_, mixture.class_precisions(), mixture.log_weights_
        ).scores(torch.from_numpy(Z))
        np.testing.assert_allclose(mixture.class_scores(Z), scores.numpy(), rtol=1e-12)


@pytest.mark.parametrize("scale", SCALES)
def test_binary_log_odds_at_every_scale(digits, scale):
    """K = 2: decision_function is the centred log-odds, positive exactly where predict says
    classes_[1], also near the boundary (uniform priors, so that the latents decide)."""
    two = np.isin(digits.train.labels, (3, 8))
    mixture = GaussianMixtureClassifier(covariance="shared", priors="uniform").fit(
        digits.train.inputs[two] * scale, digits.train.labels[two]
    )
    test = digits.test.inputs[np.isin(digits.test.labels, (3, 8))] * scale
    boundary = near_boundary(certifier_predict(mixture), test)
    for points in (test, boundary):
        log_odds = mixture.decision_function(points)
        assert log_odds.shape == (len(points),)
        expected = mixture.classes_[certifier_predict(mixture)(points)]
        np.testing.assert_array_equal(mixture.predict(points), expected)
        np.testing.assert_array_equal(mixture.classes_[(log_odds > 0).astype(int)], expected)
