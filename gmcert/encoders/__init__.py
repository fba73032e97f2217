"""Encoders: a registry from config name to a builder returning a `torch.nn.Module`.

Every encoder maps a batch of inputs (pixels in [0, 1]) to latents (B, d) and carries
``lipschitz``: an l2 -> l2 Lipschitz bound of the whole map, or None when none is known (then
certificates stay in latent units). ``fit(train_inputs)`` is a no-op except for encoders
learned from the train split (PCA).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from gmcert.encoders.linear import IdentityEncoder, PCAEncoder


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
