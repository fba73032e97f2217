"""What the eps estimators return: :class:`TermEstimate`, and plain-JSON conversion of reports.

Every estimator writes its estimate as a mean of per-sample terms (minus a log-mean-exp over Q
terms for sampled Donsker-Varadhan), so :mod:`gmcert.eps.bootstrap` can resample the terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TermEstimate", "to_jsonable"]


@dataclass(frozen=True)
class TermEstimate:
    """An estimate written as an average of per-sample terms, so it can be bootstrapped.

    ``estimate = mean(p_terms) - log mean exp(q_log_terms)`` (the second part only when
    ``q_log_terms`` is given: the sampled Donsker-Varadhan partition term), in nats.

    Attributes:
        estimate: the point estimate (float, nats). May be negative for KL estimators whose
            target is >= 0; it is reported as is, never clipped.
        p_terms: (n,) float64 per-sample terms over the P sample.
        q_log_terms: (m,) float64 values of T on a Q sample, or None.
        info: free-form diagnostics (neighbour count k, zero distances skipped, ...).
    """

    estimate: float
    p_terms: np.ndarray
    q_log_terms: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


def to_jsonable(obj):
    """Plain Python containers and floats; NaN/inf become None (JSON has no such numbers)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj
