"""gmcert: certified robustness from approximate Gaussian-mixture structure in latent spaces.

The small public API; the command line (``gmcert-run``, ``gmcert-report``) wraps the same.
Each name is imported on first use (PEP 562), so that ``import gmcert.config`` or
``gmcert-report`` does not load every certifier, estimator and their libraries.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_HOMES = {
    "ABSTAIN": "gmcert.certify.smoothing",
    "GaussianMixtureClassifier": "gmcert.models.mixture",
    "LinearCertifier": "gmcert.certify.linear",
    "QuadraticCertifier": "gmcert.certify.quadratic",
    "SmoothedClassifier": "gmcert.certify.smoothing",
    "certified_accuracy": "gmcert.report.table",
    "estimate_eps": "gmcert.eps",
    "kl_inverse_lower": "gmcert.bounds.kl",
    "run": "gmcert.pipeline",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'gmcert' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
