"""Encoders from hub libraries: CLIP image towers (open_clip) and DINOv2 (timm).

Both libraries are optional dependencies, imported only when a builder runs; a missing one
raises ImportError with the pip command.  Their "default" weights come through the library's
Hugging Face hub loader, which may download, so it needs ``allow_download=True`` (permit the
library's hub loader; it uses the cache when it can); a local weight file never does.  Both
builders wrap attention networks, so lipschitz (:class:`~gmcert.encoders.wrapper.BuildOptions`)
is None or declared: "spectral" is refused.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from gmcert.encoders.weights import is_random, not_a_weight_file, warn_random
from gmcert.encoders.wrapper import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BuildOptions,
    PretrainedEncoder,
    as_hw,
)

# open_clip's defaults for OpenAI-trained CLIP towers (used when the model does not say).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _require(module: str, pip_name: str, encoder: str) -> Any:
    """Import an optional dependency or say exactly how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"encoder '{encoder}' needs the optional package {pip_name!r}, which is not "
            f"installed: run `pip install {pip_name}` (or `pip install gmcert[{encoder}]`)"
        ) from None


def _library_weights(
    name: str, weights: str | Path | None, allow_download: bool, hint: str
) -> tuple[str, str | None]:
    """Classify ``weights`` for a hub-backed library: ("random"|"file"|"hub", value)."""
    if is_random(weights):
        warn_random(name)
        return "random", None
    if isinstance(weights, str) and weights.lower() == "default":
        if not allow_download:
            raise ValueError(
                f"{name}: weights='default' makes the library fetch the weights from the "
                "Hugging Face hub (it reads its local cache first, but may download), and "
                "gmcert never downloads unless told to. Either pass a local file with "
                f"encoder.weights=/path/to/{hint}, or allow the library's hub loader with "
                "encoder.allow_download=true (set HF_HUB_OFFLINE=1 to keep it cache-only)."
            )
        return "hub", None
    path = Path(weights).expanduser()
    problem = not_a_weight_file(path, "encoder.weights", f"a weight file ({hint})")
    if problem:
        error = FileNotFoundError if not path.exists() and not path.is_symlink() else ValueError
        raise error(
            f"{name}: {problem}. Fix: set encoder.weights to an existing file, 'default' with "
            "encoder.allow_download=true, or 'random'"
        )
    return "file", str(path)


def clip(
    options: BuildOptions,
    *,
    model: str = "ViT-B-32",
    pretrained: str = "openai",
    allow_download: bool = False,
) -> PretrainedEncoder:
    """open_clip image tower; latents = the (unnormalised) image embedding, e.g. 512-d.

    Needs ``pip install open-clip-torch``.  Only the visual tower is kept.

    Args:
        options: :class:`~gmcert.encoders.wrapper.BuildOptions`; weights: a local open_clip
            checkpoint file (loaded by open_clip, which also handles the OpenAI TorchScript
            format and resizes position embeddings), "default" (the tag ``pretrained`` through
            open_clip's hub loader), or None/"random"; image_size: an optional input size
            override (open_clip's force_image_size).
        model, pretrained: open_clip architecture name and pretrained tag.
        allow_download: permit the hub loader (see the module docstring).
    """
    open_clip = _require("open_clip", "open-clip-torch", "clip")
    name = f"clip:{model}"
    kind, path = _library_weights(
        name, options.weights, allow_download, "open_clip_pytorch_model.bin"
    )
    kwargs: dict[str, Any] = {}
    if options.image_size is not None:
        kwargs["force_image_size"] = options.image_size
    tag = {"random": None, "file": path, "hub": pretrained}[kind]
    try:
        full = open_clip.create_model(model, pretrained=tag, **kwargs)
    except (RuntimeError, OSError) as err:
        raise ValueError(
            f"{name}: open_clip could not build/load it ({err}); check the model name "
            "(open_clip.list_models()) and the weight file or pretrained tag"
        ) from None
    visual = full.visual
    size = visual.image_size if hasattr(visual, "image_size") else 224
    size = as_hw(size if isinstance(size, int) else tuple(size), "image_size")
    latent_dim = int(getattr(visual, "output_dim", 0) or getattr(full, "embed_dim", 0))
    if not latent_dim:
        with torch.no_grad():
            latent_dim = int(visual(torch.zeros(1, 3, *size)).shape[-1])
    return options.wrap(
        visual,
        name=name,
        latent_dim=latent_dim,
        input_size=size,
        mean=tuple(getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN),
        std=tuple(getattr(visual, "image_std", None) or OPENAI_CLIP_STD),
        weights_source={"random": "random", "file": str(path), "hub": f"open_clip:{pretrained}"}[
            kind
        ],
        # Both tower kinds attend: ViT towers throughout, ModifiedResNet towers in their
        # attention pooling head.
        attention=True,
    )


def dinov2(
    options: BuildOptions,
    *,
    model: str = "vit_small_patch14_dinov2",
    allow_download: bool = False,
) -> PretrainedEncoder:
    """DINOv2 ViT from timm; latents = the pooled (class-token) features, e.g. 384-d for ViT-S.

    Needs ``pip install timm``.

    Args:
        options: :class:`~gmcert.encoders.wrapper.BuildOptions`; weights: a local timm weight
            file (.safetensors/.bin/.pth, loaded by timm through ``pretrained_cfg_overlay``),
            "default" (timm's hub weights), or None/"random"; image_size: a multiple of the
            14 px patch.  None means 224 (the usual evaluation size; timm resamples the
            position embeddings of the 518 px checkpoints); pass 518 for the native size.
        model: timm model name (``vit_small_patch14_dinov2``, ``vit_base_patch14_dinov2`` ...).
        allow_download: permit the hub loader (see the module docstring).
    """
    timm = _require("timm", "timm", "dinov2")
    name = f"dinov2:{model}"
    kind, path = _library_weights(name, options.weights, allow_download, "model.safetensors")
    image_size = 224 if options.image_size is None else options.image_size
    if image_size % 14:
        raise ValueError(f"{name}: image_size must be a multiple of 14, got {image_size}")
    kwargs: dict[str, Any] = {"num_classes": 0, "img_size": image_size}
    if kind == "file":
        kwargs["pretrained_cfg_overlay"] = {"file": path}
    try:
        backbone = timm.create_model(model, pretrained=kind != "random", **kwargs)
    except (RuntimeError, OSError) as err:
        raise ValueError(
            f"{name}: timm could not build/load it ({err}); check the model name "
            "(timm.list_models('*dinov2*')) and the weight file"
        ) from None
    cfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})
    return options.wrap(
        backbone,
        name=name,
        latent_dim=int(backbone.num_features),
        input_size=(image_size, image_size),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        weights_source={"random": "random", "file": str(path), "hub": f"timm:{model}"}[kind],
        attention=True,
    )


__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "clip", "dinov2"]
