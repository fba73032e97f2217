"""true_kl (gmcert.eps.truth): the Monte Carlo KL(P || Q) from a known law P, checked against
closed forms (Gaussian KL, the Student-t KL to a Gaussian), and used in turn to check them.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from gmcert.data import GroundTruth, class_log_joint
from gmcert.data.student_t import (
    build_distorted,
    kl_student_t_to_gaussian,
    moment_matched_covariance,
    sample_student_t_mixture,
    student_t_logpdf,
)
from gmcert.data.synthetic import synthetic_parameters
from gmcert.eps import gaussian_logpdf, kl_gaussian, true_kl
from gmcert.gaussian import sample_gaussian_mixture
from gmcert.models.mixture import GaussianMixtureClassifier


def _mixture(means, covs, priors):
    """A fitted-mixture stand-in with exactly these parameters (classes 0..K-1)."""
    means = np.asarray(means, np.float64)
    covs = np.asarray(covs, np.float64)
    return types.SimpleNamespace(
        classes_=np.arange(len(means)),
        priors_=np.asarray(priors, np.float64),
        means_=means,
        class_covariances=lambda: covs,
    )


def _gaussian_mixture_truth(means, covs, priors) -> GroundTruth:
    def sample(n, seed):
        return sample_gaussian_mixture(n, means, covs, priors, np.random.default_rng(seed))

    def log_joint(Z, y):
        return class_log_joint(Z, y, priors, lambda zk, k: gaussian_logpdf(zk, means[k], covs[k]))

    return GroundTruth(sample=sample, log_joint=log_joint)


def _student_t_truth(scale, nu) -> GroundTruth:
    """One Student-t class t_nu(0, scale)."""
    d = scale.shape[0]

    def sample(n, seed):
        return sample_student_t_mixture(n, np.zeros((1, d)), scale, nu, random_state=seed)

    return GroundTruth(
        sample=sample, log_joint=lambda Z, y: student_t_logpdf(Z, np.zeros(d), scale, nu)
    )


def test_true_kl_of_a_gaussian_mixture_against_its_known_kl():
    """P and Q share means and priors, covariances differ: KL = sum_k pi_k KL(P_k || Q_k)."""
    d, priors = 3, np.array([0.5, 0.3, 0.2])
    means = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, -3.0, 2.0]])
    covs_p = np.stack([np.eye(d), np.diag([0.5, 1.0, 2.0]), [[1, 0.4, 0], [0.4, 1, 0], [0, 0, 1]]])
    covs_q = np.stack([1.5 * np.eye(d), np.eye(d), np.diag([0.8, 1.2, 1.0])])
    truth = _gaussian_mixture_truth(means, covs_p, priors)
    exact = sum(
        p * kl_gaussian(m, cp, m, cq)
        for p, m, cp, cq in zip(priors, means, covs_p, covs_q, strict=True)
    )
    res = true_kl(truth, _mixture(means, covs_q, priors), samples=100_000, seed=0)
    assert set(res) == {"estimate", "stderr", "samples", "method"}
    assert res["samples"] == 100_000 and res["method"] == "monte_carlo from the exact data law"
    assert abs(res["estimate"] - exact) < 4 * res["stderr"], (res, exact)
    # Q = P: the same densities on the same draws, so exactly zero.
    same = true_kl(truth, _mixture(means, covs_p, priors), samples=1000, seed=1)
    assert same["estimate"] == 0.0 and same["stderr"] == 0.0


def test_true_kl_of_the_distorted_data_against_the_student_t_closed_form():
    """The distorted dataset's exact law against its moment-matched mixture (identity class
    covariances at the true means, the true priors): KL = the t's negentropy, every class."""
    nu, dim, K = 6.0, 3, 3
    data = build_distorted(num_classes=K, dim=dim, nu=nu, n_train=10, n_test=10, seed=2)
    means, _ = synthetic_parameters(
        num_classes=K, dim=dim, separation=4.0, covariance="isotropic", seed=2
    )
    q = _mixture(means, np.stack([np.eye(dim)] * K), np.full(K, 1 / K))
    res = true_kl(data.truth, q, samples=100_000, seed=3)
    exact = kl_student_t_to_gaussian(np.eye(dim) * (nu - 2) / nu, nu)
    assert abs(res["estimate"] - exact) < 4 * res["stderr"], (res, exact)


def test_true_kl_with_a_fitted_mixture_is_at_least_the_best_gaussian_kl():
    """A fitted GaussianMixtureClassifier (the pipeline's use): the moment-matched mixture is
    the KL minimiser among class-conditional Gaussian mixtures, so the fitted Q is no closer."""
    nu, dim, K = 6.0, 3, 3
    data = build_distorted(num_classes=K, dim=dim, nu=nu, n_train=3000, n_test=10, seed=4)
    mixture = GaussianMixtureClassifier(covariance="full").fit(
        data.train.inputs.astype(np.float64), data.train.labels
    )
    res = true_kl(data.truth, mixture, samples=50_000, seed=5)
    best = kl_student_t_to_gaussian(np.eye(dim) * (nu - 2) / nu, nu)
    assert best - 4 * res["stderr"] < res["estimate"] < best + 0.05, (res, best)


def test_kl_gaussian_matches_monte_carlo():
    mean_p, cov_p = (
        np.array([0.3, 0.0, -0.2]),
        np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0, 0.1, 1.2]]),
    )
    mean_q, cov_q = np.array([0.2, -0.1, 0.3]), np.diag([1.5, 0.7, 1.1])
    truth = _gaussian_mixture_truth(mean_p[None], cov_p[None], np.ones(1))
    mc = true_kl(truth, _mixture(mean_q[None], cov_q[None], np.ones(1)), samples=200_000, seed=1)
    assert abs(kl_gaussian(mean_p, cov_p, mean_q, cov_q) - mc["estimate"]) < 4 * mc["stderr"]


@pytest.mark.parametrize("d,nu", [(1, 5.0), (3, 4.5), (10, 8.0)])
def test_student_t_kl_closed_form_matches_monte_carlo(d, nu):
    rng = np.random.default_rng(23)
    scale = np.diag(np.linspace(0.6, 1.8, d)) + 0.2  # positive definite, correlated
    truth = _student_t_truth(scale, nu)
    cov_mm = moment_matched_covariance(scale, nu)
    cov_q = np.diag(rng.uniform(0.5, 2.0, d))
    shift = rng.normal(0.0, 0.3, d)
    for cov, s in ((cov_mm, np.zeros(d)), (cov_q, shift)):
        mc = true_kl(truth, _mixture(s[None], cov[None], np.ones(1)), samples=200_000, seed=24)
        exact = kl_student_t_to_gaussian(scale, nu, cov_q=cov, mean_shift=s)
        assert abs(exact - mc["estimate"]) < 4 * mc["stderr"], (exact, mc)
    # The moment-matched Gaussian is the KL minimiser, and cov_q=None means exactly that.
    assert kl_student_t_to_gaussian(scale, nu) == pytest.approx(
        kl_student_t_to_gaussian(scale, nu, cov_q=cov_mm), rel=1e-10
    )
    assert kl_student_t_to_gaussian(scale, nu) < kl_student_t_to_gaussian(
        scale, nu, cov_q=cov_q, mean_shift=shift
    )


def test_true_kl_rejects_a_log_joint_of_the_wrong_shape():
    truth = GroundTruth(
        sample=lambda n, seed: (np.zeros((n, 2)), np.zeros(n, np.int64)),
        log_joint=lambda Z, y: np.zeros(len(Z) - 2),
    )
    q = _mixture(np.zeros((1, 2)), np.eye(2)[None], np.ones(1))
    with pytest.raises(ValueError, match="it must return one log-density per sample"):
        true_kl(truth, q, samples=5, seed=0)
