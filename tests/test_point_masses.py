"""Point masses make KL(P || Q) infinite: gmcert finds them and says so, instead of printing
the finite numbers the density-based estimators return."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gmcert.eps.atoms import point_masses
from gmcert.pipeline import run


def test_continuous_latents_have_none():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((2000, 8))
    found = point_masses(Z, np.arange(2000) % 2)
    assert not found["found"]
    assert all(c["coordinates"] == 0 for c in found["per_class"].values())


def test_relu_zeros_and_a_dead_unit_are_found():
    rng = np.random.default_rng(0)
    Z = np.maximum(rng.standard_normal((1000, 6)), 0)  # half exact zeros per coordinate
    Z[:, 5] = 0.0
    codes = np.zeros(1000, int)
    codes[500:] = 1
    found = point_masses(Z, codes)
    assert found["found"]
    for entry in found["per_class"].values():
        assert entry["coordinates"] == 6
        assert entry["largest_share"] == 1.0 and entry["value"] == 0.0


def test_a_rare_tie_is_not_a_mass():
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((1000, 3))
    Z[1, 0] = Z[0, 0]  # two equal values in 1,000: below the 1% share
    assert not point_masses(Z, np.zeros(1000, int))["found"]
    Z[:20, 1] = 0.5  # 2% of the points on one value
    found = point_masses(Z, np.zeros(1000, int))
    assert found["found"] and found["per_class"][0]["value"] == 0.5


@pytest.mark.e2e
def test_a_run_on_pixels_reports_infinite_eps_and_a_vacuous_bound(make_cfg):
    """Digits pixels are integers 0..16 and corners always 0: P has no density."""
    cfg = make_cfg("certify=closed_form", "attack=none", "divergence.enabled=true")
    metrics = run(cfg)
    divergence = metrics["divergence"]
    assert divergence["point_masses"]["found"]
    assert divergence["eps_hat"] == "inf" or math.isinf(divergence["eps_hat"])
    assert "no density" in divergence["verdict"]
    table = pd.read_csv(f"{cfg.paths.output_dir}/certified_accuracy.csv")
    rows = table[table["population_Q"].notna()]
    assert (rows["bound_at_eps"] == 0).all()
    # The null calibration is skipped there: it cannot correct an infinite eps, and on
    # 60,000 Fashion-MNIST pixels it cost five times the certify stage.
    assert divergence["estimates"]["null"] is None
    assert any("point masses" in line for line in divergence["calibration_summary"])
