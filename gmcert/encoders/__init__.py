"""Encoders: one registry from config name (``configs/encoder/<name>.yaml``) to a builder.

Every encoder maps a batch of inputs (pixels in [0, 1]) to latents (B, d) and carries
``lipschitz``: an l2 -> l2 Lipschitz bound of the whole map, or None when none is known (then
certificates stay in latent units). ``fit(train_inputs)`` is a no-op except for encoders
learned from the train split (PCA).

Modules: :mod:`~gmcert.encoders.linear` (identity, PCA), :mod:`~gmcert.encoders.wrapper` (the
frozen :class:`PretrainedEncoder` every pretrained builder returns),
:mod:`~gmcert.encoders.torchvision_models` (ResNet-18/50, ViT-B/16),
:mod:`~gmcert.encoders.hub_models` (CLIP via open_clip, DINOv2 via timm),
:mod:`~gmcert.encoders.weights` (weight files) and :mod:`~gmcert.encoders.spectral` (spectral
Lipschitz bounds).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from gmcert.encoders import hub_models, torchvision_models
from gmcert.encoders.linear import IdentityEncoder, PCAEncoder
from gmcert.encoders.wrapper import PretrainedEncoder


def _never_downloads(builder: Callable[..., PretrainedEncoder]) -> Callable[..., PretrainedEncoder]:
    """A torchvision builder taking the pretrained config's options.

    torchvision weights are only read from torch hub's local cache, never downloaded, so the
    config's ``allow_download`` (which concerns the hub libraries only) is dropped.
    """

    def build(*, allow_download: bool = False, **options) -> PretrainedEncoder:
        return builder(**options)

    build.__doc__ = builder.__doc__
    return build


ENCODER_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "identity": IdentityEncoder,
    "pca": PCAEncoder,
    "resnet18": _never_downloads(torchvision_models.resnet18),
    "resnet50": _never_downloads(torchvision_models.resnet50),
    "vit": _never_downloads(torchvision_models.vit),
    "clip": hub_models.clip,
    "dinov2": hub_models.dinov2,
}
# Frozen pretrained encoders: their latents depend on the weights, not on the training data.
PRETRAINED = ("resnet18", "resnet50", "vit", "clip", "dinov2")


def build_encoder(name: str, **options) -> nn.Module:
    """The encoder registered as ``name``, built from its config options."""
    if name not in ENCODER_BUILDERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODER_BUILDERS)}")
    return ENCODER_BUILDERS[name](**options)


__all__ = [
    "ENCODER_BUILDERS",
    "PRETRAINED",
    "IdentityEncoder",
    "PCAEncoder",
    "PretrainedEncoder",
    "build_encoder",
]
