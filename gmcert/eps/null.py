"""Null calibration: every estimator run on samples of Q itself, where KL(P || Q) = 0 exactly.

docs/theory.md section 7. The kNN and plug-in estimators are biased by nats at practical sizes
once the dimension is in the tens, the DV bound errs low; a reading of "0.4 nats" means little
until it is known what the same estimator reads when the truth is 0. So each estimator is also
run on ``replicates`` seeded samples drawn from Q's own components, with the real run's
per-class sizes (after ``max_per_class``), dimension, neighbour order and estimator settings.
Their joint readings (the label term left out: it is exact, so it has no bias) give the null
mean ``m0`` and spread ``s0`` (sample standard deviation over replicates), and

    corrected = raw - m0,
    interval  = [corrected - sqrt(h_lo^2 + (z s0)^2),  corrected + sqrt(h_hi^2 + (z s0)^2)],

with ``h_lo, h_hi`` the raw bootstrap interval's half-widths and ``z`` the normal quantile at
1 - alpha/2. ``s0`` is the estimator's whole run-to-run spread at this size (the bootstrap holds
the neighbour structure and the fitted discriminator fixed, so it misses part of it) and it
bounds the null mean's own error ``s0 / sqrt(replicates)``. The correction assumes the bias at
P is the bias at Q; the known-truth table (scripts/eps_error_table.py, README) measures how far
that holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from gmcert.eps.per_class import ESTIMATORS, ClassContext

__all__ = ["NULL_SEED", "corrected_interval", "null_readings", "resolution_line"]

NULL_SEED = 0x4E55  # the null draws' own stream: they never share numbers with the real run


def null_readings(
    means: np.ndarray,
    covs: np.ndarray,
    sizes: Sequence[int],
    weights: np.ndarray,
    estimators: Sequence[str],
    *,
    replicates: int,
    context: dict,
    random_state: int,
    min_size: int,
) -> dict[str, np.ndarray]:
    """Per estimator, (replicates, K) per-class readings on samples of Q (NaN where a class is
    too small for the estimator, 0 where it is empty), and under the key ``"<name>:joint"``
    the (replicates,) weighted sums ``weights @ readings`` (the label term is exact and left
    out). ``context``: the ClassContext settings of the real run (search, q_ratio, dv_split,
    C_grid), so the null sees exactly the estimators the data saw."""
    K, d = means.shape
    out = {e: np.full((replicates, K), np.nan) for e in estimators}
    chols = {}
    for r in range(replicates):
        for c in range(K):
            n_c = int(sizes[c])
            if n_c == 0:
                for e in estimators:
                    out[e][r, c] = 0.0  # weight 0: contributes nothing
                continue
            rng = np.random.default_rng([random_state, NULL_SEED, r, c])
            if c not in chols:
                chols[c] = np.linalg.cholesky(covs[c])
            X = means[c] + rng.standard_normal((n_c, d)) @ chols[c].T
            ctx = ClassContext(
                X, means[c], covs[c], seed=(random_state, NULL_SEED, r, c), **context
            )
            ctx.chol = chols[c]
            for e in estimators:
                need, fn = ESTIMATORS[e]
                if n_c >= max(need, min_size):
                    out[e][r, c] = fn(ctx).estimate
    joint = {f"{e}:joint": out[e] @ weights for e in estimators}
    return {**out, **joint}


def corrected_interval(
    raw: float, ci_low: float | None, ci_high: float | None, null_std: float, alpha: float
) -> tuple[float, float]:
    """The corrected reading's interval (module docstring): bootstrap half-widths and z times
    the null spread added in quadrature, around ``raw`` already shifted by the null mean."""
    z = float(stats.norm.ppf(1 - alpha / 2))
    h_lo = 0.0 if ci_low is None else raw - ci_low
    h_hi = 0.0 if ci_high is None else ci_high - raw
    spread = z * null_std
    return math.hypot(h_lo, spread), math.hypot(h_hi, spread)


def resolution_line(name: str, corrected: float, null_std: float) -> str | None:
    """One line when the null spread is larger than the eps the estimator reports (its
    corrected reading, negative counted as 0): it cannot tell that eps from 0 at this size."""
    if null_std > max(corrected, 0.0):
        return (
            f"{name} cannot resolve eps at this sample size: its spread on samples of Q "
            f"({null_std:.3g} nats) is larger than the eps it reports ({max(corrected, 0.0):.3g})"
        )
    return None
