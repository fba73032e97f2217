"""Input checks of the eps estimators' own options (the neighbour order k); the sample and
Gaussian checks every layer shares are in :mod:`gmcert.checks`.

Each check raises ``ValueError`` with the fix in the message.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_k"]


def check_k(k: int, available: int, what: str) -> None:
    """k must be a positive integer with at least k candidate neighbours available."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if available < k:
        raise ValueError(
            f"k={k} neighbours requested but {what} has only {available} candidate points; "
            "lower k or pass more samples"
        )
