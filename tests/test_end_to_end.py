"""End to end through `run(...)`: the written table and predictions of several model families
and norms, and the CA-under-Q and ceiling columns (docs/theory.md section 5).

Each configuration runs once (module-scoped) and is rebuilt independently from its config
(conftest.rebuild_run) to check the predictions and radii it wrote.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import QUICK, compose_config, linear_radius, rebuild_run
from scipy import stats

from gmcert.pipeline import run

pytestmark = pytest.mark.e2e

# No attack stage here: tests/test_attack.py covers it.
FAST = [*QUICK, "certify.population_samples=4000"]
RUNS = {
    "shared": [],
    # Quadratic boundaries cost far more per point: 16 PCA latents, a third of the test
    # split and fewer draws from Q here; on the 64 pixels in the slow suite.
    "full": [
        "mixture=full",
        "encoder=pca",
        "encoder.n_components=16",
        "certify.stop=120",
        "certify.population_samples=1000",
    ],
    "full_pixels": ["mixture=full"],
    "robust": ["mixture=robust"],
    "linf": ["certify=linf"],
    "synthetic_2": ["dataset=synthetic", "dataset.dim=4", "mixture.priors=uniform"],
    "synthetic_3": ["dataset=synthetic", "dataset.dim=4", "dataset.num_classes=3"],
}
DIGITS = [
    "shared",
    "full",
    pytest.param("full_pixels", marks=pytest.mark.slow),
    "robust",
    "linf",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(name)``: that configuration's config, metrics, table and closed-form predictions,
    run on first use and shared by every test of this module."""
    done: dict = {}

    def get(name):
        if name not in done:
            cfg = compose_config(tmp_path_factory.mktemp(name), [*FAST, *RUNS[name]])
            metrics = run(cfg)
            out = cfg.paths.output_dir
            preds = pd.read_csv(f"{out}/predictions.csv")
            done[name] = {
                "cfg": cfg,
                "metrics": metrics,
                "table": pd.read_csv(f"{out}/certified_accuracy.csv"),
                "preds": preds[preds["method"] == "closed_form"],
            }
        return done[name]

    return get


@pytest.fixture(params=DIGITS)
def digits_run(request, runs):
    return runs(request.param)


# -------------------------------------------------------------------- the written table


def test_table_is_sane_and_matches_the_predictions(digits_run):
    cfg, metrics, table, preds = (digits_run[k] for k in ("cfg", "metrics", "table", "preds"))
    rows = table[table["method"] == "closed_form"]
    assert rows["radius"].tolist() == list(cfg.certify.radii)
    assert (rows["norm"] == cfg.certify.norm).all() and (rows["space"] == "input").all()
    assert np.all(np.diff(rows["certified_accuracy"].to_numpy()) <= 0)
    assert (rows["ci_low"] <= rows["certified_accuracy"]).all()
    assert (rows["certified_accuracy"] <= rows["ci_high"]).all()
    clean = metrics["methods"]["closed_form"]["clean_accuracy"]
    assert clean == pytest.approx(preds["correct"].mean()) and clean > 0.85
    assert rows["certified_accuracy"].iloc[0] == pytest.approx(clean)  # radius 0
    assert len(preds) == metrics["certified_points"] and preds["index"].is_unique
    # Every row of the table is recomputed from the per-point radii.
    radius = preds["radius_input"].to_numpy()
    for r, ca in zip(rows["radius"], rows["certified_accuracy"], strict=True):
        assert ca == pytest.approx((preds["correct"].to_numpy() & (radius >= r)).mean())
    assert np.all(radius >= 0) and np.all(np.isfinite(radius))


def test_predictions_are_the_mixture_rule(digits_run):
    cfg, preds = digits_run["cfg"], digits_run["preds"]
    rebuilt = rebuild_run(cfg)
    mixture = rebuilt.mixture
    position = {int(index): p for p, index in enumerate(rebuilt.data.test.indices)}
    Z = rebuilt.Z_test[preds["index"].map(position).to_numpy()].astype(np.float64)
    np.testing.assert_array_equal(preds["predict"].to_numpy(), mixture.predict(Z))
    assert digits_run["metrics"]["covariance"] == mixture.covariance
    if mixture.is_linear_:
        # Linear rules: the radius is the distance to the boundary, written out here.
        M, c = mixture.linear_head()
        expected = linear_radius(M, c, Z, norm=cfg.certify.norm)
        np.testing.assert_allclose(preds["radius_latent"], expected, rtol=1e-9, atol=1e-12)
    if cfg.mixture.get("robust_radius") is not None:
        assert mixture.tau > 0  # the robust rule, not the Bayes rule, certified


def test_robust_rule_trades_clean_for_certified_accuracy(runs):
    """At its target radius the robust rule certifies clearly more than the Bayes rule (on
    digits: 0.85 against 0.74 at 0.25), paying for it in clean accuracy, not gaining any."""
    shared, robust = runs("shared"), runs("robust")
    target = robust["cfg"].mixture.robust_radius

    def at(done, radius):
        t = done["table"]
        return t.loc[np.isclose(t["radius"], radius), "certified_accuracy"].item()

    assert at(robust, target) > at(shared, target) + 0.05
    assert at(robust, 0.0) <= at(shared, 0.0) + 0.01


# ------------------------------------------------------------------------- CA under Q


def test_two_equiprobable_shared_classes_use_the_closed_form(runs):
    done = runs("synthetic_2")
    population, table = done["metrics"]["population_Q"], done["table"]
    assert population["method"] == "closed_form" and "samples" not in population
    rows = table[table["method"] == "closed_form"]
    q = rows["population_Q"].to_numpy()
    np.testing.assert_array_equal(population["ci_low"], q)
    np.testing.assert_array_equal(population["ci_high"], q)
    # Phi(Delta / 2 - rho ||a|| / Delta), a = Sigma^-1 (mu_1 - mu_0), from the rebuilt Q.
    mixture = rebuild_run(done["cfg"]).mixture
    diff = mixture.means_[1] - mixture.means_[0]
    a = np.linalg.solve(mixture.covariances_, diff)
    delta = np.sqrt(diff @ a)
    radii = rows["radius"].to_numpy()
    expected = stats.norm.cdf(delta / 2 - radii * np.linalg.norm(a) / delta)
    np.testing.assert_allclose(q, expected, rtol=1e-10)
    # The data are drawn from a Gaussian mixture, so the measured CA is close to CA under Q.
    assert np.all(rows["ci_low"] - 0.02 <= q) and np.all(q <= rows["ci_high"] + 0.02)


@pytest.mark.parametrize("name", ["shared", "robust", "full", "linf", "synthetic_3"])
def test_otherwise_monte_carlo(name, runs):
    done = runs(name)
    population, table = done["metrics"]["population_Q"], done["table"]
    assert population["method"] == "monte_carlo"
    assert population["samples"] == done["cfg"].certify.population_samples
    rows = table[table["method"] == "closed_form"]
    q = rows["population_Q"].to_numpy()
    low, high = np.asarray(population["ci_low"]), np.asarray(population["ci_high"])
    assert np.all(low <= q) and np.all(q <= high) and np.all(high - low < 0.1)
    assert np.all(np.diff(q) <= 0)


@pytest.mark.parametrize("name", ["shared", "robust", "linf", "synthetic_2", "synthetic_3"])
def test_ceiling_is_present_for_shared_covariance_and_never_below_ca_under_q(name, runs):
    """No classifier beats the optimal robust accuracy under Q: not the Bayes rule, not the
    robust rule (Monte Carlo: its lower interval end stays under the ceiling). For linf the
    ceiling is taken at the l2 radius the linf ball surely contains (the same radius here),
    so it bounds the linf robust accuracy too."""
    done = runs(name)
    rows = done["table"][done["table"]["method"] == "closed_form"]
    assert "ceiling_Q" in rows and rows["ceiling_Q"].notna().all()
    ceiling = rows["ceiling_Q"].to_numpy()
    assert np.all(np.diff(ceiling) <= 1e-12) and np.all((ceiling >= 0) & (ceiling <= 1))
    low = np.asarray(done["metrics"]["population_Q"]["ci_low"])
    assert np.all(low <= ceiling + 1e-12), (low, ceiling)
    if name == "synthetic_2":
        # Two equiprobable classes at radius 0: the Bayes rule is the optimum.
        assert ceiling[0] == pytest.approx(rows["population_Q"].iloc[0], abs=1e-12)


def test_ceiling_is_absent_without_a_shared_covariance(runs):
    done = runs("full")
    table = done["table"]
    assert "ceiling_Q" not in table or table["ceiling_Q"].isna().all()
    assert "not available" in done["metrics"]["population_Q"]["ceiling"]


def test_a_nonlinear_encoder_with_a_declared_bound_gets_input_radii_and_ca_under_q(
    make_cfg, tmp_path
):
    """A pretrained (nonlinear) encoder with an l2 bound: input radii by the transfer, and CA
    under Q at the matching latent radius, in every norm."""
    from conftest import write_cifar10
    from omegaconf import open_dict

    write_cifar10(tmp_path / "data" / "cifar10")
    for norm in ("l2", "linf"):
        cfg = make_cfg(
            "dataset=cifar10",
            "dataset.verify_checksums=false",
            "encoder=resnet18",
            "encoder.weights=random",
            "encoder.image_size=32",
            "encoder.lipschitz=100.0",
            "mixture.shrinkage=0.5",
            "certify.methods=[closed_form]",
            f"certify.norm={norm}",
            "certify.population_samples=2000",
            "divergence.enabled=false",
        )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / norm)
        metrics = run(cfg)
        assert metrics["methods"]["closed_form"]["radius_space"] == "input"
        assert metrics["population_Q"]["method"] == "monte_carlo"
