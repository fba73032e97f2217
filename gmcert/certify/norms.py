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


def l2_per_unit(norm: str, dim: int) -> float:
    """The largest ||x||_2 over ||x||_norm = 1 in dimension ``dim``: sqrt(dim) for linf, 1 for
    l2 and l1. An l2 -> l2 Lipschitz bound L is therefore a ``norm`` -> l2 bound of
    L * l2_per_unit(norm, dim)."""
    check_norm(norm)
    return math.sqrt(dim) if norm == "linf" else 1.0


def l2_radius_inside(norm: str, dim: int) -> float:
    """The radius of the largest l2 ball inside the unit ``norm`` ball in dimension ``dim``:
    1 for l2 and linf, 1 / sqrt(dim) for l1."""
    check_norm(norm)
    return 1 / math.sqrt(dim) if norm == "l1" else 1.0
