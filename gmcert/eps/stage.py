"""The eps stage: estimates of KL(P || Q) with intervals, their null calibration, and Gaussianity
diagnostics, on the held-out test latents against the fitted mixture (docs/theory.md
section 7)."""

from __future__ import annotations

import math

import numpy as np

from gmcert.eps import estimate_eps, gaussianity_tests
from gmcert.eps.atoms import point_masses
from gmcert.models.mixture import GaussianMixtureClassifier


def estimate_for_mixture(
    mixture: GaussianMixtureClassifier, Z_test, y_test, options, *, seed: int, device
) -> dict:
    """Every estimator's eps per class and jointly, its null calibration, the diagnostics, and
    the eps the bound uses (``eps_hat``: the largest null-corrected joint estimate, the most
    pessimistic; the raw readings' choice is kept as ``eps_raw``; None when no estimator gave a
    joint estimate, e.g. classes too small; inf when some class's latents have a point mass,
    :mod:`gmcert.eps.atoms`). ``options``: the ``divergence`` config."""
    codes = np.searchsorted(mixture.classes_, y_test)
    masses = point_masses(Z_test, codes)
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
        k=options.k,
        q_ratio=options.q_ratio,
        dv_split=options.dv_split,
        C_grid=list(options.dv_C_grid),
        # With point masses eps is inf whatever the estimators read: no null to correct them by
        # (on 60,000 Fashion-MNIST pixels it cost 5x the certify stage).
        null_replicates=0 if masses["found"] else options.null_replicates,
    )
    raw = pessimistic_eps(estimates)
    eps = corrected_eps(estimates) if estimates.get("null") else {**raw, "eps_basis": "raw"}
    if masses["found"]:
        # The estimators assume P has a density and print finite numbers; it has none.
        eps = {
            "eps_hat": math.inf,
            "eps_upper": math.inf,
            "eps_ci_low": math.inf,
            "from_estimator": "point_masses",
            "eps_basis": "point masses",
        }
    result = {
        "estimates": estimates,
        "gaussianity": gaussianity_tests(Z_test, codes),
        "point_masses": masses,
        "eps_raw": raw,
        **eps,
    }
    result["calibration_summary"] = calibration_summary(result)
    return result


def _lowest(ends: list) -> float | None:
    ends = [max(e, 0.0) for e in ends if e is not None]
    return min(ends) if ends else None


def pessimistic_eps(estimates: dict) -> dict:
    """The raw readings' eps: the largest joint point estimate over estimators (every estimator
    is biased in high dimension), the largest interval end and the smallest low end. Negative
    estimates (KL >= 0, so estimator error) count as 0. ``eps_hat`` is None when there is no
    estimate."""
    return _most_pessimistic(estimates["joint"], "estimate")


def corrected_eps(estimates: dict) -> dict:
    """The eps the bound uses with a null calibration: as :func:`pessimistic_eps`, over the
    null-corrected joint estimates and their intervals."""
    corrected = _most_pessimistic(estimates["null"]["joint"], "corrected")
    return {**corrected, "eps_basis": "null-corrected"}


def _most_pessimistic(joint: dict, key: str) -> dict:
    """Over the estimators with a ``key`` reading: the largest (never below 0) with its
    estimator and own interval, the largest interval end, and the smallest low end."""
    joint = {name: v for name, v in joint.items() if v.get(key) is not None}
    if not joint:
        return {"eps_hat": None, "eps_upper": None, "eps_ci_low": None, "from_estimator": None}
    worst = max(joint, key=lambda n: joint[n][key])
    point = max(joint[worst][key], 0.0)
    ends = [max(v["ci_high"], 0.0) for v in joint.values() if v.get("ci_high") is not None]
    return {
        "eps_hat": point,
        "eps_upper": max([*ends, point]),
        "eps_ci_low": _lowest([v.get("ci_low") for v in joint.values()]),
        "from_estimator": worst,
        # the chosen estimator's own interval, as eps_sensitivity.png marks it
        "interval": [joint[worst].get("ci_low"), joint[worst].get("ci_high")],
    }


def calibration_summary(result: dict) -> list[str]:
    """The printed lines: per estimator its raw reading, null mean and spread, and corrected
    reading with intervals; which eps the bound is evaluated at; which estimators cannot
    resolve eps at this size."""
    null = result["estimates"].get("null")
    if result["eps_basis"] == "point masses" and not null:
        return [
            "eps = inf: the latents have point masses (no null calibration: it cannot "
            "correct an infinite eps)"
        ]
    if not null:
        return []

    def interval(lo, hi) -> str:
        return "" if lo is None or hi is None else f" [{lo:.3g}, {hi:.3g}]"

    lines = [
        f"eps per estimator (nats; null: the same estimator on {null['replicates']} samples "
        "of Q itself, where KL = 0):"
    ]
    unresolved = []
    for name, v in null["joint"].items():
        if v["corrected"] is None:
            lines.append(f"  {name}: no joint estimate")
            continue
        lines.append(
            f"  {name}: raw {v['raw']:.4g}{interval(v['raw_ci_low'], v['raw_ci_high'])}, "
            f"null {v['null_mean']:.3g} +- {v['null_std']:.2g}, corrected "
            f"{v['corrected']:.4g}{interval(v['ci_low'], v['ci_high'])}"
        )
        if not v["resolves"]:
            unresolved.append(
                f"  {name} cannot resolve eps at this sample size (null spread "
                f"{v['null_std']:.3g} > its corrected eps {max(v['corrected'], 0.0):.3g})"
            )
    lines.extend(unresolved)
    if result["eps_basis"] == "point masses":
        lines.append("  the bound uses eps = inf: the latents have point masses")
    elif result["eps_hat"] is not None:
        lines.append(
            f"  the bound is evaluated at the corrected eps of {result['from_estimator']} "
            f"(the largest): {result['eps_hat']:.4g}, upper end {result['eps_upper']:.4g}"
        )
    return lines
