"""Certified accuracy under the mixture Q itself (docs/theory.md section 5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import linalg, stats

from gmcert.certify.latent import certify_latents
from gmcert.certify.norms import DUAL_EXPONENT, check_norm
from gmcert.confidence import certified_accuracy


def two_class_certified_accuracy(
    mu0, mu1, cov, radii, *, norm: str = "l2", input_weight=None
) -> np.ndarray:
    """Closed-form CA_Q(rho) for two equiprobable classes with a shared covariance.

    The Bayes rule of Q is linear; a point is certified at ``rho`` (in the ``norm`` of the
    latent space) when its margin over ``||a||_q`` is at least ``rho``, which gives
    ``CA_Q(rho) = Phi(Delta / 2 - rho ||a||_q / Delta)`` with ``a = Sigma^-1 (mu1 - mu0)`` and
    ``Delta`` the Mahalanobis separation. With ``input_weight`` W (z = W (x - m)), the rule
    certified in input space instead: the margin is the same, its dual norm ``||W^T a||_q``.
    """
    check_norm(norm, "norm")
    diff = np.asarray(mu1, np.float64) - np.asarray(mu0, np.float64)
    a = linalg.solve(np.asarray(cov, np.float64), diff, assume_a="pos")
    delta = float(np.sqrt(diff @ a))
    direction = a if input_weight is None else np.asarray(input_weight, np.float64).T @ a
    a_dual = np.linalg.norm(direction, ord=DUAL_EXPONENT[norm])
    radii = np.asarray(radii, np.float64)
    return stats.norm.cdf(delta / 2 - radii * a_dual / delta)


def population_certified_accuracy(
    mixture,
    certifier,
    radii,
    *,
    samples: int,
    alpha: float,
    seed: int,
    batch_size: int = 65536,
    to_input=None,
) -> pd.DataFrame:
    """CA_Q(rho) by Monte Carlo: draw (z, y) from the fitted mixture Q and certify each draw.

    ``radii`` are in the certifier's units. The interval is Clopper-Pearson over the
    ``samples`` independent draws (docs/theory.md section 5, the case with no closed form).
    ``to_input`` maps latents to inputs for a certifier of the rule folded into a linear
    encoder (its radii depend on z alone, so any preimage gives the same certificate).
    """
    Z, y = mixture.sample(samples, random_state=seed)
    if to_input is not None:
        Z = to_input(Z)
    codes, radius = certify_latents(certifier, Z, batch_size=batch_size)
    correct = mixture.classes_[codes] == y
    return certified_accuracy(correct, radius, radii, alpha=alpha)
