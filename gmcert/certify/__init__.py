"""Certification methods: a registry from ``certify.methods`` names to certifier factories.

Each method certifies test points by position and returns, per point, the prediction (a class
label, or ABSTAIN) and its radius in latent units and in input units (NaN where no honest
Lipschitz bound links the two).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gmcert.certify.latent import LinearCertifier

ABSTAIN = -1

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class CertifyContext:
    """What every certifier may need, passed explicitly (no global config)."""

    mixture: Any  # a fitted GaussianMixtureClassifier
    test_latents: np.ndarray
    device: torch.device
    lipschitz: float | None = None
    norm: str = "l2"
    batch_size: int = 4096
    dtype: str = "float64"
    extra: dict = field(default_factory=dict)


@dataclass
class Certified:
    predict: np.ndarray
    radius_latent: np.ndarray
    radius_input: np.ndarray


def torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"certify.dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def latent_certifier(mixture, *, norm: str, device, dtype: torch.dtype):
    """The exact closed-form certifier for a fitted mixture: linear or quadratic boundaries."""
    if mixture.is_linear_:
        M, c = mixture.linear_head()
        return LinearCertifier(M, c, norm=norm, device=device, dtype=dtype)
    from gmcert.certify.quadratic import QuadraticCertifier

    return QuadraticCertifier(
        mixture.means_, mixture.class_precisions(), mixture.log_weights_,
        norm=norm, device=device, dtype=dtype,
    )


def certify_latents(certifier, Z: np.ndarray, *, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Class codes and latent radii for Z (n, d), one device batch at a time."""
    preds, radii = [], []
    for start in range(0, len(Z), batch_size):
        pred, radius = certifier.certify(torch.from_numpy(np.asarray(Z[start : start + batch_size])))
        preds.append(pred.cpu().numpy())
        radii.append(radius.double().cpu().numpy())
    return np.concatenate(preds), np.concatenate(radii)


class ClosedForm:
    """Exact latent certificate of the mixture's Bayes rule (THEORY.md section 3)."""

    name = "closed_form"

    def __init__(self, ctx: CertifyContext):
        self.ctx = ctx
        self.certifier = latent_certifier(
            ctx.mixture, norm=ctx.norm, device=ctx.device, dtype=torch_dtype(ctx.dtype)
        )
        # Quadratic boundaries in linf / l1 give a sound lower bound, not the exact radius.
        self.exact = getattr(self.certifier, "exact", True)

    def certify(self, positions: np.ndarray) -> Certified:
        codes, radius = certify_latents(
            self.certifier, self.ctx.test_latents[positions], batch_size=self.ctx.batch_size
        )
        lip = self.ctx.lipschitz
        radius_input = radius / lip if lip else np.full_like(radius, np.nan)
        return Certified(self.ctx.mixture.classes_[codes], radius, radius_input)


METHODS: dict[str, Callable[[CertifyContext], Any]] = {"closed_form": ClosedForm}


def build_method(name: str, ctx: CertifyContext):
    if name not in METHODS:
        raise ValueError(f"unknown certify method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name](ctx)
