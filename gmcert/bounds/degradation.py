"""Graceful degradation (THEORY.md section 6): what eps = KL(P || Q) implies for CA under P.

Turns CA under Q and an eps (estimated on held-out latents, or a budget the user states) into
the table's bound columns, and checks whether the measured certified accuracy sits above the
bound: the falsification check a referee asks for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gmcert.bounds.kl import bretagnolle_huber_lower, kl_inverse_lower, pinsker_lower


def eps_from_estimates(estimates: dict) -> dict:
    """The eps the report uses: the largest joint point estimate over estimators (the most
    pessimistic; every estimator is biased in high dimension) and the largest interval end.

    Negative estimates (KL >= 0, so estimator error) count as 0.
    """
    joint = {name: v for name, v in estimates["joint"].items() if v.get("estimate") is not None}
    if not joint:
        raise ValueError("no estimator produced a joint eps estimate; see divergence notes")
    point = max(max(v["estimate"], 0.0) for v in joint.values())
    upper = max(max(v["ci_high"], 0.0) for v in joint.values() if v.get("ci_high") is not None)
    worst = max(joint, key=lambda n: joint[n]["estimate"])
    return {"eps_hat": point, "eps_upper": max(upper, point), "from_estimator": worst}


def add_bound_columns(
    table: pd.DataFrame,
    *,
    population_low,
    eps: float,
    eps_upper: float | None = None,
    eps_true: float | None = None,
) -> pd.DataFrame:
    """Bound columns on the rows that have CA under Q (``population_low`` aligned with them).

    ``population_low`` is the lower Clopper-Pearson end of the Monte Carlo CA_Q, so the bound
    holds for the stated eps at the interval's confidence, not only for the point estimate.
    ``above_bound``: the measured certified accuracy's upper interval end is at or above the
    bound at eps (False would falsify the claim that KL(P || Q) <= eps).
    """
    rows = table["population_Q"].notna()
    q = np.asarray(population_low, np.float64)
    table["eps"] = np.nan
    table.loc[rows, "eps"] = eps
    for column, values in {
        "bound_at_eps": kl_inverse_lower(q, eps),
        "pinsker_at_eps": pinsker_lower(q, eps),
        "bretagnolle_huber_at_eps": bretagnolle_huber_lower(q, eps),
    }.items():
        table[column] = np.nan
        table.loc[rows, column] = values
    # At the interval's upper end; at the true eps where the data's law is known.
    for column, value in (("bound_at_eps_upper", eps_upper), ("bound_at_true_eps", eps_true)):
        if value is not None:
            table[column] = np.nan
            table.loc[rows, column] = kl_inverse_lower(q, value)
    table["above_bound"] = pd.Series(pd.NA, index=table.index, dtype="boolean")
    table.loc[rows, "above_bound"] = (
        table.loc[rows, "ci_high"] >= table.loc[rows, "bound_at_eps"] - 1e-12
    )
    return table


def sensitivity_curves(population_low, eps_grid) -> np.ndarray:
    """The kl-inverse bound on a grid of eps (rows) for each CA_Q value (columns)."""
    return kl_inverse_lower(np.asarray(population_low)[None, :], np.asarray(eps_grid)[:, None])
