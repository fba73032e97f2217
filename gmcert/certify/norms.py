"""The perturbation norms gmcert certifies, and their duals (1/p + 1/q = 1).

One table for every certifier: the distance in the lp norm to a hyperplane {a^T z = b} is
|a^T z - b| / ||a||_q with q the dual exponent of p.
"""

from __future__ import annotations

import math

NORMS = ("l2", "linf", "l1")

# p -> q, as the `ord` / `p` argument numpy and torch take.
DUAL_EXPONENT = {"l2": 2.0, "linf": 1.0, "l1": math.inf}


def check_norm(norm: str, option: str = "certify.norm") -> str:
    """``norm`` itself when it is one of NORMS, else a ValueError naming the option."""
    if norm not in NORMS:
        raise ValueError(f"{option} must be one of {NORMS}, got {norm!r}")
    return norm
