"""One spec per encoder: its name, typed options, builder, preflight check and capabilities, in
one registry.

Everything that needs to know about an encoder reads its :class:`EncoderSpec` from
:data:`ENCODERS` instead of testing its name: :func:`gmcert.encoders.build_encoder` builds it,
the encode stage (:mod:`gmcert.features`) asks whether it is pretrained or trained,
:mod:`gmcert.preflight` checks its weight file, the degrade stage whether it is the identity,
and :func:`gmcert.config.register_configs` registers its schema. An encoder's module is imported
only when it is built or checked, so reading the registry costs no torch import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields

from gmcert.encoders import schemas

__all__ = ["ENCODERS", "EncoderSpec", "encoder_spec"]


def nothing_to_check(**_options) -> None:
    """The preflight of a an encoder with no weight file to read: nothing on disk to look for."""


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder as the rest of gmcert sees it.

    ``build(**options)`` returns the encoder (an ``nn.Module``) from the options of ``schema``
    without ``name`` (a trained encoder also takes ``cache_dir`` and ``force``);
    ``preflight(**options)`` (the run's encoder options, ``name`` included) raises
    ``FileNotFoundError`` naming a weight file that is not on this machine, reading only the
    file system (an encoder without a weight file to read has nothing to check).
    """

    name: str
    schema: type
    build: Callable
    # configs/encoder/<name>.yaml extends schema_<schema_name>; pretrained encoders share one
    schema_name: str
    preflight: Callable = nothing_to_check
    # Latents are the inputs themselves, so the data's known law (if any) is the latents' law.
    identity: bool = False
    # Frozen pretrained weights: the latents depend on the weights, not on the training data,
    # and the options split into the shared BuildOptions and the builder's own keywords.
    pretrained: bool = False
    # gmcert trains its weights on the train split and keeps them in the run's cache folder.
    trained: bool = False


def _module(name: str):
    return importlib.import_module(f"gmcert.encoders.{name}")


def _builds(module: str, function: str) -> Callable:
    """``gmcert.encoders.<module>.<function>(**options)``, imported on the first call."""

    def build(**options):
        return getattr(_module(module), function)(**options)

    return build


def _builds_pretrained(module: str, function: str, *leading, hub: bool) -> Callable:
    """A pretrained builder called as ``function(*leading, BuildOptions(...), **own keywords)``.

    torchvision weights are only read from torch hub's local cache, never downloaded, so
    ``allow_download`` (which concerns the hub libraries, ``hub=True``) does not reach them.
    """

    def build(**options):
        wrapper = _module("wrapper")
        if not hub:
            options.pop("allow_download", None)
        shared = {
            f.name: options.pop(f.name) for f in fields(wrapper.BuildOptions) if f.name in options
        }
        return getattr(_module(module), function)(
            *leading, wrapper.BuildOptions(**shared), **options
        )

    return build


def _torchvision(name: str, function: str, *leading) -> EncoderSpec:
    return EncoderSpec(
        name,
        schemas.PretrainedConfig,
        _builds_pretrained("torchvision_models", function, *leading, hub=False),
        schema_name="pretrained",
        preflight=_builds("torchvision_models", "check_weights_present"),
        pretrained=True,
    )


def _hub(name: str) -> EncoderSpec:
    return EncoderSpec(
        name,
        schemas.PretrainedConfig,
        _builds_pretrained("hub_models", name, hub=True),
        schema_name="pretrained",
        pretrained=True,
    )


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            "identity",
            schemas.IdentityConfig,
            _builds("linear", "IdentityEncoder"),
            schema_name="identity",
            identity=True,
        ),
        EncoderSpec("pca", schemas.PCAConfig, _builds("linear", "PCAEncoder"), schema_name="pca"),
        EncoderSpec(
            "lipschitz",
            schemas.LipschitzConfig,
            _builds("lipschitz", "LipschitzEncoder"),
            schema_name="lipschitz",
            trained=True,
        ),
        EncoderSpec(
            "cnn",
            schemas.CNNConfig,
            _builds("cnn", "TrainedCNNEncoder"),
            schema_name="cnn",
            trained=True,
        ),
        _torchvision("resnet18", "resnet", "resnet18"),
        _torchvision("resnet50", "resnet", "resnet50"),
        _torchvision("vit", "vit"),
        _hub("clip"),
        _hub("dinov2"),
    )
}


def encoder_spec(name: str) -> EncoderSpec:
    """The spec registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[name]
