"""gmcert: certified robustness from approximate Gaussian-mixture structure in latent spaces.

The small public API; the command line (``gmcert-run``, ``gmcert-report``) wraps the same.
"""

from gmcert.bounds.kl import kl_inverse_lower
from gmcert.certify.linear import LinearCertifier
from gmcert.certify.quadratic import QuadraticCertifier
from gmcert.certify.smoothing import ABSTAIN, SmoothedClassifier
from gmcert.eps import estimate_eps
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.report.table import certified_accuracy

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "GaussianMixtureClassifier",
    "LinearCertifier",
    "QuadraticCertifier",
    "SmoothedClassifier",
    "certified_accuracy",
    "estimate_eps",
    "kl_inverse_lower",
    "run",
]


def run(cfg):
    """Run one composed config end to end (see ``gmcert.pipeline.run``)."""
    from gmcert.pipeline import run as _run

    return _run(cfg)
