"""The fit stage: the mixture's Bayes rule, or the robust linear rule (docs/theory.md section 2),
from the train latents.

The robust rule is LDA with the shared covariance replaced by Sigma + tau I. Two classes: tau is the
closed-form optimum for the target radius (Bhagoji et al. 2019; Dan et al. 2020). K > 2 classes:
one shared tau chosen to maximise certified accuracy at the target radius on a held-out split
of train (never test), then the rule is refitted on all of train with that tau.

Choosing tau or the shrinkage by held-out certified accuracy needs the certifier, so this stage
sits above :mod:`gmcert.certify` (the mixture it fits, :mod:`gmcert.models`, sits below).
"""

from __future__ import annotations

import logging

import numpy as np
from omegaconf import OmegaConf
from sklearn.base import clone
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from gmcert.certify.latent import certify_latents
from gmcert.certify.linear import LinearCertifier
from gmcert.memory import check_memory
from gmcert.models.mixture import LINEAR_FAMILIES, GaussianMixtureClassifier
from gmcert.models.robust import impossibility_radius, robust_tau

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
    """The mixture fitted as ``mixture_cfg`` says: plain, robust at ``robust_radius``, and with
    its shrinkage chosen at ``select_radius`` when ``shrinkage: select``."""
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
    select_radius = opts.pop("select_radius", None)
    if opts["shrinkage"] == "select":
        if select_radius is None or opts["covariance"] not in LINEAR_FAMILIES:
            raise ValueError(
                "mixture.shrinkage=select chooses the shrinkage by held-out certified accuracy "
                "at mixture.select_radius (latent l2 units): state that radius, e.g. "
                "mixture.select_radius=1.0, and use a linear rule (mixture.covariance=shared)"
            )
        opts["shrinkage"] = select_shrinkage(
            GaussianMixtureClassifier(**opts, random_state=seed),
            Z_train,
            y_train,
            radius=select_radius,
            holdout_fraction=holdout,
            seed=seed,
        )
    mixture = GaussianMixtureClassifier(**opts, random_state=seed)
    if robust_radius is None:
        return mixture.fit(Z_train, y_train)
    return fit_robust_mixture(
        mixture, Z_train, y_train, radius=robust_radius, holdout_fraction=holdout, seed=seed
    )


def heldout_certified_accuracy(
    mixture, Z, y, *, param: str, grid, radius: float, holdout_fraction: float, seed: int
) -> np.ndarray:
    """Certified accuracy at ``radius`` (latent l2) on a held-out split of train (never test)
    of ``mixture`` (a linear rule) fitted on the rest with ``param`` set to each grid value;
    NaN for a value the data cannot be fitted with."""
    fit_idx, val_idx = train_test_split(
        np.arange(len(y)), test_size=holdout_fraction, stratify=y, random_state=seed
    )
    Z_fit, y_fit = Z[fit_idx], y[fit_idx]
    # The grid's parameter leaves the class moments alone: computed once, not per value.
    moments = clone(mixture).class_moments(Z_fit, y_fit)
    scores = []
    for value in tqdm(grid, desc=f"choose {param}", leave=False):
        try:
            candidate = clone(mixture).set_params(**{param: value})
            candidate.fit(Z_fit, y_fit, moments=moments)
        except ValueError as err:  # e.g. no shrinkage with fewer points than dimensions
            log.info("%s = %g cannot be fitted here (%s)", param, value, err)
            scores.append(np.nan)
            continue
        M, c = candidate.linear_head()
        codes, radii = certify_latents(LinearCertifier(M, c), Z[val_idx], batch_size=65536)
        correct = candidate.classes_[codes] == y[val_idx]
        scores.append(float((correct & (radii >= radius)).mean()))
    return np.asarray(scores)


# Intensities tried by shrinkage=select: fine near 0, where accuracy is made, and across (0, 1),
# where certified radii are (shrinkage widens the margins the closed form certifies).
SELECT_GRID = (0.0, 1e-4, 1e-3, 0.01, 0.03, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def select_shrinkage(mixture, Z, y, *, radius: float, holdout_fraction: float, seed: int):
    """The shrinkage intensity of SELECT_GRID with the best held-out certified accuracy at
    ``radius``; ties go to the smaller intensity (the one closer to the data's covariance)."""
    scores = heldout_certified_accuracy(
        mixture,
        Z,
        y,
        param="shrinkage",
        grid=SELECT_GRID,
        radius=radius,
        holdout_fraction=holdout_fraction,
        seed=seed,
    )
    best = SELECT_GRID[int(np.nanargmax(scores))]
    log.info(
        "shrinkage = %g: held-out certified accuracy %.3f at radius %g (%s)",
        best,
        np.nanmax(scores),
        radius,
        ", ".join(f"{a:g}: {s:.3f}" for a, s in zip(SELECT_GRID, scores, strict=True)),
    )
    return best


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
    scale = float(np.trace(plain.covariances_) / plain.n_features_in_)
    grid = np.concatenate([[0.0], scale * np.geomspace(1e-3, 1e3, grid_size - 1)])
    scores = heldout_certified_accuracy(
        mixture,
        Z,
        y,
        param="tau",
        grid=grid,
        radius=radius,
        holdout_fraction=holdout_fraction,
        seed=seed,
    )
    best = float(grid[int(np.nanargmax(scores))])
    log.info(
        "robust rule: tau = %.4g (held-out certified accuracy %.3f at radius %g)",
        best,
        np.nanmax(scores),
        radius,
    )
    return clone(mixture).set_params(tau=best).fit(Z, y)
