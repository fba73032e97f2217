"""torchvision encoders (ResNet-18/50, ViT-B/16) with weights from torch hub's local cache.

Each builder returns a :class:`~gmcert.encoders.wrapper.PretrainedEncoder` whose backbone is
the torchvision network with its classifier head replaced by Identity, so the latents are the
penultimate features.  torchvision itself is imported only when a builder runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gmcert.encoders.weights import (
    is_random,
    load_backbone_weights,
    read_state_dict,
    resolve_torchvision_weights,
    warn_random,
)
from gmcert.encoders.wrapper import (
    ATTENTION_REFUSAL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretrainedEncoder,
    as_hw,
    finish,
)


def _torchvision_resnet(
    name: str,
    *,
    weights: str | Path | None,
    lipschitz: float | str | None,
    image_size: int | None,
    source_size: int | tuple[int, int] | None,
    device: torch.device | str,
) -> PretrainedEncoder:
    from torchvision import models

    builder = getattr(models, name)
    enum_cls = models.get_model_weights(name)
    if is_random(weights):
        warn_random(name)
        member, path, source = None, None, "random"
    else:
        member, path = resolve_torchvision_weights(name, weights, enum_cls)
        source = f"torchvision:{member.name}:{path}" if member else str(path)
    size = image_size if image_size is not None else 224
    as_hw(size, "image_size")
    backbone = builder(weights=None)
    latent_dim = backbone.fc.in_features
    # The penultimate features (global average pool, flattened) are the latents.
    backbone.fc = nn.Identity()
    if path is not None:
        load_backbone_weights(
            backbone, read_state_dict(path), name=name, source=str(path), head_prefixes=("fc.",)
        )
    encoder = PretrainedEncoder(
        backbone,
        name=name,
        latent_dim=latent_dim,
        input_size=(size, size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_source=source,
    )
    return finish(encoder, lipschitz=lipschitz, source_size=source_size, device=device)


def resnet50(
    *,
    weights: str | Path | None = "default",
    lipschitz: float | str | None = None,
    image_size: int | None = None,
    source_size: int | tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
) -> PretrainedEncoder:
    """torchvision ResNet-50; latents = the 2048-d global-average-pooled penultimate features.

    Args:
        weights: "default" (torchvision's DEFAULT = IMAGENET1K_V2, read from torch hub's
            cache, never downloaded), an enum name ("IMAGENET1K_V1"), a path to a state dict,
            or None/"random" (random init, tests only).
        lipschitz: None, a declared float, or "spectral" (an honest upper bound, see
            :mod:`gmcert.encoders.spectral`).
        image_size: side of the square input the backbone sees (default 224); small values
            (32, 64) let tests run random-init networks cheaply.
        source_size: (H, W) of the images that will be fed, for the spectral bound's resize
            factor (default: image_size, i.e. no resize).
        device: where the module lives.
    """
    return _torchvision_resnet(
        "resnet50",
        weights=weights,
        lipschitz=lipschitz,
        image_size=image_size,
        source_size=source_size,
        device=device,
    )


def resnet18(
    *,
    weights: str | Path | None = "default",
    lipschitz: float | str | None = None,
    image_size: int | None = None,
    source_size: int | tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
) -> PretrainedEncoder:
    """torchvision ResNet-18; latents = the 512-d pooled penultimate features.

    Same arguments as :func:`resnet50` (DEFAULT weights = IMAGENET1K_V1).
    """
    return _torchvision_resnet(
        "resnet18",
        weights=weights,
        lipschitz=lipschitz,
        image_size=image_size,
        source_size=source_size,
        device=device,
    )


def vit(
    *,
    weights: str | Path | None = "default",
    lipschitz: float | None = None,
    image_size: int | None = None,
    source_size: int | tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
) -> PretrainedEncoder:
    """torchvision ViT-B/16; latents = the 768-d class token after the final LayerNorm.

    Args:
        weights: "default" (IMAGENET1K_V1, 224 px), an enum name (e.g.
            "IMAGENET1K_SWAG_E2E_V1", 384 px), a state-dict path, or None/"random".
        lipschitz: None or a declared float; "spectral" is refused (attention is not
            globally Lipschitz).
        image_size: input side, a multiple of 16.  Default: the weights' training size (224
            for random init).  Position embeddings are tied to it, so a pretrained enum only
            accepts its own size.
        source_size, device: as in :func:`resnet50`.
    """
    from torchvision import models

    name = "vit_b_16"
    enum_cls = models.ViT_B_16_Weights
    if is_random(weights):
        warn_random(name)
        member, path, source = None, None, "random"
    else:
        member, path = resolve_torchvision_weights(name, weights, enum_cls)
        source = f"torchvision:{member.name}:{path}" if member else str(path)
    native = int(member.meta["min_size"][0]) if member is not None else 224
    size = native if image_size is None else image_size
    as_hw(size, "image_size")
    if size % 16:
        raise ValueError(f"{name}: image_size must be a multiple of the 16 px patch, got {size}")
    if member is not None and size != native:
        raise ValueError(
            f"{name}: weights {member.name} were trained at {native} px and their position "
            f"embeddings only fit image_size={native}, got image_size={size}; drop the "
            "image_size override (inputs of any size are resized inside the encoder)"
        )
    backbone = models.vit_b_16(weights=None, image_size=size)
    latent_dim = backbone.hidden_dim
    # VisionTransformer.forward returns heads(class token after encoder.ln); Identity heads
    # leave exactly that representation.
    backbone.heads = nn.Identity()
    if path is not None:
        load_backbone_weights(
            backbone,
            read_state_dict(path),
            name=name,
            source=str(path),
            head_prefixes=("heads.",),
        )
    encoder = PretrainedEncoder(
        backbone,
        name=name,
        latent_dim=latent_dim,
        input_size=(size, size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_source=source,
        spectral_refusal=ATTENTION_REFUSAL.format(name=name),
    )
    return finish(encoder, lipschitz=lipschitz, source_size=source_size, device=device)


__all__ = ["resnet18", "resnet50", "vit"]
