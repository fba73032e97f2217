"""Certified accuracy from per-point radii (THEORY.md section 5), with exact intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gmcert.bounds.confidence import clopper_pearson_lower, clopper_pearson_upper


def certified_accuracy(correct, radii, at, *, alpha: float) -> pd.DataFrame:
    """CA(r) = mean(correct and radius >= r) at each r in ``at``, abstentions counting wrong.

    ``ci_low`` / ``ci_high`` are one-sided Clopper-Pearson bounds, each holding with
    probability at least 1 - alpha over the draw of the n test points.
    """
    correct = np.asarray(correct, bool)
    radii = np.asarray(radii, np.float64)
    at = np.asarray(at, np.float64)
    n = len(correct)
    hits = ((correct[None, :]) & (radii[None, :] >= at[:, None])).sum(axis=1)
    return pd.DataFrame(
        {
            "radius": at,
            "certified_accuracy": hits / max(n, 1),
            "ci_low": clopper_pearson_lower(hits, n, alpha),
            "ci_high": clopper_pearson_upper(hits, n, alpha),
            "n": n,
        }
    )


def average_certified_radius(correct, radii) -> float:
    """Mean radius over all points, counting wrong or abstained points as 0."""
    correct = np.asarray(correct, bool)
    return float(np.where(correct, np.asarray(radii, np.float64), 0.0).mean())


def population_certified_accuracy(
    mixture, certifier, radii, *, samples: int, alpha: float, seed: int, batch_size: int = 65536
) -> pd.DataFrame:
    """CA_Q(rho) by Monte Carlo: draw (z, y) from the fitted mixture Q and certify each draw.

    ``radii`` are in the certifier's latent units. The interval is Clopper-Pearson over the
    ``samples`` independent draws (THEORY.md section 5, the case with no closed form).
    """
    from gmcert.certify import certify_latents

    Z, y = mixture.sample(samples, random_state=seed)
    codes, radius = certify_latents(certifier, Z, batch_size=batch_size)
    correct = mixture.classes_[codes] == y
    return certified_accuracy(correct, radius, radii, alpha=alpha)
