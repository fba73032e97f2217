"""The eps stage: estimates of KL(P || Q) with intervals, and Gaussianity diagnostics, on the
held-out test latents against the fitted mixture (docs/theory.md section 7)."""

from __future__ import annotations

import math

import numpy as np

from gmcert.eps import estimate_eps, gaussianity_tests
from gmcert.eps.atoms import point_masses
from gmcert.models.mixture import GaussianMixtureClassifier


def estimate_for_mixture(
    mixture: GaussianMixtureClassifier, Z_test, y_test, options, *, seed: int, device
) -> dict:
    """Every estimator's eps per class and jointly, the diagnostics, and the eps the bound uses
    (``eps_hat``: the largest joint estimate, the most pessimistic; None when no estimator
    gave a joint estimate, e.g. classes too small; inf when some class's latents have a point
    mass, :mod:`gmcert.eps.atoms`). ``options``: the ``divergence`` config."""
    codes = np.searchsorted(mixture.classes_, y_test)
    estimates = estimate_eps(
        Z_test,
        codes,
        means=mixture.means_,
        covariances=mixture.class_covariances(),  # Q itself, not the robust rule's Sigma + tau I
        priors=mixture.priors_,
        estimators=list(options.estimators),
        n_boot=options.n_boot,
        alpha=options.alpha,
        random_state=seed,
        device=device,
        max_per_class=options.max_per_class,
    )
    lows = [v["ci_low"] for v in estimates["joint"].values() if v.get("ci_low") is not None]
    masses = point_masses(Z_test, codes)
    eps = pessimistic_eps(estimates)
    if masses["found"]:
        # The estimators assume P has a density and print finite numbers; it has none.
        eps = {"eps_hat": math.inf, "eps_upper": math.inf, "from_estimator": "point_masses"}
    return {
        "estimates": estimates,
        "gaussianity": gaussianity_tests(Z_test, codes),
        "point_masses": masses,
        "eps_ci_low": math.inf if masses["found"] else (min(lows) if lows else None),
        **eps,
    }


def pessimistic_eps(estimates: dict) -> dict:
    """The eps the report uses: the largest joint point estimate over estimators (every
    estimator is biased in high dimension) and the largest interval end. Negative estimates
    (KL >= 0, so estimator error) count as 0. ``eps_hat`` is None when there is no estimate."""
    joint = {name: v for name, v in estimates["joint"].items() if v.get("estimate") is not None}
    if not joint:
        return {"eps_hat": None, "eps_upper": None, "from_estimator": None}
    point = max(max(v["estimate"], 0.0) for v in joint.values())
    ends = [max(v["ci_high"], 0.0) for v in joint.values() if v.get("ci_high") is not None]
    worst = max(joint, key=lambda n: joint[n]["estimate"])
    return {"eps_hat": point, "eps_upper": max([*ends, point]), "from_estimator": worst}
