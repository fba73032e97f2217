"""The fit stage: the mixture's Bayes rule, or the robust linear rule (docs/theory.md section 2),
from the train latents.

The robust rule is LDA with the shared covariance replaced by Sigma + tau I. Two classes: tau is the
closed-form optimum for the target radius (Bhagoji et al. 2019; Dan et al. 2020). K > 2 classes:
one shared tau chosen to maximise certified accuracy at the target radius on a held-out split
of train (never test), then the rule is refitted on all of train with that tau.
"""

from __future__ import annotations

import logging

import numpy as np
from omegaconf import OmegaConf
from sklearn.base import clone
from sklearn.model_selection import train_test_split

from gmcert.certify.latent import certify_latents
from gmcert.certify.linear import LinearCertifier
from gmcert.memory import check_memory
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.population.ceiling import impossibility_radius, robust_tau

log = logging.getLogger(__name__)


# d x d float64 matrices a fit holds at once per covariance (scatter, shrunk covariance, its
# Cholesky factor and inverse, the precision, a temporary): a count of the algebra, not a
# measurement; enough to stop fits hundreds of times too big, not to predict one exactly.
_MATRICES_PER_COVARIANCE = 6


def fit_memory_bytes(dim: int, num_classes: int, covariance: str) -> int:
    """Peak bytes of the covariance algebra of one fit of ``covariance`` on ``dim`` latents."""
    per_class = covariance in ("full", "lowrank")
    matrices = 0 if covariance == "diag" else (num_classes if per_class else 1)
    return _MATRICES_PER_COVARIANCE * matrices * dim * dim * 8


def fit_mixture(Z_train, y_train, mixture_cfg, *, seed: int) -> GaussianMixtureClassifier:
    """The mixture fitted as ``mixture_cfg`` says: plain, or robust at ``robust_radius``."""
    opts = OmegaConf.to_container(mixture_cfg, resolve=True)
    dim, num_classes = Z_train.shape[1], len(np.unique(y_train))
    check_memory(
        fit_memory_bytes(dim, num_classes, opts["covariance"]),
        f"fitting mixture.covariance={opts['covariance']} on {dim}-dimensional latents",
        "use a pretrained encoder (encoder=resnet50, vit, clip, dinov2), fewer dimensions "
        "(encoder=pca on in-memory data), or mixture.covariance=diag",
    )
    opts.pop("name", None)
    robust_radius = opts.pop("robust_radius")
    holdout = opts.pop("holdout_fraction")
    mixture = GaussianMixtureClassifier(**opts, random_state=seed)
    if robust_radius is None:
        return mixture.fit(Z_train, y_train)
    return fit_robust_mixture(
        mixture, Z_train, y_train, radius=robust_radius, holdout_fraction=holdout, seed=seed
    )


def fit_robust_mixture(
    mixture, Z, y, *, radius: float, holdout_fraction: float, seed: int, grid_size: int = 25
):
    """``mixture`` (an unfitted shared-covariance GaussianMixtureClassifier) refitted with the
    tau that is optimal (two classes) or best on held-out train data (K classes) at ``radius``
    (latent l2 units)."""
    if mixture.covariance not in ("shared", "isotropic"):
        raise ValueError(
            "mixture.robust_radius needs a shared covariance: use mixture=robust "
            "(covariance: shared) or covariance=isotropic"
        )
    if radius < 0:
        raise ValueError(f"mixture.robust_radius must be >= 0, got {radius}")
    plain = clone(mixture).fit(Z, y)
    if len(plain.classes_) == 2:
        mu = (plain.means_[1] - plain.means_[0]) / 2
        if radius >= impossibility_radius(mu):
            raise ValueError(
                f"no classifier is robust at radius {radius}: the class means are only "
                f"{2 * np.linalg.norm(mu):.4g} apart; choose mixture.robust_radius < "
                f"{impossibility_radius(mu):.4g}"
            )
        tau = robust_tau(plain.covariances_, mu, radius)
        log.info("robust rule: closed-form tau = %.4g for radius %g", tau, radius)
        return clone(mixture).set_params(tau=tau).fit(Z, y)
    fit_idx, val_idx = train_test_split(
        np.arange(len(y)), test_size=holdout_fraction, stratify=y, random_state=seed
    )
    scale = float(np.trace(plain.covariances_) / plain.n_features_in_)
    grid = np.concatenate([[0.0], scale * np.geomspace(1e-3, 1e3, grid_size - 1)])
    scores = []
    for tau in grid:
        candidate = clone(mixture).set_params(tau=tau).fit(Z[fit_idx], y[fit_idx])
        M, c = candidate.linear_head()
        codes, radii = certify_latents(LinearCertifier(M, c), Z[val_idx], batch_size=65536)
        correct = candidate.classes_[codes] == y[val_idx]
        scores.append(float((correct & (radii >= radius)).mean()))
    best = float(grid[int(np.argmax(scores))])
    log.info(
        "robust rule: tau = %.4g (held-out certified accuracy %.3f at radius %g)",
        best,
        max(scores),
        radius,
    )
    return clone(mixture).set_params(tau=best).fit(Z, y)
