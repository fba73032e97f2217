"""estimate_eps (gmcert.eps.estimate, gmcert.eps.per_class): the label term, the per-class
estimates and their joint combination, against the exact KL of a Student-t mixture.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gmcert.data.student_t import (
    kl_student_t_to_gaussian,
    moment_matched_covariance,
    sample_student_t_mixture,
)
from gmcert.eps import ESTIMATORS, estimate_eps, label_kl


def test_label_kl_is_exact():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    priors = np.array([0.4, 0.4, 0.2])
    p = np.array([0.5, 0.3, 0.2])
    assert label_kl(y, priors) == pytest.approx(float(np.sum(p * np.log(p / priors))), rel=1e-14)
    assert label_kl(np.array([0, 0, 1]), [0.5, 0.5, 0.0]) == pytest.approx(
        (2 / 3) * math.log(4 / 3) + (1 / 3) * math.log(2 / 3), rel=1e-14
    )


@pytest.fixture(scope="module")
def student_mixture():
    d, K, nu = 4, 3, 8.0
    rng = np.random.default_rng(12)
    means = 4.0 * rng.standard_normal((K, d))
    scale = np.diag([1.0, 0.5, 2.0, 1.5])
    true_priors = np.array([0.5, 0.3, 0.2])
    Z, y = sample_student_t_mixture(3000, means, scale, nu, true_priors, random_state=13)
    q_priors = np.array([0.4, 0.35, 0.25])  # deliberately off: non-zero label term
    cov = moment_matched_covariance(scale, nu)
    result = estimate_eps(
        Z,
        y,
        means=means,
        covariances=np.stack([cov] * K),
        priors=q_priors,
        n_boot=300,
    )
    return dict(
        Z=Z, y=y, means=means, cov=cov, scale=scale, nu=nu, q_priors=q_priors, result=result
    )


def test_estimate_eps_recovers_the_student_t_mixture_kl(student_mixture):
    s = student_mixture
    res = s["result"]
    json.dumps(res, allow_nan=False)  # plain, finite JSON
    label = label_kl(s["y"], s["q_priors"])
    assert res["label_term"]["estimate"] == pytest.approx(label, rel=1e-12)
    p_hat = np.bincount(s["y"], minlength=3) / len(s["y"])
    per_class_true = kl_student_t_to_gaussian(s["scale"], s["nu"])  # same for every class
    true_joint = label + per_class_true  # sum_k p_hat_k KL_k with equal KL_k
    for name in ("knn", "plugin", "dv"):
        per_class = [res["per_class"][str(c)][name]["estimate"] for c in range(3)]
        joint = res["joint"][name]
        # The joint is the decomposition of docs/theory.md section 6, recomputed from its parts.
        assert joint["estimate"] == pytest.approx(label + p_hat @ per_class, rel=1e-12)
        assert joint["ci_low"] <= joint["estimate"] <= joint["ci_high"]
        # d = 4: all three are accurate to a tenth of a nat here (true ~ 0.26 nats).
        assert abs(joint["estimate"] - true_joint) < 0.12, (name, joint, true_joint)
    assert res["joint"]["dv"]["ci_low"] < true_joint


def test_estimate_eps_small_and_empty_classes():
    rng = np.random.default_rng(14)
    d = 3
    Z = np.vstack([rng.standard_normal((200, d)), rng.standard_normal((2, d)) + 5])
    y = np.array([0] * 200 + [2] * 2)  # class 1 empty, class 2 tiny
    means = np.array([np.zeros(d), np.ones(d), np.full(d, 5.0)])
    res = estimate_eps(
        Z,
        y,
        means=means,
        covariances=np.eye(d),
        priors=[0.5, 0.25, 0.25],
        n_boot=50,
        estimators=("knn", "dv"),
    )
    json.dumps(res, allow_nan=False)
    assert res["per_class"]["1"]["n"] == 0
    assert res["per_class"]["2"]["knn"]["estimate"] is None
    assert res["joint"]["knn"]["estimate"] is None
    assert any("too few" in note for note in res["notes"])


def test_estimate_eps_subsamples_and_is_reproducible():
    rng = np.random.default_rng(15)
    Z, y = rng.standard_normal((600, 2)), rng.integers(0, 2, 600)
    kw = dict(
        means=np.zeros((2, 2)),
        covariances=np.eye(2),
        priors=[0.5, 0.5],
        n_boot=50,
        max_per_class=100,
        estimators=("knn", "plugin"),
    )
    a, b = estimate_eps(Z, y, **kw), estimate_eps(Z, y, **kw)
    assert a == b
    assert a["per_class"]["0"]["n_used"] == 100


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(means=np.zeros((2, 3))), "means must have shape"),
        (dict(covariances=np.eye(3)), "covariances must have shape"),
        (dict(priors=[0.7, 0.7]), "sum to 1"),
        (dict(estimators=("knn", "nope")), "unknown estimators"),
        (dict(covariances=np.stack([np.eye(2), -np.eye(2)])), "positive definite"),
        (dict(estimators=("knn", "knn")), "estimators contains duplicates"),
        (dict(estimators=()), "unknown estimators"),
        (dict(max_per_class=1), "max_per_class must be None or >= 2"),
        (dict(q_ratio=1.5), "q_ratio must be a positive integer"),
        (dict(n_boot=0), "n_boot must be a positive integer"),
        (dict(alpha=1.0), "alpha must be in"),
    ],
)
def test_estimate_eps_rejects_bad_input(kwargs, match):
    rng = np.random.default_rng(16)
    base = dict(means=np.zeros((2, 2)), covariances=np.eye(2), priors=[0.5, 0.5], n_boot=10)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        estimate_eps(rng.standard_normal((40, 2)), np.repeat([0, 1], 20), **base)


def test_estimate_eps_rejects_bad_labels_and_data():
    kw = dict(means=np.zeros((2, 2)), covariances=np.eye(2), priors=[0.5, 0.5], n_boot=10)
    Z = np.zeros((4, 2)) + np.arange(4)[:, None]
    with pytest.raises(ValueError, match="labels must lie in"):
        estimate_eps(Z, np.array([0, 1, 2, 0]), **kw)
    Z[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimate_eps(Z, np.array([0, 1, 1, 0]), **kw)


def test_estimate_eps_report_layout_and_registry():
    """Every registered estimator runs through estimate_eps; the report has the documented keys
    and the settings as passed; float labels holding integers are accepted."""
    rng = np.random.default_rng(29)
    Z, y = rng.standard_normal((120, 2)), np.repeat([0.0, 1.0], 60)
    res = estimate_eps(
        Z,
        y,
        means=np.zeros((2, 2)),
        covariances=np.eye(2),
        priors=[0.5, 0.5],
        n_boot=20,
        estimators=tuple(ESTIMATORS),
        k=2,
        q_ratio=2,
    )
    assert set(ESTIMATORS) == {"knn", "plugin", "dv", "dv_logistic"}
    assert set(res) == {
        "n",
        "d",
        "K",
        "class_counts",
        "empirical_priors",
        "label_term",
        "per_class",
        "joint",
        "null",
        "settings",
        "notes",
    }
    assert res["class_counts"] == [60, 60] and res["label_term"]["estimate"] == 0.0
    assert set(res["joint"]) == set(ESTIMATORS)
    assert res["settings"] == {
        "estimators": list(ESTIMATORS),
        "n_boot": 20,
        "alpha": 0.05,
        "random_state": 0,
        "k": 2,
        "q_ratio": 2,
        "precision": "auto",
        "dv_split": 0.5,
        "C_grid": [0.01, 0.1, 1.0],
        "null_replicates": 0,
        "max_per_class": None,
        "device": "cpu",
    }
    assert res["notes"][-1].startswith("intervals are percentile bootstraps")
    # Adding an estimator never changes another's numbers (independent seeded streams).
    alone = estimate_eps(
        Z,
        y,
        means=np.zeros((2, 2)),
        covariances=np.eye(2),
        priors=[0.5, 0.5],
        n_boot=20,
        estimators=("dv",),
        k=2,
        q_ratio=2,
    )
    assert alone["joint"]["dv"] == res["joint"]["dv"]
