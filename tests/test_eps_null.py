"""The null calibration of the eps estimators (gmcert/eps/null.py): each estimator run on
samples of Q itself, its bias there subtracted, an interval that counts the null spread, and
the bound evaluated at the most pessimistic corrected estimate.

Stated errors (nats) the tests hold, measured first with scripts/eps_error_table.py and the
Gaussian pairs below: corrected within TOLERANCE of the truth where the estimator should be
(every estimator at d = 4; the plug-in at d = 32 on a Gaussian P, where its bias is the bias at
Q: the Kozachenko-Leonenko entropy is equivariant under a similarity map); and where it is not
(the raw plug-in at d = 32, the kNN estimator at d = 32 even corrected) the error is shown to
exceed it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gmcert.config import check_options
from gmcert.data.student_t import kl_student_t_to_gaussian, sample_student_t_mixture
from gmcert.eps import estimate_eps, kl_gaussian, label_kl
from gmcert.eps.neighbours import NeighbourSearch
from gmcert.eps.null import corrected_interval, null_readings, resolution_line
from gmcert.eps.stage import calibration_summary, corrected_eps, estimate_for_mixture
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.report.plots import plot_eps_sensitivity

TOLERANCE = 0.3  # nats


def _gaussian_pair(d, n, *, scale, shift, seed):
    """X ~ N(shift e / sqrt(d), scale I) against Q = N(0, I), and the exact KL."""
    rng = np.random.default_rng(seed)
    mean = np.full(d, shift / math.sqrt(d))
    X = mean + math.sqrt(scale) * rng.standard_normal((n, d))
    truth = kl_gaussian(mean, scale * np.eye(d), np.zeros(d), np.eye(d))
    return X, truth


def _calibrated(X, d, seed=0, replicates=3):
    res = estimate_eps(
        X,
        np.zeros(len(X), int),
        means=np.zeros((1, d)),
        covariances=np.eye(d),
        priors=[1.0],
        n_boot=20,
        random_state=seed,
        null_replicates=replicates,
    )
    return res["null"]["joint"]


def test_every_estimator_corrected_within_tolerance_at_d4():
    """d = 4, 2,000 points: kNN, plug-in and DV, corrected, all within 0.3 nats of the truth."""
    X, truth = _gaussian_pair(4, 2000, scale=0.7, shift=0.5, seed=2)
    joint = _calibrated(X, 4, seed=2)
    for name in ("knn", "plugin", "dv"):
        assert abs(joint[name]["corrected"] - truth) <= TOLERANCE, (name, joint[name], truth)


def test_plugin_raw_fails_and_corrected_holds_at_d32():
    """d = 32, 1,000 points: the raw plug-in is biased low by more than a nat (measured -2.7);
    corrected it is within the tolerance and its interval covers the truth. The kNN estimator
    is not rescued by the correction here (its bias depends on P's scale, not only on Q's):
    the test records that it stays beyond the tolerance, which is why the run bounds at the
    largest corrected estimate rather than trusting any one estimator."""
    X, truth = _gaussian_pair(32, 1000, scale=1.2, shift=0.5, seed=0)
    joint = _calibrated(X, 32)
    plugin = joint["plugin"]
    assert plugin["raw"] - truth < -1.0
    assert abs(plugin["corrected"] - truth) <= TOLERANCE
    assert plugin["ci_low"] <= truth <= plugin["ci_high"]
    assert abs(joint["dv"]["corrected"] - truth) <= TOLERANCE
    assert abs(joint["knn"]["corrected"] - truth) > TOLERANCE


def test_student_t_classes_of_eps_controlled_at_d10():
    """eps_controlled's law (Student-t classes, identity covariance) at d = 10, 1,000 points per
    class, against the moment-matched mixture: kNN and DV corrected within the tolerance; the
    plug-in's bias at these heavy tails is not its bias at Q, and it errs high (conservative)
    by 0.2-0.35 nats (measured over seeds 5-7), held here to (0, 0.5]."""
    d, K, nu = 10, 3, 6.72  # nu gives 0.5 nats per class, as in the README table
    rng = np.random.default_rng(5)
    means = 4.0 * rng.standard_normal((K, d))
    scale = np.eye(d) * (nu - 2) / nu
    Z, y = sample_student_t_mixture(K * 1000, means, scale, nu, random_state=6)
    truth = label_kl(y, np.full(K, 1 / K)) + kl_student_t_to_gaussian(scale, nu)
    assert truth == pytest.approx(0.5, abs=0.01)
    res = estimate_eps(
        Z,
        y,
        means=means,
        covariances=np.eye(d),
        priors=np.full(K, 1 / K),
        n_boot=20,
        null_replicates=3,
    )
    joint = res["null"]["joint"]
    for name in ("knn", "dv"):
        assert abs(joint[name]["corrected"] - truth) <= TOLERANCE, (name, joint[name], truth)
    assert 0.0 < joint["plugin"]["corrected"] - truth <= 0.5


def test_on_samples_of_q_the_correction_removes_the_bias():
    """P = Q (true eps 0) at d = 32: the raw plug-in reads about -2 nats; the corrected
    readings' intervals all cover 0, and an estimator whose corrected eps is within its null
    spread says it cannot resolve eps."""
    d = 32
    X = np.random.default_rng(11).standard_normal((800, d))
    res = estimate_eps(
        X,
        np.zeros(800, int),
        means=np.zeros((1, d)),
        covariances=np.eye(d),
        priors=[1.0],
        n_boot=30,
        null_replicates=4,
        random_state=3,
    )
    joint = res["null"]["joint"]
    assert joint["plugin"]["raw"] < -1.0
    for name, v in joint.items():
        assert v["ci_low"] <= 0.0 <= v["ci_high"], (name, v)
        assert v["resolves"] == (v["null_std"] <= max(v["corrected"], 0.0))
        if not v["resolves"]:
            assert any(note.startswith(f"{name} cannot resolve eps") for note in res["notes"])
    # The per-class entries carry the null mean and spread too.
    assert res["per_class"]["0"]["plugin"]["null_mean"] == pytest.approx(
        joint["plugin"]["null_mean"]
    )


def test_null_draws_are_seeded_sized_and_independent_of_the_data():
    means, covs = np.zeros((2, 3)), np.stack([np.eye(3), 2 * np.eye(3)])
    context = {"search": NeighbourSearch(), "q_ratio": 1, "dv_split": 0.5, "C_grid": (1.0,)}
    kwargs = dict(replicates=3, context=context, random_state=7, min_size=3)
    weights = np.array([0.25, 0.75])
    a = null_readings(means, covs, [50, 0], weights, ["knn", "dv"], **kwargs)
    b = null_readings(means, covs, [50, 0], weights, ["knn", "dv"], **kwargs)
    np.testing.assert_array_equal(a["knn"], b["knn"])
    assert a["knn"].shape == (3, 2) and np.all(a["knn"][:, 1] == 0.0)  # empty class: 0
    np.testing.assert_allclose(a["knn:joint"], a["knn"] @ weights)
    assert len(set(a["knn"][:, 0])) == 3  # the replicates are different draws
    small = null_readings(means, covs, [5, 50], weights, ["dv"], **kwargs)
    assert np.all(np.isnan(small["dv"][:, 0]))  # too few points for dv: undefined, as in a run


def test_interval_rule_and_resolution_line():
    lo, hi = corrected_interval(1.0, 0.8, 1.5, 0.1, 0.05)
    z = 1.959963984540054
    assert lo == pytest.approx(math.hypot(0.2, z * 0.1))
    assert hi == pytest.approx(math.hypot(0.5, z * 0.1))
    assert corrected_interval(1.0, None, None, 0.1, 0.05) == pytest.approx((z * 0.1, z * 0.1))
    assert resolution_line("knn", 0.05, 0.2).startswith("knn cannot resolve eps")
    assert resolution_line("knn", -1.0, 0.01) is not None  # negative: reports eps 0
    assert resolution_line("knn", 1.0, 0.2) is None


def test_the_bound_uses_the_largest_corrected_estimate_and_point_masses_win():
    estimates = {
        "null": {
            "replicates": 3,
            "joint": {
                "knn": {"corrected": 0.4, "ci_low": 0.2, "ci_high": 0.7},
                "plugin": {"corrected": 1.1, "ci_low": 0.9, "ci_high": 1.4},
                "dv": {"corrected": -0.2, "ci_low": -0.3, "ci_high": 0.1},
            },
        }
    }
    eps = corrected_eps(estimates)
    assert eps["from_estimator"] == "plugin" and eps["eps_hat"] == 1.1
    assert eps["eps_upper"] == 1.4 and eps["eps_ci_low"] == 0.0  # dv's low end, clipped
    assert eps["interval"] == [0.9, 1.4]  # the chosen estimator's own, as the plot marks it

    rng = np.random.default_rng(0)
    Z = rng.standard_normal((600, 3))
    y = np.repeat([0, 1], 300)
    Z[y == 1] += 3.0
    mixture = GaussianMixtureClassifier().fit(Z[::2], y[::2])
    options = _options()
    smooth = estimate_for_mixture(mixture, Z[1::2], y[1::2], options, seed=0, device="cpu")
    joint = smooth["estimates"]["null"]["joint"]
    best = max(joint, key=lambda n: joint[n]["corrected"])
    assert smooth["eps_basis"] == "null-corrected" and smooth["from_estimator"] == best
    assert smooth["eps_hat"] == max(joint[best]["corrected"], 0.0)
    assert smooth["eps_raw"]["eps_hat"] == max(
        max(v["estimate"], 0.0) for v in smooth["estimates"]["joint"].values()
    )
    lines = smooth["calibration_summary"]
    assert any(line.strip().startswith("knn: raw") and "corrected" in line for line in lines)
    assert "evaluated at the corrected eps of" in lines[-1]

    Z[1::2, 0] = np.round(Z[1::2, 0])  # a point mass on the integers: KL = inf
    atoms = estimate_for_mixture(mixture, Z[1::2], y[1::2], options, seed=0, device="cpu")
    assert math.isinf(atoms["eps_hat"]) and atoms["eps_basis"] == "point masses"
    assert "point masses" in calibration_summary(atoms)[-1]


def _options(**changes):
    from types import SimpleNamespace

    base = dict(
        estimators=["knn", "plugin", "dv"],
        n_boot=20,
        alpha=0.05,
        max_per_class=None,
        k=1,
        q_ratio=1,
        dv_split=0.5,
        dv_C_grid=[0.01, 0.1, 1.0],
        null_replicates=3,
    )
    return SimpleNamespace(**{**base, **changes})


@pytest.mark.parametrize(
    "override, message",
    [
        ("divergence.null_replicates=1", "divergence.null_replicates must be 0 (off)"),
        ("divergence.null_replicates=-2", "divergence.null_replicates must be 0 (off)"),
        ("divergence.k=0", "divergence.k must be an integer >= 1"),
        ("divergence.dv_split=1.0", "divergence.dv_split must be a fraction in (0, 1)"),
        ("divergence.dv_C_grid=[]", "divergence.dv_C_grid must be a non-empty list"),
        ("divergence.dv_C_grid=[0.1,0]", "divergence.dv_C_grid must be a non-empty list"),
        ("divergence.q_ratio=0", "divergence.q_ratio must be an integer >= 1"),
    ],
)
def test_divergence_options_are_checked(make_cfg, override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_options(make_cfg(override))


def test_divergence_options_reach_the_estimators(make_cfg):
    cfg = make_cfg("divergence.k=3", "divergence.dv_split=0.25", "divergence.null_replicates=2")
    check_options(cfg)
    rng = np.random.default_rng(1)
    Z, y = rng.standard_normal((200, 2)), np.repeat([0, 1], 100)
    mixture = GaussianMixtureClassifier().fit(Z, y)
    out = estimate_for_mixture(mixture, Z, y, cfg.divergence, seed=0, device="cpu")
    settings = out["estimates"]["settings"]
    assert settings["k"] == 3 and settings["dv_split"] == 0.25
    assert settings["null_replicates"] == 2
    assert out["estimates"]["per_class"]["0"]["knn"]["k"] == 3
    assert out["estimates"]["per_class"]["0"]["dv"]["n_fit"] == 25


def test_eps_sensitivity_plot_marks_raw_and_corrected(tmp_path):
    rows = pd.DataFrame(
        {"radius": [0.0, 0.5], "certified_accuracy": [0.9, 0.6], "population_Q": [0.92, 0.65]}
    )
    grid = np.geomspace(1e-3, 10, 50)
    curves = np.tile(np.array([0.9, 0.6]), (50, 1)) * np.exp(-grid)[:, None]
    path = tmp_path / "eps_sensitivity.png"
    plot_eps_sensitivity(
        rows,
        curves,
        grid,
        path,
        eps_hat=0.8,
        eps_interval=(0.5, 1.2),
        raw=-1.0,  # a raw reading below 0 is drawn at the axis's left end
        raw_interval=(None, 0.1),
        basis="null-corrected estimate",
    )
    assert path.stat().st_size > 10_000
