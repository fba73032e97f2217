"""The seams between the stages after certify (issue 19): a method states what it can do
(``radius_space``, ``under_q``, ``attackable``) and is never recognised by its name; the
stages return typed values and one module (gmcert.report.table) owns the table's columns;
the write stage records the attack's findings without importing the attack package."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from gmcert.attack.results import Findings
from gmcert.attack.stage import UnsoundCertificate, raise_if_unsound
from gmcert.bounds.degradation import bound_columns, degrade
from gmcert.bounds.kl import kl_inverse_lower
from gmcert.certify.methods import CertifyInputs, ClosedForm, RadiusSpace, Smoothing
from gmcert.certify.transfer import radius_transfer
from gmcert.data.synthetic import build_synthetic
from gmcert.encoders.linear import IdentityEncoder
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.population.columns import PopulationQ, population_q
from gmcert.report.outputs import write_run
from gmcert.report.published import PublishedCurve
from gmcert.report.table import (
    COLUMNS,
    MEASURED,
    Empirical,
    MethodSummary,
    SmoothingSummary,
    evaluate,
    result_table,
)

RADII = [0.0, 0.5, 1.0]
CERTIFY = {"norm": "l2", "batch_size": 4096, "dtype": "float64", "ci_alpha": 0.05}


class Opaque(torch.nn.Module):
    """An encoder with no Lipschitz bound and no linear map: radii stay in latent units."""

    lipschitz = None

    def __init__(self, dim: int):
        super().__init__()
        self.weight = torch.eye(dim, dtype=torch.float64) * 0.5

    def linear_map(self):
        return None

    def forward(self, x):
        return torch.tanh(x.flatten(1).double() @ self.weight)


@pytest.fixture(scope="module")
def data():
    return build_synthetic(num_classes=2, dim=3, n_train=400, n_test=40)


def certify_inputs(data, encoder, *, covariance="shared", population_samples=2000):
    with torch.no_grad():
        train = encoder(torch.as_tensor(data.train.inputs)).double().numpy()
        test = encoder(torch.as_tensor(data.test.inputs)).double().numpy()
    mixture = GaussianMixtureClassifier(covariance=covariance, priors="uniform")
    mixture.fit(train, data.train.labels)
    options = OmegaConf.create({**CERTIFY, "population_samples": population_samples})
    return CertifyInputs(
        mixture=mixture,
        encoder=encoder,
        data=data,
        train_latents=train,
        test_latents=test,
        device=torch.device("cpu"),
        options=options,
        seed=0,
        transfer=radius_transfer(encoder, "l2", data.test.input_dim),
    )


def population_of(methods, inputs):
    return population_q(
        methods,
        inputs.mixture,
        radii=RADII,
        options=inputs.options,
        device=inputs.device,
        seed=0,
    )


def renamed(method, name, **capabilities):
    """The same certificate under another name, optionally with other capabilities."""
    return SimpleNamespace(
        name=name,
        norm=method.norm,
        radius_space=method.radius_space,
        space=method.space,
        exact=method.exact,
        smoothing=method.smoothing,
        attackable=capabilities.get("attackable", method.attackable),
        under_q=capabilities.get("under_q", method.under_q),
        certify=method.certify,
    )


# ------------------------------------------------------------------- capabilities


def test_the_radius_space_is_decided_where_the_method_is_built(data):
    folded = ClosedForm(certify_inputs(data, IdentityEncoder()))
    assert folded.radius_space.space == "input" and folded.space == "input"
    assert folded.radius_space.folded is not None
    assert folded.radius_space.linear is not None  # the identity's exact map

    inputs = certify_inputs(data, IdentityEncoder(), covariance="full")
    through = ClosedForm(inputs)  # a quadratic rule: through the Lipschitz bound, not folded
    assert through.radius_space.space == "input"
    assert through.radius_space.folded is None
    assert through.radius_space.transfer is inputs.transfer

    latent = ClosedForm(certify_inputs(data, Opaque(data.test.input_dim)))
    assert latent.radius_space == RadiusSpace("latent")
    assert latent.radius_space.column == "radius_latent" and latent.space == "latent"
    assert latent.radius_space.linear is None

    # Smoothing's radii are input radii by construction: no fold, no transfer; not Q's rule.
    assert Smoothing.radius_space == RadiusSpace("input")
    assert Smoothing.under_q is False and Smoothing.attackable is True
    assert ClosedForm.under_q is True and ClosedForm.attackable is True


def test_ca_under_q_follows_the_capability_not_the_name(data):
    inputs = certify_inputs(data, IdentityEncoder())
    method = ClosedForm(inputs)
    original = population_of([method], inputs)
    mine = population_of([renamed(method, "my_rule")], inputs)
    assert mine is not None and mine.methods == ("my_rule",)
    np.testing.assert_array_equal(mine.accuracy, original.accuracy)
    np.testing.assert_array_equal(mine.ceiling_values, original.ceiling_values)
    # Named closed_form but not certifying Q's rule: no CA under Q, no ceiling.
    assert population_of([renamed(method, "closed_form", under_q=False)], inputs) is None

    # In the table: the values land on the capable method's rows and nowhere else.
    predictions = _predictions(data, method, name="my_rule")
    other = renamed(method, "other", under_q=False)
    predictions = pd.concat([predictions, _predictions(data, method, name="other")])
    measured = evaluate(predictions, [renamed(method, "my_rule"), other], radii=RADII, alpha=0.05)
    table = result_table(measured.table, population=mine)
    rows = table["method"] == "my_rule"
    np.testing.assert_array_equal(table.loc[rows, "population_Q"], mine.accuracy)
    assert table.loc[~rows, ["population_Q", "ceiling_Q"]].isna().all().all()


def test_ca_under_q_is_taken_in_the_methods_own_radius_space(data):
    """Latent radii for an encoder without a bound, input radii through the identity: the two
    population columns of the same two-class Q differ only by the radius space."""
    opaque = certify_inputs(data, Opaque(data.test.input_dim))
    latent = population_of([ClosedForm(opaque)], opaque)
    assert latent.method == "closed_form"  # two equiprobable classes: in closed form
    # The same mixture read as if its radii were input radii through a factor-2 bound: CA under
    # Q at r must be the latent CA at 2 r.
    method = ClosedForm(opaque)
    half = SimpleNamespace(factor=2.0, latent_norm="l2", inner_l2=None, linear=None)
    through = renamed(method, "through")
    through.radius_space = RadiusSpace("input", None, half)
    doubled = population_of([through], opaque)
    at_double = population_q(
        [method],
        opaque.mixture,
        radii=[2 * r for r in RADII],
        options=opaque.options,
        device=opaque.device,
        seed=0,
    )
    np.testing.assert_allclose(doubled.accuracy, at_double.accuracy, rtol=0, atol=1e-15)
    assert doubled.ceiling_values is None  # no inner radius known: no ceiling


# ------------------------------------------------------------------ table columns


def _predictions(data, method, *, name=None) -> pd.DataFrame:
    positions = np.arange(len(data.test))
    certified = method.certify(positions)
    return pd.DataFrame(
        {
            "method": name or method.name,
            "index": data.test.indices,
            "label": data.test.labels,
            "predict": certified.predict,
            "correct": certified.predict == data.test.labels,
            "radius_latent": certified.radius_latent,
            "radius_input": certified.radius_input,
            "seconds": 1e-6,
        }
    )


def test_one_module_owns_the_columns_and_their_order(data):
    inputs = certify_inputs(data, IdentityEncoder())
    method = ClosedForm(inputs)
    smooth = renamed(method, "smoothing_gmm", under_q=False)  # any method without CA under Q
    predictions = pd.concat(
        [_predictions(data, method), _predictions(data, method, name="smoothing_gmm")]
    )
    evaluation = evaluate(predictions, [method, smooth], radii=RADII, alpha=0.05)
    measured = evaluation.table
    before = measured.copy()
    assert tuple(measured.columns) == MEASURED
    population = population_of([method, smooth], inputs)
    closed = population.rows(measured)
    bounds = bound_columns(
        population_low=population.ci_low,
        ci_high=measured.loc[closed, "ci_high"].to_numpy(),
        eps=0.1,
        source="stated budget",
    )
    empirical = Empirical({"closed_form": np.array([0.9, 0.5, 0.1])}, {})
    published = [PublishedCurve("cohen2019_published", {0.0: 0.7, 0.5: 0.4})]
    table = result_table(
        measured, population=population, empirical=empirical, published=published, bounds=bounds
    )
    pd.testing.assert_frame_equal(measured, before)  # no stage edits the measured table
    assert list(table.columns) == [c for c in COLUMNS if c in table]
    assert list(table.columns) == [
        *MEASURED,
        "population_Q",
        "ceiling_Q",
        "empirical_robust_accuracy",
        "eps",
        "bound_at_eps",
        "pinsker_at_eps",
        "bretagnolle_huber_at_eps",
        "above_bound",
        "eps_source",
    ]
    rows = (table["method"] == "closed_form").to_numpy()
    np.testing.assert_array_equal(
        table.loc[rows, "bound_at_eps"], kl_inverse_lower(population.ci_low, 0.1)
    )
    assert table.loc[rows, "eps_source"].eq("stated budget").all()
    assert table["above_bound"].dtype == "boolean"
    assert table.loc[~rows, "above_bound"].isna().all()
    assert table.loc[~rows, ["population_Q", "eps", "bound_at_eps"]].isna().all().all()
    np.testing.assert_array_equal(table.loc[rows, "empirical_robust_accuracy"], [0.9, 0.5, 0.1])
    # The published curve is two rows of its own, in input l2, with no measured count.
    cohen = table[table["method"] == "cohen2019_published"]
    assert cohen["radius"].tolist() == [0.0, 0.5] and cohen["space"].eq("input").all()
    assert cohen["n"].isna().all()
    # Without the later stages only population_Q is added (NaN: no method has CA under Q).
    bare = result_table(measured)
    assert list(bare.columns) == [*MEASURED, "population_Q"]
    assert bare["population_Q"].isna().all()


def test_degrade_returns_the_bound_and_leaves_the_table_alone(data):
    inputs = certify_inputs(data, IdentityEncoder())
    method = ClosedForm(inputs)
    evaluation = evaluate(_predictions(data, method), [method], radii=RADII, alpha=0.05)
    before = evaluation.table.copy()
    population = population_of([method], inputs)
    options = OmegaConf.create({"enabled": False, "eps": 0.05, "truth_samples": 1000})
    degradation = degrade(
        evaluation.table,
        population,
        inputs.mixture,
        inputs.test_latents,
        data.test.labels,
        options,
        seed=0,
        device="cpu",
    )
    pd.testing.assert_frame_equal(evaluation.table, before)
    bounds = degradation.bounds
    np.testing.assert_array_equal(bounds.at_eps, kl_inverse_lower(population.ci_low, 0.05))
    assert bounds.source == degradation.metrics["eps_source"] == "stated budget"
    assert degradation.metrics["measured_above_bound"] == bool(bounds.above.all())
    assert degradation.sensitivity.rows["population_Q"].tolist() == population.accuracy.tolist()


# ------------------------------------------------------------------ typed results


def test_method_summary_keeps_the_metrics_json_layout():
    plain = MethodSummary(0.9, 0.3, 0.0, "input", True, 10, 1e-6)
    assert list(plain.as_metrics()) == [
        "clean_accuracy",
        "average_certified_radius",
        "abstain_rate",
        "radius_space",
        "exact",
        "points",
        "seconds_per_point",
    ]
    smoothing = SmoothingSummary(radius_cap=0.9, sigma=0.25, n=100, n0=10, alpha=0.001, at_cap=0.5)
    entry = MethodSummary(0.9, 0.3, 0.0, "input", True, 10, 1e-6, smoothing).as_metrics()
    assert list(entry)[7:] == ["radius_cap", "sigma", "n", "n0", "alpha", "at_cap"]
    assert entry["sigma"] == 0.25 and entry["at_cap"] == 0.5


def test_population_metrics_keep_the_metrics_json_layout():
    one = np.array([0.5, 0.25])
    mc = PopulationQ(("m",), one, one - 0.1, one + 0.1, None, "monte_carlo", 100, "why not")
    assert mc.as_metrics() == {
        "method": "monte_carlo",
        "ci_low": [0.4, 0.15],
        "ci_high": [0.6, 0.35],
        "samples": 100,
        "ceiling": "why not",
    }
    exact = PopulationQ(("m",), one, one, one, one, "closed_form", None, "what")
    assert list(exact.as_metrics()) == ["method", "ci_low", "ci_high", "ceiling"]


# -------------------------------------------------------------------- findings


def test_the_write_stage_records_findings_and_the_attack_stage_ends_the_run(data, tmp_path):
    inputs = certify_inputs(data, IdentityEncoder())
    method = ClosedForm(inputs)
    predictions = _predictions(data, method)
    table = result_table(evaluate(predictions, [method], radii=RADII, alpha=0.05).table)
    violation = {"index": 3, "method": "closed_form", "norm": "l2", "space": "input"}
    radius = pd.Series(np.ones(len(data.test)), index=data.test.indices)
    found = Findings({"closed_form": radius}, [], [violation])
    written = write_run(
        tmp_path, table, predictions, None, {}, title="t", methods=[method], findings=found
    )
    assert written == tmp_path / "unsound.json"
    assert json.loads(written.read_text()) == [violation]
    assert (tmp_path / "certified_accuracy.png").stat().st_size > 0
    with pytest.raises(UnsoundCertificate, match=r"inside 1 certified radii of closed_form"):
        raise_if_unsound(found, written)

    clean = Findings({"closed_form": radius}, [], [])
    out = tmp_path / "clean"
    out.mkdir()
    assert (
        write_run(out, table, predictions, None, {}, title="t", methods=[method], findings=clean)
        is None
    )
    assert not (out / "unsound.json").exists()
    raise_if_unsound(clean, None)  # nothing found: the run ends normally
