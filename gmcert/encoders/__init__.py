"""Encoders: a registry from config name to a builder returning a `torch.nn.Module`.

Every encoder maps a batch of inputs (pixels in [0, 1]) to latents (B, d) and carries
``lipschitz``: an l2 -> l2 Lipschitz bound of the whole map, or None when none is known (then
certificates stay in latent units). ``fit(train_inputs)`` is a no-op except for encoders
learned from the train split (PCA).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


class IdentityEncoder(nn.Module):
    """Flattens the input: Lipschitz 1, so latent radii are input radii."""

    lipschitz = 1.0
    name = "identity"

    def fit(self, train_inputs: np.ndarray) -> IdentityEncoder:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class PCAEncoder(nn.Module):
    """scikit-learn PCA fitted on the train split only, applied as one affine map in torch.

    Orthonormal components are a contraction, so the Lipschitz bound is 1; whitening divides
    by sqrt(explained variance), so the bound becomes 1 / sqrt(smallest kept variance).
    """

    name = "pca"

    def __init__(self, *, n_components: int, whiten: bool = False):
        super().__init__()
        self.n_components, self.whiten = n_components, whiten
        self.lipschitz: float | None = None

    def fit(self, train_inputs: np.ndarray) -> PCAEncoder:
        from sklearn.decomposition import PCA

        if not isinstance(train_inputs, np.ndarray):
            raise ValueError(
                "encoder=pca fits on in-memory arrays (digits, synthetic); for image folders "
                "use a pretrained encoder"
            )
        x = train_inputs.reshape(len(train_inputs), -1).astype(np.float64)
        if not 1 <= self.n_components <= min(x.shape):
            raise ValueError(
                f"encoder.n_components must be in 1..{min(x.shape)} for inputs of shape "
                f"{x.shape}, got {self.n_components}"
            )
        pca = PCA(n_components=self.n_components, whiten=self.whiten, svd_solver="full").fit(x)
        weight = pca.components_
        if self.whiten:
            weight = weight / np.sqrt(pca.explained_variance_)[:, None]
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("mean", torch.as_tensor(pca.mean_, dtype=torch.float32))
        self.lipschitz = float(np.linalg.norm(weight, ord=2))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) @ self.weight.T


def _pretrained(*, name: str, allow_download: bool = False, **kwargs) -> nn.Module:
    from gmcert.encoders.pretrained import build_pretrained

    if name in HUB_LOADED:  # torchvision weights never download: only the hub libraries ask
        kwargs["allow_download"] = allow_download
    return build_pretrained(name, **kwargs)


ENCODER_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "identity": lambda: IdentityEncoder(),
    "pca": lambda *, n_components, whiten: PCAEncoder(n_components=n_components, whiten=whiten),
}
PRETRAINED = ("resnet50", "vit", "clip", "dinov2")
HUB_LOADED = ("clip", "dinov2")


def build_encoder(name: str, **options) -> nn.Module:
    """The encoder registered as ``name``, built from its config options."""
    if name in PRETRAINED:
        return _pretrained(name=name, **options)
    if name not in ENCODER_BUILDERS:
        known = sorted([*ENCODER_BUILDERS, *PRETRAINED])
        raise ValueError(f"unknown encoder {name!r}; choose one of {known}")
    return ENCODER_BUILDERS[name](**options)
