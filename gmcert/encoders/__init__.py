"""Encoders: one spec per config name (``configs/encoder/<name>.yaml``), in
:data:`~gmcert.encoders.specs.ENCODERS`, and :func:`build_encoder`.

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
:mod:`~gmcert.encoders.weights` (weight files), :mod:`~gmcert.encoders.spectral` (spectral
Lipschitz bounds), :mod:`~gmcert.encoders.schemas` (each encoder's typed options) and
:mod:`~gmcert.encoders.specs` (the registry).

The classes below are imported on first use (PEP 562), so that reading the registry (the CLI
does, to register the schemas) loads no torch.
"""

from __future__ import annotations

from gmcert.encoders.specs import ENCODERS, EncoderSpec, encoder_spec
from gmcert.lazy import lazy_exports

_HOMES = {
    "BuildOptions": "gmcert.encoders.wrapper",
    "IdentityEncoder": "gmcert.encoders.linear",
    "LipschitzEncoder": "gmcert.encoders.lipschitz",
    "PCAEncoder": "gmcert.encoders.linear",
    "PretrainedEncoder": "gmcert.encoders.wrapper",
    "TrainedCNNEncoder": "gmcert.encoders.cnn",
}


def build_encoder(name: str, **options):
    """The encoder registered as ``name``, built from its config options.

    A pretrained encoder's options split into the :class:`BuildOptions` every pretrained
    builder shares (weights, lipschitz, image_size, source_size, device) and the builder's own
    keywords (clip's model/pretrained, dinov2's model, the hub libraries' allow_download).
    """
    return encoder_spec(name).build(**options)


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)


__all__ = ["ENCODERS", "EncoderSpec", "build_encoder", "encoder_spec", *sorted(_HOMES)]
