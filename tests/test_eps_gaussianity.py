"""Gaussianity diagnostics (gmcert.eps.gaussianity): Mardia's tests against their definition
and their null law, and the optional Henze-Zirkler pass-through.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from scipy import stats

from gmcert.data.student_t import sample_student_t_mixture
from gmcert.eps import gaussianity_tests, henze_zirkler_test, mardia_test


def test_mardia_statistics_match_their_definition():
    X = np.random.default_rng(17).standard_normal((60, 3))
    res = mardia_test(X, block=7)  # odd block size exercises the blocked sum
    xc = X - X.mean(axis=0)
    G = xc @ np.linalg.inv(xc.T @ xc / len(X)) @ xc.T
    assert res["skewness_b1"] == pytest.approx(np.sum(G**3) / len(X) ** 2, rel=1e-10)
    assert res["kurtosis_b2"] == pytest.approx(np.mean(np.diag(G) ** 2), rel=1e-10)
    assert res["skewness_df"] == 10.0


def test_mardia_pvalues_roughly_uniform_under_normality():
    p = {"skewness_pvalue_small_sample": [], "kurtosis_pvalue": []}
    for r in range(200):
        X = np.random.default_rng(2000 + r).standard_normal((100, 3))
        res = mardia_test(X)
        for key in p:
            p[key].append(res[key])
    for key, vals in p.items():
        vals = np.asarray(vals)
        # 200 draws: the 5 % rejection rate has sd 1.5 %; accept [0.5 %, 12 %].
        assert 0.005 <= np.mean(vals < 0.05) <= 0.12, (key, np.mean(vals < 0.05))
        assert stats.kstest(vals, "uniform").pvalue > 1e-3, key


def test_mardia_rejects_heavy_tails_and_skew():
    t, _ = sample_student_t_mixture(500, np.zeros((1, 3)), np.eye(3), 4.0, random_state=18)
    assert mardia_test(t)["kurtosis_pvalue"] < 1e-6
    skewed = np.random.default_rng(19).exponential(size=(500, 3))
    assert mardia_test(skewed)["skewness_pvalue"] < 1e-6


def test_mardia_undefined_cases_do_not_crash():
    rng = np.random.default_rng(20)
    assert mardia_test(rng.standard_normal((5, 5)))["defined"] is False
    flat = rng.standard_normal((50, 2)) @ np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]])
    res = mardia_test(flat)  # rank 2 in d = 3
    assert res["defined"] is False and "singular" in res["reason"]


def test_gaussianity_tests_per_class_and_optional_henze_zirkler(monkeypatch):
    rng = np.random.default_rng(21)
    Z = rng.standard_normal((130, 3))
    y = np.array([0] * 100 + [1] * 30)
    Z[100:] = Z[100:, :1] @ np.ones((1, 3))  # class 1 singular
    monkeypatch.setitem(sys.modules, "pingouin", None)  # force "not installed"
    out = gaussianity_tests(Z, y)
    json.dumps(out, allow_nan=False)
    assert out["0"]["mardia"]["defined"] and not out["1"]["mardia"]["defined"]
    assert out["0"]["henze_zirkler"]["available"] is False
    # With an implementation present, its result is passed through.
    fake = types.SimpleNamespace(multivariate_normality=lambda X, alpha: (1.5, 0.2, True))
    monkeypatch.setitem(sys.modules, "pingouin", fake)
    hz = henze_zirkler_test(Z[:100])
    assert hz == {
        "available": True,
        "defined": True,
        "statistic": 1.5,
        "pvalue": 0.2,
        "normal_at_alpha": True,
        "alpha": 0.05,
    }
