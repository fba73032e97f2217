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

from gmcert.certify.linear import LinearCertifier

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
        mixture.means_,
        mixture.class_precisions(),
        mixture.log_weights_,
        norm=norm,
        device=device,
        dtype=dtype,
    )


def certify_latents(certifier, Z: np.ndarray, *, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Class codes and latent radii for Z (n, d), one device batch at a time."""
    preds, radii = [], []
    for start in range(0, len(Z), batch_size):
        pred, radius = certifier.certify(
            torch.from_numpy(np.asarray(Z[start : start + batch_size]))
        )
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


class Smoothing:
    """Randomized smoothing (Cohen et al. 2019, THEORY.md section 4) of ``encoder -> head``.

    Radii are l2 in input pixel units. Each chunk of test points draws its noise from a
    generator seeded by the seed and the chunk's first index, so a resumed run reproduces the
    uninterrupted one.
    """

    norm = "l2"

    def __init__(self, ctx: CertifyContext, *, head: str):
        from gmcert.certify.smoothing import SmoothedClassifier, radius_cap
        from gmcert.models.heads import LinearProbeHead, MixtureHead, fit_linear_probe

        self.name = f"smoothing_{head}"
        self.ctx = ctx
        opts = ctx.extra["options"]
        self.n0, self.n, self.alpha = opts.n0, opts.n, opts.alpha
        self.seed = ctx.extra["seed"]
        data = ctx.extra["data"]
        if head == "gmm":
            module, self.classes = MixtureHead(ctx.mixture), ctx.mixture.classes_
        else:
            probe = fit_linear_probe(ctx.extra["train_latents"], data.train.labels, seed=self.seed)
            module = LinearProbeHead(probe)
            self.classes = module.classes
        base = torch.nn.Sequential(ctx.extra["encoder"], module).eval().to(ctx.device)
        self.smoothed = SmoothedClassifier(
            base, len(self.classes), opts.sigma, device=ctx.device, batch_size=opts.noise_batch
        )
        self.inputs = data.test.inputs
        self.cap = radius_cap(opts.sigma, opts.n, opts.alpha)
        # Several points share forward passes when n is small next to the noise batch.
        self.chunk_size = max(1, opts.noise_batch // opts.n)

    def _batch(self, positions) -> torch.Tensor:
        if isinstance(self.inputs, np.ndarray):
            return torch.from_numpy(np.asarray(self.inputs[positions], dtype=np.float32))
        return torch.stack([self.inputs[int(p)][0] for p in positions])

    def certify(self, positions: np.ndarray) -> Certified:
        generator = torch.Generator(self.ctx.device)
        generator.manual_seed(self.seed * 1_000_003 + int(positions[0]))
        certs = self.smoothed.certify_batch(
            self._batch(positions), n0=self.n0, n=self.n, alpha=self.alpha, generator=generator
        )
        codes = np.array([c.prediction for c in certs])
        predict = np.where(codes == ABSTAIN, ABSTAIN, self.classes[np.maximum(codes, 0)])
        radius = np.array([c.radius for c in certs])
        return Certified(predict, np.full_like(radius, np.nan), radius)


METHODS: dict[str, Callable[[CertifyContext], Any]] = {
    "closed_form": ClosedForm,
    "smoothing_gmm": lambda ctx: Smoothing(ctx, head="gmm"),
    "smoothing_probe": lambda ctx: Smoothing(ctx, head="probe"),
}


def build_method(name: str, ctx: CertifyContext):
    if name not in METHODS:
        raise ValueError(f"unknown certify method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name](ctx)
