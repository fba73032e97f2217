"""gmcert: certified robustness from approximate Gaussian-mixture structure in latent spaces.

The small public API; the command line (``gmcert-run``, ``gmcert-report``) wraps the same.
Each name is imported on first use (PEP 562), so that ``import gmcert.config`` or
``gmcert-report`` does not load every certifier, estimator and their libraries.
"""

from __future__ import annotations

from gmcert.lazy import lazy_exports

__version__ = "0.1.0"

_HOMES = {
    "ABSTAIN": "gmcert.certify.smoothing",
    "GaussianMixtureClassifier": "gmcert.models.mixture",
    "LinearCertifier": "gmcert.certify.linear",
    "QuadraticCertifier": "gmcert.certify.quadratic",
    "SmoothedClassifier": "gmcert.certify.smoothing",
    "certified_accuracy": "gmcert.confidence",
    "estimate_eps": "gmcert.eps",
    "kl_inverse_lower": "gmcert.bounds.kl",
    "run": "gmcert.pipeline",
}

__all__ = sorted(_HOMES)


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
