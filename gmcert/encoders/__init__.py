"""Encoders: one registry from config name (``configs/encoder/<name>.yaml``) to a builder.

Every encoder maps a batch of inputs (pixels in [0, 1]) to latents (B, d) and carries
``lipschitz``: an l2 -> l2 Lipschitz bound of the whole map, or None when none is known (then
certificates stay in latent units); ``linear_map()``: the exact map for encoders linear in
their input (a :class:`~gmcert.encoders.linear.LinearMap`), else None;
``fit(train_inputs, train_labels=None)``: a no-op except for encoders learned from the train
split (PCA from its inputs, lipschitz from its inputs and labels).

Modules: :mod:`~gmcert.encoders.linear` (identity, PCA), :mod:`~gmcert.encoders.lipschitz` (a
1-Lipschitz network gmcert trains itself: its layers, objective, training loop and weight cache
in ``lipschitz_layers``, ``gm_objective``, ``lipschitz_training``, ``weight_cache``),
:mod:`~gmcert.encoders.cnn` (an ordinary CNN gmcert trains with cross-entropy, then freezes),
:mod:`~gmcert.encoders.wrapper` (the
frozen :class:`PretrainedEncoder` every pretrained builder returns and the :class:`BuildOptions`
they all take),
:mod:`~gmcert.encoders.torchvision_models` (ResNet-18/50, ViT-B/16),
:mod:`~gmcert.encoders.hub_models` (CLIP via open_clip, DINOv2 via timm),
:mod:`~gmcert.encoders.weights` (weight files) and :mod:`~gmcert.encoders.spectral` (spectral
Lipschitz bounds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from functools import partial

from torch import nn

from gmcert.encoders import hub_models, torchvision_models
from gmcert.encoders.cnn import TrainedCNNEncoder
from gmcert.encoders.linear import IdentityEncoder, PCAEncoder
from gmcert.encoders.lipschitz import LipschitzEncoder
from gmcert.encoders.wrapper import BuildOptions, PretrainedEncoder

# Pretrained builders take (BuildOptions, **own keywords).  torchvision weights are only read
# from torch hub's local cache, never downloaded, so allow_download (which concerns the hub
# libraries only) does not reach the torchvision builders.
_TORCHVISION: dict[str, Callable[..., PretrainedEncoder]] = {
    "resnet18": partial(torchvision_models.resnet, "resnet18"),
    "resnet50": partial(torchvision_models.resnet, "resnet50"),
    "vit": torchvision_models.vit,
}
_HUB: dict[str, Callable[..., PretrainedEncoder]] = {
    "clip": hub_models.clip,
    "dinov2": hub_models.dinov2,
}
ENCODER_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "identity": IdentityEncoder,
    "pca": PCAEncoder,
    "lipschitz": LipschitzEncoder,
    "cnn": TrainedCNNEncoder,
    **_TORCHVISION,
    **_HUB,
}
# Frozen pretrained encoders: their latents depend on the weights, not on the training data.
PRETRAINED = (*_TORCHVISION, *_HUB)
# Encoders gmcert trains on the train split, whose weights live in the run's cache folder.
TRAINED = ("lipschitz", "cnn")
_SHARED_OPTIONS = tuple(f.name for f in fields(BuildOptions))


def build_encoder(name: str, **options) -> nn.Module:
    """The encoder registered as ``name``, built from its config options.

    A pretrained encoder's options split into the :class:`BuildOptions` every pretrained
    builder shares (weights, lipschitz, image_size, source_size, device) and the builder's own
    keywords (clip's model/pretrained, dinov2's model, the hub libraries' allow_download).
    """
    if name not in ENCODER_BUILDERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODER_BUILDERS)}")
    if name not in PRETRAINED:
        return ENCODER_BUILDERS[name](**options)
    if name in _TORCHVISION:
        options.pop("allow_download", None)
    shared = {key: options.pop(key) for key in _SHARED_OPTIONS if key in options}
    return ENCODER_BUILDERS[name](BuildOptions(**shared), **options)


__all__ = [
    "ENCODER_BUILDERS",
    "PRETRAINED",
    "TRAINED",
    "BuildOptions",
    "IdentityEncoder",
    "LipschitzEncoder",
    "PCAEncoder",
    "PretrainedEncoder",
    "TrainedCNNEncoder",
    "build_encoder",
]
