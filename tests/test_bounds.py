"""Clopper-Pearson against statsmodels; the KL bounds' ordering, edge cases and monotonicity."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from gmcert.bounds.kl import bernoulli_kl, bretagnolle_huber_lower, kl_inverse_lower, pinsker_lower
from gmcert.confidence import clopper_pearson_lower, clopper_pearson_upper


@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_matches_statsmodels(alpha):
    n = 200
    k = np.arange(0, n + 1)
    low, high = proportion_confint(
        k, n, alpha=2 * alpha, method="beta"
    )  # two-sided = 2 x one-sided
    np.testing.assert_allclose(clopper_pearson_lower(k, n, alpha), np.nan_to_num(low), atol=1e-12)
    np.testing.assert_allclose(
        clopper_pearson_upper(k, n, alpha), np.nan_to_num(high, nan=1.0), atol=1e-12
    )


def test_clopper_pearson_covers_at_its_level():
    rng = np.random.default_rng(0)
    p, n, alpha = 0.3, 50, 0.1
    k = rng.binomial(n, p, size=20_000)
    miss = (clopper_pearson_lower(k, n, alpha) > p).mean()
    assert miss <= alpha


Q = np.linspace(0.0, 1.0, 41)
EPS = np.array([0.0, 1e-4, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0])


def test_kl_inverse_is_feasible_and_tightest():
    q, eps = np.meshgrid(Q, EPS)
    p = kl_inverse_lower(q, eps)
    assert np.all(bernoulli_kl(p, q) <= eps + 1e-9)
    # Any smaller p is infeasible (unless p is already 0).
    smaller = np.clip(p - 1e-6, 0, None)
    assert np.all((p == 0) | (bernoulli_kl(smaller, q) > eps))


def test_kl_inverse_dominates_pinsker_and_bretagnolle_huber():
    q, eps = np.meshgrid(Q, EPS)
    p = kl_inverse_lower(q, eps)
    assert np.all(p >= pinsker_lower(q, eps) - 1e-12)
    assert np.all(p >= bretagnolle_huber_lower(q, eps) - 1e-12)


def test_bounds_equal_ca_at_zero_eps_and_are_monotone():
    np.testing.assert_allclose(kl_inverse_lower(Q, 0.0), Q, atol=1e-12)
    np.testing.assert_allclose(pinsker_lower(Q, 0.0), Q)
    grid = kl_inverse_lower(Q[None, :], EPS[:, None])
    assert np.all(np.diff(grid, axis=0) <= 1e-12)  # more eps, lower bound
    assert np.all(np.diff(grid, axis=1) >= -1e-12)  # higher CA_Q (smaller radius), higher bound


def test_negative_eps_is_refused():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        kl_inverse_lower(0.5, -0.1)
