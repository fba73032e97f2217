"""torchvision encoders (ResNet-18/50, ViT-B/16) with weights from torch hub's local cache.

Each builder returns a :class:`~gmcert.encoders.wrapper.PretrainedEncoder` whose backbone is
the torchvision network with its classifier head replaced by Identity, so the latents are the
penultimate features.  torchvision itself is imported only when a builder runs.  Their weights
(:class:`~gmcert.encoders.wrapper.BuildOptions`) are never downloaded: "default" is
torchvision's DEFAULT enum, read from torch hub's cache; an enum name and a state-dict file
also work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from gmcert.encoders.weights import (
    is_random,
    load_backbone_weights,
    read_state_dict,
    resolve_torchvision_weights,
    warn_random,
)
from gmcert.encoders.wrapper import BuildOptions, PretrainedEncoder


def _resolve_weights(
    name: str, weights: str | Path | None, enum_cls: Any
) -> tuple[Any | None, Path | None, str]:
    """(enum member or None, local file or None, provenance for ``weights_source``)."""
    if is_random(weights):
        warn_random(name)
        return None, None, "random"
    member, path = resolve_torchvision_weights(name, weights, enum_cls)
    return member, path, f"torchvision:{member.name}:{path}" if member else str(path)


# The torchvision model behind each encoder name (its weight enum names the default file).
_TORCHVISION_MODELS = {"resnet18": "resnet18", "resnet50": "resnet50", "vit": "vit_b_16"}


def check_weights_present(name: str, *, weights=None, **_) -> None:
    """FileNotFoundError when the weight file encoder ``name`` would read is missing (reads
    only the file system); nothing for random weights or other encoders. The encoder's other
    options are accepted and ignored (its spec's preflight receives them all)."""
    from torchvision import models

    arch = _TORCHVISION_MODELS.get(name)
    if arch is not None and not is_random(weights):
        resolve_torchvision_weights(arch, weights, models.get_model_weights(arch))


def _load(backbone: nn.Module, path: Path | None, name: str, head: str) -> None:
    """Load the weight file at ``path`` (if any) into ``backbone``, ignoring the ``head``."""
    if path is not None:
        state = read_state_dict(path)
        load_backbone_weights(backbone, state, name=name, source=str(path), head_prefixes=(head,))


def resnet(arch: str, options: BuildOptions) -> PretrainedEncoder:
    """torchvision ResNet; latents = the global-average-pooled penultimate features.

    Args:
        arch: the torchvision name: "resnet18" (512-d latents; DEFAULT weights =
            IMAGENET1K_V1) or "resnet50" (2048-d; DEFAULT = IMAGENET1K_V2).
        options: :class:`~gmcert.encoders.wrapper.BuildOptions`; weights: "default"
            (torchvision's DEFAULT), an enum name ("IMAGENET1K_V1"), a path to a state dict,
            or None/"random"; image_size defaults to 224; lipschitz may be "spectral".
    """
    from torchvision import models

    _, path, source = _resolve_weights(arch, options.weights, models.get_model_weights(arch))
    size = options.image_size if options.image_size is not None else 224
    backbone = getattr(models, arch)(weights=None)
    latent_dim = backbone.fc.in_features
    # The penultimate features (global average pool, flattened) are the latents.
    backbone.fc = nn.Identity()
    _load(backbone, path, arch, "fc.")
    return options.wrap(
        backbone, name=arch, latent_dim=latent_dim, input_size=(size, size), weights_source=source
    )


def vit(options: BuildOptions) -> PretrainedEncoder:
    """torchvision ViT-B/16; latents = the 768-d class token after the final LayerNorm.

    Args:
        options: :class:`~gmcert.encoders.wrapper.BuildOptions`; weights: "default"
            (IMAGENET1K_V1, 224 px), an enum name (e.g. "IMAGENET1K_SWAG_E2E_V1", 384 px), a
            state-dict path, or None/"random"; lipschitz: None or a declared float
            ("spectral" is refused: attention is not globally Lipschitz); image_size: a
            multiple of 16, default the weights' training size (224 for random init).
            Position embeddings are tied to it, so a pretrained enum only accepts its own size.
    """
    from torchvision import models

    name = "vit_b_16"
    member, path, source = _resolve_weights(name, options.weights, models.ViT_B_16_Weights)
    native = int(member.meta["min_size"][0]) if member is not None else 224
    size = native if options.image_size is None else options.image_size
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
    _load(backbone, path, name, "heads.")
    return options.wrap(
        backbone,
        name=name,
        latent_dim=latent_dim,
        input_size=(size, size),
        weights_source=source,
        attention=True,
    )


__all__ = ["resnet", "vit"]
