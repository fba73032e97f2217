"""The Student-t distortion (gmcert.data.student_t): densities, entropies and the exact KL to
a Gaussian against scipy and mpmath, the sampler, the distorted dataset's exact law.

The Monte Carlo checks of the closed-form KL go through gmcert.eps.true_kl (test_eps_truth.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gmcert.data.student_t import (
    build_distorted,
    kl_student_t_to_gaussian,
    moment_matched_covariance,
    sample_student_t_mixture,
    student_t_entropy,
    student_t_logpdf,
)


@pytest.mark.parametrize("nu", [3.0, 7.5, math.inf])
def test_student_t_density_and_entropy_match_scipy(nu):
    scale = np.array([[1.0, 0.3, -0.2], [0.3, 0.8, 0.1], [-0.2, 0.1, 1.5]])
    mean = np.array([0.5, -1.0, 2.0])
    Z = np.random.default_rng(22).standard_normal((40, 3))
    if math.isinf(nu):
        ref = stats.multivariate_normal(mean, scale)
    else:
        ref = stats.multivariate_t(loc=mean, shape=scale, df=nu)
    np.testing.assert_allclose(student_t_logpdf(Z, mean, scale, nu), ref.logpdf(Z), rtol=1e-12)
    assert student_t_entropy(scale, nu) == pytest.approx(ref.entropy(), rel=1e-12)


def test_student_t_kl_limits_and_high_precision():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50

    def reference(nu, d):
        a, b = mpmath.mpf(nu) / 2, mpmath.mpf(d) / 2
        return float(
            b
            - b * mpmath.log(a - 1)
            + mpmath.loggamma(a + b)
            - mpmath.loggamma(a)
            - (a + b) * (mpmath.digamma(a + b) - mpmath.digamma(a))
        )

    for d in (1, 2, 7, 64, 768):
        values = []
        for nu in (2.5, 4.0, 30.0, 1e3, 1e5, 1e8, 1e12):
            got = kl_student_t_to_gaussian(np.eye(d), nu)
            assert got == pytest.approx(reference(nu, d), rel=1e-7), (d, nu)
            values.append(got)
        assert np.all(np.diff(values) < 0)  # decreasing in nu
        assert kl_student_t_to_gaussian(np.eye(d), math.inf) == 0.0
        assert kl_student_t_to_gaussian(np.eye(d), 2.0) == math.inf
    # Scale invariance of the negentropy.
    assert kl_student_t_to_gaussian(np.diag([1.0, 9.0]), 6.0) == pytest.approx(
        kl_student_t_to_gaussian(np.eye(2), 6.0), rel=1e-12
    )


def test_student_t_mixture_sampler_moments_and_labels():
    means = np.array([[0.0, 0.0], [5.0, -5.0]])
    scale = np.array([[1.0, 0.3], [0.3, 0.5]])
    Z, y = sample_student_t_mixture(
        100_000, means, scale, [6.0, math.inf], [0.3, 0.7], random_state=24
    )
    assert Z.shape == (100_000, 2) and y.dtype == np.int64
    counts = np.bincount(y)
    assert stats.chisquare(counts, 100_000 * np.array([0.3, 0.7])).pvalue > 1e-3
    for k, nu in enumerate((6.0, math.inf)):
        Zk = Z[y == k]
        cov = moment_matched_covariance(scale, nu)
        np.testing.assert_allclose(Zk.mean(axis=0), means[k], atol=0.03)
        np.testing.assert_allclose(np.cov(Zk, rowvar=False), cov, atol=0.05 * np.abs(cov).max())
    Z2, y2 = sample_student_t_mixture(
        100_000, means, scale, [6.0, math.inf], [0.3, 0.7], random_state=24
    )
    assert np.array_equal(Z, Z2) and np.array_equal(y, y2)


def test_distorted_rejects_bad_input():
    with pytest.raises(ValueError, match="nu"):
        sample_student_t_mixture(10, np.zeros((1, 2)), np.eye(2), -1.0)
    with pytest.raises(ValueError, match="priors"):
        sample_student_t_mixture(10, np.zeros((2, 2)), np.eye(2), 5.0, [0.9, 0.9])
    with pytest.raises(ValueError, match="positive definite"):
        student_t_logpdf(np.zeros((1, 2)), np.zeros(2), -np.eye(2), 5.0)
    with pytest.raises(ValueError, match="infinite for nu <= 2"):
        moment_matched_covariance(np.eye(2), 2.0)
    with pytest.raises(ValueError, match="scale is not positive definite$"):
        sample_student_t_mixture(10, np.zeros((1, 2)), -np.eye(2), 5.0)
    with pytest.raises(ValueError, match="scale must be symmetric"):  # in any units
        student_t_logpdf(np.zeros((1, 2)), np.zeros(2), 1e-14 * np.array([[1, 1], [0, 1]]), 5.0)
    with pytest.raises(ValueError, match="dataset.nu must be > 2"):
        build_distorted(nu=2.0)
