"""The degrade stage (docs/theory.md section 6): bound columns from CA under Q and eps, and the
verdict: measured certified accuracy above the bound, below it (the data falsify
KL(P || Q) <= eps), or a bound that is 0 everywhere (vacuous)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import QUICK

from gmcert.bounds.degradation import bound_columns, judge
from gmcert.bounds.kl import kl_inverse_lower
from gmcert.pipeline import run


def bernoulli_kl(p, q):
    """kl(p || q), written out here (0 log 0 = 0)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, p * np.log(p / q), 0.0)
        b = np.where(p < 1, (1 - p) * np.log((1 - p) / (1 - q)), 0.0)
    return a + b


Q_LOW = np.array([0.95, 0.80, 0.60, 0.30])
RADII = [0.0, 0.25, 0.5, 1.0]


def bounds_at(ci_high, population_low, eps, **given):
    return bound_columns(
        population_low=population_low, ci_high=ci_high, eps=eps, source="stated budget", **given
    )


def test_bound_columns_are_the_kl_inverse_of_ca_under_q():
    eps = 0.05
    bounds = bounds_at([0.99, 0.90, 0.20, 0.31], Q_LOW, eps)
    np.testing.assert_allclose(bounds.at_eps, kl_inverse_lower(Q_LOW, eps), rtol=0, atol=0)
    # The bound solves kl(p || q) = eps below q (written out, not through the library).
    assert np.all(bounds.at_eps < Q_LOW)
    np.testing.assert_allclose(bernoulli_kl(bounds.at_eps, Q_LOW), eps, rtol=1e-9)
    assert bounds.eps == eps and bounds.source == "stated budget"
    # The looser bounds sit below the tight one.
    for looser in (bounds.pinsker, bounds.bretagnolle_huber):
        assert np.all(looser <= bounds.at_eps + 1e-12)


def test_above_bound_compares_the_upper_interval_end_with_the_bound():
    eps = 0.05
    bound = kl_inverse_lower(Q_LOW, eps)
    #            above        far below     just at it   just below
    ci_high = [bound[0] + 0.01, 0.20, bound[2], bound[3] - 1e-6]
    bounds = bounds_at(ci_high, Q_LOW, eps)
    assert bounds.above.tolist() == [True, False, True, False]
    assert bounds.above.dtype == bool


def test_true_eps_and_upper_columns_only_when_given():
    ci_high = [0.99, 0.90, 0.70, 0.40]
    bounds = bounds_at(ci_high, Q_LOW, 0.05)
    assert bounds.at_true_eps is None and bounds.at_eps_upper is None

    bounds = bounds_at(ci_high, Q_LOW, 0.05, eps_upper=0.2, eps_true=0.01)
    np.testing.assert_array_equal(bounds.at_true_eps, kl_inverse_lower(Q_LOW, 0.01))
    np.testing.assert_array_equal(bounds.at_eps_upper, kl_inverse_lower(Q_LOW, 0.2))
    # A smaller eps gives a higher bound, a larger one a lower bound.
    assert np.all(bounds.at_true_eps > bounds.at_eps)
    assert np.all(bounds.at_eps_upper < bounds.at_eps)


# -------------------------------------------------------------------------------- verdicts


def judged(ci_high, population_low, eps):
    return judge(RADII, bounds_at(ci_high, population_low, eps))


def test_verdict_above_when_every_radius_is_at_or_above_the_bound():
    verdict = judged([0.99, 0.90, 0.70, 0.40], Q_LOW, 0.05)
    assert verdict.kind == "above" and verdict.above
    assert "at or above the bound at eps = 0.05 (stated budget)" in verdict.text


def test_verdict_falsified_names_the_radii_below_the_bound():
    verdict = judged([0.99, 0.20, 0.70, 0.10], Q_LOW, 0.05)
    assert verdict.kind == "falsified" and not verdict.above
    assert "BELOW the bound at eps = 0.05" in verdict.text
    assert "[0.25, 1.0]" in verdict.text and "falsified" in verdict.text


def test_verdict_vacuous_when_the_bound_is_zero_everywhere():
    low = np.array([0.5, 0.3, 0.1, 0.01])
    eps = 5.0  # above kl(0 || q) = -log(1 - q) for every q here: the bound is 0
    assert np.all(kl_inverse_lower(low, eps) == 0)
    verdict = judged([0.4, 0.2, 0.05, 0.0], low, eps)
    assert verdict.kind == "vacuous" and verdict.above
    assert "is 0 at every radius: vacuous" in verdict.text


def test_falsified_wins_over_vacuous():
    """A zero bound cannot be violated, so one violated radius means a positive bound there."""
    low = np.array([0.99, 0.3, 0.1, 0.01])
    eps = 1.0
    bound = kl_inverse_lower(low, eps)
    assert bound[0] > 0 and np.all(bound[1:] == 0)
    assert judged([bound[0] / 2, 0.2, 0.05, 0.0], low, eps).kind == "falsified"


# ---------------------------------------------------------------------- through run(...)


SYNTHETIC = [
    "dataset=synthetic",
    "dataset.dim=4",
    "mixture.priors=uniform",
    "divergence.truth_samples=20000",
]


@pytest.mark.parametrize(
    "overrides, eps, expected, above",
    [
        # Exact Gaussian data: the measured CA sits on CA under Q, above a small eps's bound.
        (SYNTHETIC, 0.05, "at or above", True),
        # Pixels of digits are far from a Gaussian mixture: a tiny budget is refuted.
        ([], 1e-4, "falsified", False),
        # A huge budget: the bound is 0 at every radius.
        ([], 50.0, "vacuous", True),
    ],
    ids=["above", "falsified", "vacuous"],
)
@pytest.mark.e2e
def test_verdict_in_the_metrics_of_a_run(make_cfg, overrides, eps, expected, above):
    cfg = make_cfg(
        *QUICK,
        "certify.population_samples=4000",
        f"divergence.eps={eps}",
        *overrides,
    )
    metrics = run(cfg)
    divergence = metrics["divergence"]
    assert divergence["eps_used"] == eps and divergence["eps_source"] == "stated budget"
    assert expected in divergence["verdict"]
    assert divergence["measured_above_bound"] is above
    table = pd.read_csv(f"{cfg.paths.output_dir}/certified_accuracy.csv")
    rows = table[table["method"] == "closed_form"]
    assert rows["above_bound"].astype(bool).all() == above
    # The true eps (and its bound) only where the data's exact law is known: synthetic data.
    synthetic = cfg.dataset.name == "synthetic"
    assert ("eps_true" in divergence) == synthetic == ("bound_at_true_eps" in table)
    if synthetic:
        # At the Monte Carlo estimate of the true eps plus 3 standard errors (never below 0).
        truth = divergence["eps_true"]
        eps_true = max(truth["estimate"] + 3 * truth["stderr"], 0.0)
        low = np.asarray(metrics["population_Q"]["ci_low"])
        np.testing.assert_allclose(rows["bound_at_true_eps"], kl_inverse_lower(low, eps_true))
