"""Frozen pretrained image encoders (torchvision, open_clip, timm) behind one contract.

Every encoder built here is an ``nn.Module`` mapping a batch of images in [0, 1] pixel units,
shape (B, 3, H, W), to latents of shape (B, latent_dim).  The resize to the network's input
size (bilinear, ``antialias=False``, so a fixed linear map) and the channel normalisation live
*inside* the module, so noise levels (sigma) and certified radii are always stated in [0, 1]
pixel units of the images the user passes.

Attributes shared by every encoder (see :class:`PretrainedEncoder`):

- ``name``: registry name, ``latent_dim``: d, ``input_size``: (H, W) the backbone sees;
- ``lipschitz``: an upper bound on the l2 -> l2 Lipschitz constant of the *whole* map from
  [0, 1] pixels to latents, or None when unknown (then only latent-space certificates exist);
- ``lipschitz_source``: "declared" (the user's word), "spectral" (computed here, see below) or
  None; ``lipschitz_input_size``: the (H, W) pixel grid a spectral bound refers to;
- ``weights_source``: "random", "torchvision:<ENUM>" + file path, or the file that was loaded
  (feature caches hash it).

Spectral bounds.  ``lipschitz="spectral"`` computes a bound that is a true upper bound for the
exact (real-arithmetic) map, never an empirical estimate: the product over layers of per-layer
operator norms, with residual blocks bounded by ``L_shortcut + L_branch``.  Convolutions are not
bounded by power iteration on the operator (which converges from *below* and so can
under-state the norm) but through the circular convolution that contains them: a zero-padded,
strided convolution is ``crop o strided-circular-conv o zero-embed`` on the padded grid, the
outer maps have norm <= 1, and the circular convolution is block-diagonalised by the 2-D DFT
(Sedghi, Gupta & Long 2019; strides through a polyphase split), so its norm is the largest
singular value of small kernel-transform matrices over the grid frequencies.  That maximum is
certified from above by Cholesky factorisations in float64 (see ``_max_singular_value``),
within ~1e-4 of its true value.  BatchNorm (eval mode) is folded into the preceding
convolution as a diagonal output scaling; pooling and the resize are linear and separable, so
their norms are products of (tightly bounded) 1-D matrix norms; max pooling is bounded by the
square root of the largest number of windows that share one pixel.  Self-attention is not
globally Lipschitz (Kim, Papamakarios & Mnih 2021), so ViT-type encoders refuse "spectral".
"""

from __future__ import annotations

import importlib
import logging
import math
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# open_clip's defaults for OpenAI-trained CLIP towers (used when the model does not say).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Relative slack multiplied onto every float64 norm computed below.  float64 eigen-solvers are
# accurate to ~1e-13 relative; 1e-6 makes certain that rounding never shrinks a bound.
_FLOAT64_SLACK = 1e-6
# Largest complex kernel-transform block held in memory at once (elements; 16 bytes each).
_MAX_TRANSFORM_ELEMENTS = 1 << 22

_ATTENTION_REFUSAL = (
    "{name}: lipschitz='spectral' is refused: dot-product self-attention is not globally "
    "Lipschitz (Kim et al. 2021), so no honest product-of-layer-norms bound exists for this "
    "encoder. Either declare a bound you can justify (encoder.lipschitz=<float>) or leave "
    "encoder.lipschitz=null, which reports certificates in latent units only."
)


# --------------------------------------------------------------------------------------------
# The encoder wrapper
# --------------------------------------------------------------------------------------------


class PretrainedEncoder(nn.Module):
    """A frozen backbone behind resize + normalisation: [0, 1] images (B, 3, H, W) -> (B, d).

    forward(x) = backbone(normalise(resize(x))), where resize is bilinear interpolation to
    ``input_size`` (``align_corners=False, antialias=False``; skipped when x already has that
    size) and normalise is ``(x - mean) / std`` per channel.  The module is frozen: parameters
    do not require gradients (gradients w.r.t. the input still flow, for attacks) and it stays
    in eval mode even if ``.train()`` is called, because BatchNorm in training mode would make
    the map depend on the batch and void any Lipschitz bound.

    Args:
        backbone: module mapping normalised (B, 3, *input_size) to (B, latent_dim) (or to a
            tensor that flattens to it).
        name: registry name, used in messages and cache keys.
        latent_dim: d, the latent dimension.
        input_size: (H, W) the backbone expects.
        mean, std: per-channel normalisation constants (3 values each, in [0, 1] pixel units).
        weights_source: human-readable provenance of the weights (file path or "random").
        spectral_refusal: when set, the message raised if a spectral bound is requested.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        name: str,
        latent_dim: int,
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        weights_source: str = "unknown",
        spectral_refusal: str | None = None,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(float(s) for s in std) <= 0:
            raise ValueError(
                f"{name}: mean and std need 3 values each with std > 0, got mean={mean}, std={std}"
            )
        self.backbone = backbone
        self.name = name
        self.latent_dim = int(latent_dim)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.weights_source = weights_source
        self.spectral_refusal = spectral_refusal
        self.lipschitz: float | None = None
        self.lipschitz_source: str | None = None
        self.lipschitz_input_size: tuple[int, int] | None = None
        # Non-persistent: they are constants of the encoder, not weights, so state dicts of the
        # wrapper stay loadable into the bare backbone (after stripping "backbone.").
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> PretrainedEncoder:
        """Keep the encoder in eval mode: it is frozen (see the class docstring)."""
        if mode:
            log.debug("%s is frozen: train(True) ignored, it stays in eval mode", self.name)
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """Encode images.

        Args:
            x: (B, 3, H, W) float images in [0, 1] pixel units (any H, W; resized inside).
        Returns:
            (B, latent_dim) latents in the backbone's dtype.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"{self.name}: expected images of shape (B, 3, H, W) in [0, 1], got "
                f"{tuple(x.shape)}; add a batch dimension with x[None] or convert grey images "
                "to RGB"
            )
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if self.lipschitz_input_size is not None and hw != self.lipschitz_input_size:
            # The spectral bound includes the resize's norm, which depends on the input grid;
            # refusing here keeps a stale bound from certifying radii it does not support.
            raise ValueError(
                f"{self.name}: its spectral Lipschitz bound {self.lipschitz:.4g} was computed for "
                f"{self.lipschitz_input_size[0]}x{self.lipschitz_input_size[1]} inputs but got "
                f"{hw[0]}x{hw[1]}; rebuild the encoder with source_size={hw}"
            )
        if hw != self.input_size:
            x = F.interpolate(
                x, size=self.input_size, mode="bilinear", align_corners=False, antialias=False
            )
        x = (x - self.mean) / self.std
        z = self.backbone(x)
        return z.flatten(1) if z.ndim > 2 else z

    def set_lipschitz(
        self,
        lipschitz: float | str | None,
        *,
        source_size: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
    ) -> PretrainedEncoder:
        """Attach a Lipschitz bound of the whole map ([0, 1] pixels, l2 -> latents, l2).

        Args:
            lipschitz: None (unknown; latent-unit certificates only), a positive float the
                user declares and answers for, or "spectral" (computed, see the module doc).
            source_size: (H, W) of the images that will be fed (e.g. (32, 32) for CIFAR-10
                into a 224 px network); the resize's norm depends on it.  Default: input_size.
            device: where to run the spectral computation (default: the encoder's device).
        Returns:
            self.
        """
        self.lipschitz, self.lipschitz_source, self.lipschitz_input_size = None, None, None
        if lipschitz is None:
            return self
        if isinstance(lipschitz, str) and lipschitz.strip().lower() != "spectral":
            try:  # a number typed on the command line may arrive as a string
                lipschitz = float(lipschitz)
            except ValueError:
                raise ValueError(
                    f"{self.name}: lipschitz must be null, a positive number or 'spectral', "
                    f"got {lipschitz!r}"
                ) from None
        if isinstance(lipschitz, str):
            size = _as_hw(source_size, "source_size") if source_size else self.input_size
            self.lipschitz = self.spectral_lipschitz(source_size=size, device=device)
            self.lipschitz_source = "spectral"
            self.lipschitz_input_size = size
            log.info(
                "%s: spectral l2 Lipschitz bound %.4g for %dx%d [0,1]-pixel inputs",
                self.name,
                self.lipschitz,
                size[0],
                size[1],
            )
            return self
        value = float(lipschitz)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"{self.name}: a declared lipschitz must be a finite positive number, got "
                f"{lipschitz!r}"
            )
        self.lipschitz, self.lipschitz_source = value, "declared"
        return self

    def spectral_lipschitz(
        self,
        *,
        source_size: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
    ) -> float:
        """Upper bound on the l2 Lipschitz constant of forward() for (3, *source_size) inputs.

        = ||resize(source_size -> input_size)||_2 * max_c(1 / std_c) * L(backbone), each factor
        an upper bound (see the module docstring).  Raises ValueError for backbones with
        layers that have no honest bound (attention, unknown modules).
        """
        if self.spectral_refusal:
            raise ValueError(self.spectral_refusal)
        size = _as_hw(source_size, "source_size") if source_size else self.input_size
        if device is None:
            device = _module_device(self)
        resize_norm = bilinear_resize_norm(size, self.input_size)
        norm_factor = float((1.0 / self.std.double()).max())
        try:
            backbone_bound = spectral_lipschitz(self.backbone, (3, *self.input_size), device=device)
        except ValueError as err:
            raise ValueError(f"{self.name}: {err}") from None
        return resize_norm * norm_factor * backbone_bound

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, latent_dim={self.latent_dim}, input_size={self.input_size}, "
            f"lipschitz={self.lipschitz}, lipschitz_source={self.lipschitz_source!r}"
        )


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

_RANDOM_NAMES = ("random", "none", "null", "")


def _is_random(weights: str | Path | None) -> bool:
    return weights is None or (isinstance(weights, str) and weights.lower() in _RANDOM_NAMES)


def _warn_random(name: str) -> None:
    log.warning(
        "%s: RANDOMLY INITIALISED weights (weights=None/'random'). Latents from a random "
        "network are for tests only; this is NOT a real experiment.",
        name,
    )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a weight file safely (``torch.load(weights_only=True)``) into a flat state dict.

    Accepts a plain state dict or a checkpoint dict holding one under "state_dict", "model",
    "model_state_dict" or "module"; strips the prefixes that DataParallel/DDP ("module."),
    torch.compile ("_orig_mod.") and this package's wrapper ("backbone.") add to every key.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a tensor state dict loadable with weights_only=True.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"weight file {p} does not exist; set encoder.weights=/path/to/file.pth to an "
            "existing state-dict file, 'default' for torchvision's cached weights, or 'random'"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(
            f"cannot read {p} with torch.load(weights_only=True): {err}. gmcert only loads "
            "plain tensor state dicts (no pickled code, for safety); re-save it with "
            "torch.save(model.state_dict(), path)"
        ) from None
    for _ in range(3):  # checkpoints nest at most a couple of levels
        if isinstance(obj, dict) and not _is_tensor_dict(obj):
            inner = next(
                (
                    obj[k]
                    for k in ("state_dict", "model", "model_state_dict", "module")
                    if isinstance(obj.get(k), dict)
                ),
                None,
            )
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_tensor_dict(obj):
        raise ValueError(
            f"{p} holds no tensor state dict (top-level keys: {_preview(obj)}); expected "
            "{name: tensor} or a checkpoint with a 'state_dict'/'model' entry"
        )
    state = dict(obj)
    for prefix in ("module.", "_orig_mod.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _preview(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = list(obj)[:6]
        return ", ".join(map(repr, keys)) + (" ..." if len(obj) > 6 else "")
    return type(obj).__name__


def load_backbone_weights(
    backbone: nn.Module,
    state: dict[str, Tensor],
    *,
    name: str,
    source: str,
    head_prefixes: Sequence[str] = (),
) -> None:
    """Load ``state`` into ``backbone`` strictly, ignoring classifier-head keys.

    The encoder replaces the classifier head by Identity, so keys under ``head_prefixes``
    (e.g. "fc." for ResNet, "heads." for ViT) are dropped.  Any other missing, unexpected or
    mis-shaped key raises ValueError naming them: a partial load would silently leave random
    layers inside a "pretrained" encoder.
    """
    state = {k: v for k, v in state.items() if not k.startswith(tuple(head_prefixes))}
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise ValueError(
            f"{name}: weights from {source} do not fit this architecture ({'; '.join(parts)}). "
            f"Check that the file is a {name} checkpoint and that image_size matches the size "
            "it was trained at (ViT position embeddings depend on it)."
        )
    backbone.load_state_dict(state, strict=True)


def torchvision_weights_path(url: str) -> Path:
    """Where torch hub keeps the file from ``url``: <torch.hub.get_dir()>/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _resolve_torchvision_weights(
    name: str, weights: str | Path, enum_cls: Any
) -> tuple[Any | None, Path]:
    """Map ``weights`` to (torchvision enum or None, local file) without downloading anything.

    "default" -> enum_cls.DEFAULT; an enum member name ("IMAGENET1K_V1") -> that member; both
    are looked up in torch hub's cache.  Anything else is a path to a local file.
    """
    if isinstance(weights, str):
        key = weights.strip()
        member = None
        if key.lower() == "default":
            member = enum_cls.DEFAULT
        elif key.upper() in enum_cls.__members__:
            member = enum_cls[key.upper()]
        if member is not None:
            path = torchvision_weights_path(member.url)
            if not path.is_file():
                raise FileNotFoundError(
                    f"{name}: weights={weights!r} means torchvision's {enum_cls.__name__}."
                    f"{member.name}, expected in torch hub's cache at {path} (torch.hub.get_dir()"
                    f" = {torch.hub.get_dir()}, set by $TORCH_HOME), but that file is missing and "
                    f"gmcert never downloads. Fix: download {member.url} to {path} (e.g. on a "
                    "machine with internet, then copy it), or pass a local file with "
                    "encoder.weights=/path/to/file.pth, or weights=random for a smoke test."
                )
            return member, path
    path = Path(weights).expanduser()
    if not path.exists() and isinstance(weights, str) and not any(c in weights for c in "/\\."):
        raise FileNotFoundError(
            f"{name}: weights={weights!r} is neither an existing file nor a known name; use "
            f"'default', one of {sorted(enum_cls.__members__)}, 'random', or a path "
            "(encoder.weights=/path/to/file.pth)"
        )
    return None, path


def _as_hw(size: int | Sequence[int] | None, what: str) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        size is None
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"{what} must be a positive int or (H, W) pair of ints, got {size!r}")
    return int(size[0]), int(size[1])


def _module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _finish(
    encoder: PretrainedEncoder,
    *,
    lipschitz: float | str | None,
    source_size: int | tuple[int, int] | None,
    device: torch.device | str,
) -> PretrainedEncoder:
    encoder.to(device)
    size = _as_hw(source_size, "source_size") if source_size is not None else None
    encoder.set_lipschitz(lipschitz, source_size=size, device=device)
    return encoder


# --------------------------------------------------------------------------------------------
# torchvision builders
# --------------------------------------------------------------------------------------------


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
    if _is_random(weights):
        _warn_random(name)
        member, path, source = None, None, "random"
    else:
        member, path = _resolve_torchvision_weights(name, weights, enum_cls)
        source = f"torchvision:{member.name}:{path}" if member else str(path)
    size = image_size if image_size is not None else 224
    _as_hw(size, "image_size")
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
    return _finish(encoder, lipschitz=lipschitz, source_size=source_size, device=device)


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
        lipschitz: None, a declared float, or "spectral" (honest upper bound, see module doc).
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
    if _is_random(weights):
        _warn_random(name)
        member, path, source = None, None, "random"
    else:
        member, path = _resolve_torchvision_weights(name, weights, enum_cls)
        source = f"torchvision:{member.name}:{path}" if member else str(path)
    native = int(member.meta["min_size"][0]) if member is not None else 224
    size = native if image_size is None else image_size
    _as_hw(size, "image_size")
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
        spectral_refusal=_ATTENTION_REFUSAL.format(name=name),
    )
    return _finish(encoder, lipschitz=lipschitz, source_size=source_size, device=device)


# --------------------------------------------------------------------------------------------
# Optional libraries: open_clip, timm
# --------------------------------------------------------------------------------------------


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
    if _is_random(weights):
        _warn_random(name)
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
    if not path.is_file():
        raise FileNotFoundError(
            f"{name}: weight file {path} does not exist; set encoder.weights to an existing "
            f"file ({hint}), 'default' with encoder.allow_download=true, or 'random'"
        )
    return "file", str(path)


def clip(
    *,
    model: str = "ViT-B-32",
    pretrained: str = "openai",
    weights: str | Path | None = "default",
    allow_download: bool = False,
    lipschitz: float | None = None,
    image_size: int | None = None,
    source_size: int | tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
) -> PretrainedEncoder:
    """open_clip image tower; latents = the (unnormalised) image embedding, e.g. 512-d.

    Needs ``pip install open-clip-torch``.  Only the visual tower is kept.

    Args:
        model, pretrained: open_clip architecture name and pretrained tag.
        weights: a local open_clip checkpoint file (loaded by open_clip, which also handles the
            OpenAI TorchScript format and resizes position embeddings), "default" (the tag
            ``pretrained`` through open_clip's hub loader; needs ``allow_download=True``), or
            None/"random".
        allow_download: permit the library's hub loader (it uses the cache when it can).
        lipschitz: None or declared; "spectral" is refused for transformer towers.
        image_size: optional input size override (open_clip's force_image_size).
        source_size, device: as in :func:`resnet50`.
    """
    open_clip = _require("open_clip", "open-clip-torch", "clip")
    name = f"clip:{model}"
    kind, path = _library_weights(name, weights, allow_download, "open_clip_pytorch_model.bin")
    kwargs: dict[str, Any] = {}
    if image_size is not None:
        kwargs["force_image_size"] = image_size
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
    size = _as_hw(size if isinstance(size, int) else tuple(size), "image_size")
    mean = tuple(getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN)
    std = tuple(getattr(visual, "image_std", None) or OPENAI_CLIP_STD)
    latent_dim = int(getattr(visual, "output_dim", 0) or getattr(full, "embed_dim", 0))
    if not latent_dim:
        with torch.no_grad():
            latent_dim = int(visual(torch.zeros(1, 3, *size)).shape[-1])
    encoder = PretrainedEncoder(
        visual,
        name=name,
        latent_dim=latent_dim,
        input_size=size,
        mean=mean,
        std=std,
        weights_source={"random": "random", "file": str(path), "hub": f"open_clip:{pretrained}"}[
            kind
        ],
        # Both tower kinds attend: ViT towers throughout, ModifiedResNet towers in their
        # attention pooling head.
        spectral_refusal=_ATTENTION_REFUSAL.format(name=name),
    )
    return _finish(encoder, lipschitz=lipschitz, source_size=source_size, device=device)


def dinov2(
    *,
    model: str = "vit_small_patch14_dinov2",
    weights: str | Path | None = "default",
    allow_download: bool = False,
    lipschitz: float | None = None,
    image_size: int | None = None,
    source_size: int | tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
) -> PretrainedEncoder:
    """DINOv2 ViT from timm; latents = the pooled (class-token) features, e.g. 384-d for ViT-S.

    Needs ``pip install timm``.

    Args:
        model: timm model name (``vit_small_patch14_dinov2``, ``vit_base_patch14_dinov2`` ...).
        weights: a local timm weight file (.safetensors/.bin/.pth, loaded by timm through
            ``pretrained_cfg_overlay``), "default" (timm's hub weights; needs
            ``allow_download=True``), or None/"random".
        image_size: input side, a multiple of the 14 px patch.  None means 224 (the usual
            evaluation size; timm resamples the position embeddings of the 518 px checkpoints);
            pass 518 for the native size.
        lipschitz: None or declared; "spectral" is refused (attention).
        source_size, device: as in :func:`resnet50`.
    """
    timm = _require("timm", "timm", "dinov2")
    name = f"dinov2:{model}"
    kind, path = _library_weights(name, weights, allow_download, "model.safetensors")
    image_size = 224 if image_size is None else image_size
    _as_hw(image_size, "image_size")
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
    size = (image_size, image_size)
    encoder = PretrainedEncoder(
        backbone,
        name=name,
        latent_dim=int(backbone.num_features),
        input_size=size,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        weights_source={"random": "random", "file": str(path), "hub": f"timm:{model}"}[kind],
        spectral_refusal=_ATTENTION_REFUSAL.format(name=name),
    )
    return _finish(encoder, lipschitz=lipschitz, source_size=source_size, device=device)


ENCODERS: dict[str, Callable[..., PretrainedEncoder]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vit": vit,
    "vit_b_16": vit,
    "clip": clip,
    "dinov2": dinov2,
}


def build_pretrained(name: str, **kwargs: Any) -> PretrainedEncoder:
    """Build the registered encoder ``name`` with keyword arguments ``kwargs``."""
    try:
        builder = ENCODERS[name]
    except KeyError:
        raise ValueError(
            f"unknown pretrained encoder {name!r}; choose one of {sorted(ENCODERS)}"
        ) from None
    return builder(**kwargs)


# --------------------------------------------------------------------------------------------
# Spectral (operator-norm) bounds
# --------------------------------------------------------------------------------------------


def _max_singular_value(
    mats: Tensor, *, known_lower: float = 0.0, rtol: float = 1e-4, power_steps: int = 64
) -> tuple[float, float]:
    """Bracket max_b sigma_max(mats[b]) over a batch (..., m, n), float64 or complex128.

    Returns (upper, lower) with lower <= max_b sigma_max <= upper, typically
    upper <= lower * (1 + rtol).

    Power iteration alone would be dishonest here: it converges from *below*.  Instead it only
    proposes a level: with G_b the PSD Gram matrix of mats[b], mu >= lambda_max(G_b) exactly
    when mu * I - G_b is positive semi-definite, which a Cholesky factorisation certifies
    (backward-stable: success in float64 proves it up to a relative ~r * 1e-16 that the
    callers' slack covers).  So: power iteration gives Rayleigh quotients (true lower bounds),
    mu = max lower * (1 + rtol)^2 is tested for every matrix at once, and on failure the
    failing matrices are iterated further and mu is raised geometrically (so the loop always
    ends).  ``known_lower`` (a lower bound from other batches) lets this batch skip work.
    Batched matrix products and Cholesky are fast and stable on CPU and GPU, unlike batched
    Hermitian eigen-solvers.
    """
    m, n = mats.shape[-2:]
    g = mats.mH @ mats if m >= n else mats @ mats.mH
    g = g.reshape(-1, *g.shape[-2:])
    r = g.shape[-1]
    eye = torch.eye(r, dtype=g.dtype, device=g.device)
    gen = torch.Generator(device=g.device).manual_seed(0)  # reproducible bounds
    v = torch.randn(g.shape[0], r, 1, generator=gen, device=g.device, dtype=torch.float64)
    v = v.to(g.dtype)

    def iterate(gs: Tensor, vs: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        for _ in range(steps):
            vs = gs @ vs
            vs = vs / torch.linalg.vector_norm(vs, dim=(-2, -1), keepdim=True).clamp_min(1e-300)
        rayleigh = (vs.mH @ gs @ vs).real.flatten()  # unit vectors: a true lower bound
        return vs, rayleigh

    trace = torch.diagonal(g, dim1=-2, dim2=-1).real.sum(-1)
    # Propose the level from the matrices with the largest traces (trace >= lambda_max, so the
    # maximum is very likely among them); the Cholesky test below still checks every matrix.
    top = trace.topk(min(len(trace), 32)).indices
    v[top], rayleigh = iterate(g[top], v[top], power_steps)
    lower = max(known_lower**2, float(rayleigh.max()))
    mu = lower * (1 + rtol) ** 2
    rounds = 0
    while True:
        if mu <= 0:  # no positive Rayleigh quotient: every matrix is zero, or none was given
            if trace.numel() == 0 or float(trace.max()) <= 0:
                return 0.0, 0.0
            mu = float(trace.max()) * 1e-12
        # trace(G) >= lambda_max, so matrices with a small trace need no certificate.
        todo = trace > mu
        if bool(todo.any()):
            info = torch.linalg.cholesky_ex(mu * eye - g[todo]).info
            failed = todo.clone()
            failed[todo] = info != 0
        else:
            failed = todo
        if not bool(failed.any()):
            return math.sqrt(mu), math.sqrt(lower)
        v_f, rayleigh = iterate(g[failed], v[failed], power_steps)
        v[failed] = v_f
        lower = max(lower, float(rayleigh.max()))
        rounds += 1
        # Steps growing with the round count: the loop must end even if power iteration
        # stalls, while early rounds overshoot the true maximum by little.
        mu = max(lower * (1 + rtol) ** 2, mu * (1 + rtol) ** (2 * rounds))


def matrix_norm_bound(weight: Tensor) -> float:
    """Upper bound on the spectral norm of a 2-D matrix (within 1e-4 of exact)."""
    upper, _ = _max_singular_value(weight.detach().to(torch.float64))
    return upper * (1 + _FLOAT64_SLACK)


def _conv_padding(conv_padding: Any, kernel: int, dilation: int, index: int) -> int:
    """Total zero padding (both sides) that torch applies along one spatial dimension."""
    if isinstance(conv_padding, str):
        return 0 if conv_padding == "valid" else dilation * (kernel - 1)
    return 2 * int(_pair(conv_padding)[index])


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv2d_norm_bound(
    weight: Tensor,
    input_hw: tuple[int, int],
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    out_scale: Tensor | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Upper bound on the l2 operator norm of ``x -> out_scale * conv2d(x, weight, ...)``.

    For inputs (C_in, *input_hw), zero padding, any stride, dilation and groups; ``out_scale``
    (C_out,) is a diagonal output scaling (a folded BatchNorm).

    Why it is an upper bound: the zero-padded convolution equals ``crop o T o embed`` where
    ``embed`` zero-pads the input into an (N_h, N_w) grid at least as large as the padded input
    (N a multiple of the stride s), ``T`` is the strided *circular* convolution on that grid and
    ``crop`` keeps the outputs that did not wrap around; embed and crop have norm <= 1.  Split
    each axis of the grid into its s polyphase components x_r[m] = x[s m + r] (an orthogonal
    re-indexing); a tap at offset t = a * dilation = s q + r then reads x_r[i + q], so T is a
    stride-1 circular convolution on the (N/s)-grid with C_in * s_h * s_w input channels, which
    the 2-D DFT block-diagonalises.  Hence ||T|| = max over grid frequencies (u, v) of the top
    singular value of K(u, v)[o, (c, r_h, r_w)] = sum over taps with those residues of
    w[o, c, a, b] exp(-2 pi i (u q_a / M_h + v q_b / M_w)), bounded from above within ~1e-4
    by :func:`_max_singular_value` (float64).
    Frequencies with v > M_w / 2 are complex conjugates of others (same singular values) and
    are skipped; grouped convolutions are block-diagonal, so the max over groups is taken.
    """
    w = weight.detach().to(device=device, dtype=torch.float64)
    if out_scale is not None:
        w = w * out_scale.detach().to(w).view(-1, 1, 1, 1)
    c_out, c_in_g, kh, kw = w.shape
    w = w.view(groups, c_out // groups, c_in_g, kh, kw).to(torch.complex128)

    def axis_transform(axis: int, k: int, n_freq: int | None) -> Tensor:
        """(freqs, residues, taps) complex matrix: [r_a == r] * exp(-2 pi i u q_a / M)."""
        s, d = _pair(stride)[axis], _pair(dilation)[axis]
        n = input_hw[axis] + _conv_padding(padding, k, d, axis)
        offsets = [a * d for a in range(k)]
        residues = sorted({t % s for t in offsets})
        q = torch.tensor([t // s for t in offsets], dtype=torch.float64, device=w.device)
        # A kernel whose taps all fall on one polyphase position does not depend on the
        # frequency along this axis (1x1 convolutions collapse to a matrix norm).
        m = 1 if all(t // s == 0 for t in offsets) else -(-n // s)
        freqs = torch.arange(
            m if n_freq is None else m // 2 + 1, dtype=torch.float64, device=w.device
        )
        phase = torch.exp(torch.outer(freqs, q) * (-2j * math.pi / m))  # (U, k)
        mask = torch.tensor(
            [[t % s == r for t in offsets] for r in residues],
            dtype=torch.complex128,
            device=w.device,
        )  # (R, k)
        return phase[:, None, :] * mask[None, :, :]

    fh = axis_transform(0, kh, None)
    fw = axis_transform(1, kw, n_freq=0)  # half spectrum along the last axis
    per_u = fw.shape[0] * groups * (c_out // groups) * c_in_g * fh.shape[1] * fw.shape[1]
    chunk = max(1, _MAX_TRANSFORM_ELEMENTS // per_u)
    upper, lower = 0.0, 0.0
    for start in range(0, fh.shape[0], chunk):
        part = torch.einsum("upa,vqb,goiab->uvgoipq", fh[start : start + chunk], fw, w)
        part = part.reshape(*part.shape[:4], -1)  # (..., C_out/g, C_in/g * R_h * R_w)
        up, low = _max_singular_value(part, known_lower=lower)
        upper, lower = max(upper, up), max(lower, low)
    return upper * (1 + _FLOAT64_SLACK)


def _bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> Tensor:
    """Per-channel multiplier of an eval-mode BatchNorm (its bias is irrelevant to Lipschitz)."""
    if bn.training or bn.running_var is None:
        raise ValueError(
            f"{type(bn).__name__} in training mode (or without running statistics) depends on "
            "the batch, so it has no fixed Lipschitz constant; call .eval() on the network"
        )
    scale = 1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    return scale


def _separable_linear_norm(op: Callable[[Tensor, bool], Tensor], hw: tuple[int, int]) -> float:
    """Norm of a separable linear map on (C, H, W) images: ||A_H|| * ||A_W|| (an upper bound,
    within ~1e-4).

    ``op(x, along_h)`` applies the map along one spatial dimension to a float64 batch; feeding
    it the identity basis (n, 1, n, 1) or (n, 1, 1, n) yields the 1-D matrix column by column.
    """
    total = 1.0
    for along_h, n in ((True, hw[0]), (False, hw[1])):
        eye = torch.eye(n, dtype=torch.float64)
        basis = eye.view(n, 1, n, 1) if along_h else eye.view(n, 1, 1, n)
        cols = op(basis, along_h).reshape(n, -1)  # row j = image of basis vector j
        total *= _max_singular_value(cols.T)[0]
    return total * (1 + _FLOAT64_SLACK)


def bilinear_resize_norm(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> float:
    """Exact (up to slack) l2 norm of bilinear resizing source_hw -> target_hw.

    Matches ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``, which is
    separable: weights are products of per-axis weights.  1.0 when no resize happens.
    """
    if tuple(source_hw) == tuple(target_hw):
        return 1.0

    def op(x: Tensor, along_h: bool) -> Tensor:
        size = (target_hw[0], 1) if along_h else (1, target_hw[1])
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)

    return _separable_linear_norm(op, tuple(source_hw))


def _avgpool_norm(m: nn.AvgPool2d, hw: tuple[int, int]) -> float:
    if m.divisor_override is not None:
        raise ValueError("AvgPool2d with divisor_override is not supported by the spectral bound")
    (kh, kw), (sh, sw), (ph, pw) = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)

    def op(x: Tensor, along_h: bool) -> Tensor:
        k, s, p = ((kh, 1), (sh, 1), (ph, 0)) if along_h else ((1, kw), (1, sw), (0, pw))
        return F.avg_pool2d(
            x, k, s, p, ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad
        )

    return _separable_linear_norm(op, hw)


def _adaptive_avgpool_norm(m: nn.AdaptiveAvgPool2d, hw: tuple[int, int]) -> float:
    out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    oh, ow = (hw[0] if out[0] is None else out[0]), (hw[1] if out[1] is None else out[1])

    def op(x: Tensor, along_h: bool) -> Tensor:
        return F.adaptive_avg_pool2d(x, (oh, 1) if along_h else (1, ow))

    return _separable_linear_norm(op, hw)


def _window_coverage(n: int, k: int, s: int, p: int, d: int, n_out: int) -> int:
    """Largest number of pooling windows (along one axis) that contain the same index."""
    counts = [0] * n
    for i in range(n_out):
        for t in range(k):
            j = i * s - p + t * d
            if 0 <= j < n:
                counts[j] += 1
    return max(counts) if counts else 1


def _maxpool_norm(m: nn.MaxPool2d, hw: tuple[int, int], out_hw: tuple[int, int]) -> float:
    # |max_w a - max_w b| <= max_{i in w} |a_i - b_i|, so the squared output change is at most
    # sum_w sum_{i in w} |d_i|^2 <= (max windows per pixel) * ||d||^2.
    (kh, kw), (sh, sw) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size)
    (ph, pw), (dh, dw) = _pair(m.padding), _pair(m.dilation)
    cov = _window_coverage(hw[0], kh, sh, ph, dh, out_hw[0]) * _window_coverage(
        hw[1], kw, sw, pw, dw, out_hw[1]
    )
    return math.sqrt(cov)


def _resnet_chain(m: nn.Module) -> list[nn.Module]:
    # Mirrors torchvision.models.ResNet._forward_impl.
    return [
        m.conv1,
        m.bn1,
        m.relu,
        m.maxpool,
        m.layer1,
        m.layer2,
        m.layer3,
        m.layer4,
        m.avgpool,
        nn.Flatten(1),
        m.fc,
    ]


def _block_parts(m: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(branch, shortcut) of a torchvision BasicBlock / Bottleneck (mirrors their forward)."""
    branch = [m.conv1, m.bn1, m.relu, m.conv2, m.bn2]
    if hasattr(m, "conv3"):
        branch += [m.relu, m.conv3, m.bn3]
    shortcut = [m.downsample] if m.downsample is not None else []
    return branch, shortcut


@torch.no_grad()
def _output_shape(modules: Sequence[nn.Module], shape: tuple[int, ...], device) -> tuple[int, ...]:
    dtype = next((p.dtype for m in modules for p in m.parameters()), torch.float32)
    x = torch.zeros((1, *shape), device=device, dtype=dtype)
    for mod in modules:
        x = mod(x)
    return tuple(x.shape[1:])


_ONE_LIPSCHITZ = (nn.ReLU, nn.Identity, nn.Flatten, nn.Dropout, nn.ReLU6)


def _chain_bound(
    modules: Sequence[nn.Module], shape: tuple[int, ...], device
) -> tuple[float, tuple]:
    """Bound for modules applied in sequence: the product of the per-module bounds."""
    total, i = 1.0, 0
    mods = list(modules)
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        # Folding BN into the preceding affine layer bounds the pair by one norm, tighter than
        # the product of the two.
        if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            bound, used = _conv_bound(m, shape, _bn_scale(nxt), device), 2
        elif isinstance(m, nn.Linear) and isinstance(nxt, nn.BatchNorm1d):
            scale = _bn_scale(nxt).to(device).view(-1, 1)
            bound, used = matrix_norm_bound(m.weight.to(device).double() * scale), 2
        else:
            bound, shape_out = _module_bound(m, shape, device)
            total *= bound
            shape, i = shape_out, i + 1
            continue
        total *= bound
        shape = _output_shape(mods[i : i + used], shape, device)
        i += used
    return total, shape


def _conv_bound(m: nn.Conv2d, shape: tuple[int, ...], out_scale: Tensor | None, device) -> float:
    if m.padding_mode != "zeros":
        raise ValueError(
            f"Conv2d with padding_mode={m.padding_mode!r} is not supported by the spectral "
            "bound (only zero padding)"
        )
    if len(shape) != 3:
        raise ValueError(f"Conv2d expects (C, H, W) inputs, got shape {shape}")
    return conv2d_norm_bound(
        m.weight,
        (shape[1], shape[2]),
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        groups=m.groups,
        out_scale=out_scale,
        device=device,
    )


def _module_bound(m: nn.Module, shape: tuple[int, ...], device) -> tuple[float, tuple]:
    """(Lipschitz upper bound, output shape) for one module on inputs of ``shape`` (no batch)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    if isinstance(m, ResNet):
        return _chain_bound(_resnet_chain(m), shape, device)
    if isinstance(m, (BasicBlock, Bottleneck)):
        branch, shortcut = _block_parts(m)
        l_branch, _ = _chain_bound(branch, shape, device)
        l_short, _ = _chain_bound(shortcut, shape, device) if shortcut else (1.0, None)
        # relu(branch(x) + shortcut(x)): the sum is (L_branch + L_shortcut)-Lipschitz and ReLU
        # is 1-Lipschitz.
        return l_branch + l_short, _output_shape([m], shape, device)
    if isinstance(m, nn.Sequential):
        return _chain_bound(list(m), shape, device)
    out = _output_shape([m], shape, device)
    if isinstance(m, _ONE_LIPSCHITZ):
        return 1.0, out
    if isinstance(m, nn.LeakyReLU):
        return max(1.0, abs(m.negative_slope)), out
    if isinstance(m, nn.Conv2d):
        return _conv_bound(m, shape, None, device), out
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return float(_bn_scale(m).abs().max()) * (1 + _FLOAT64_SLACK), out
    if isinstance(m, nn.Linear):
        return matrix_norm_bound(m.weight.to(device)), out
    if isinstance(m, nn.MaxPool2d):
        return _maxpool_norm(m, shape[1:], out[1:]), out
    if isinstance(m, nn.AvgPool2d):
        return _avgpool_norm(m, shape[1:]), out
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return _adaptive_avgpool_norm(m, shape[1:]), out
    raise ValueError(
        f"no honest Lipschitz bound is implemented for {type(m).__name__}; spectral bounds "
        "cover Conv2d (zero padding), BatchNorm (eval), Linear, ReLU/LeakyReLU, Max/Avg/"
        "AdaptiveAvg pooling, Flatten, Dropout (eval), Sequential and torchvision ResNets. "
        "Declare a bound instead (encoder.lipschitz=<float>) or leave it null."
    )


def spectral_lipschitz(
    module: nn.Module,
    input_shape: Sequence[int],
    *,
    device: torch.device | str | None = None,
) -> float:
    """Honest upper bound on the l2 -> l2 Lipschitz constant of ``module`` (in eval mode).

    Args:
        module: a supported network (see :func:`_module_bound`'s list): plain
            conv/BN/ReLU/pool/linear stacks and torchvision ResNets.
        input_shape: (C, H, W) of one input, without the batch dimension (conv norms depend
            on the spatial size).
        device: where to run the float64 computations (default: the module's device).
    Returns:
        L such that ||module(x) - module(x')||_2 <= L ||x - x'||_2 for all inputs of that shape,
        in exact arithmetic (float32 rounding of the forward pass itself is not covered).
    Raises:
        ValueError: for layers without an implemented honest bound, or BN in training mode.
    """
    if device is None:
        device = _module_device(module)
    batch_dependent = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    if any(isinstance(sub, batch_dependent) and sub.training for sub in module.modules()):
        raise ValueError(
            f"{type(module).__name__} is in training mode; call .eval() first (BatchNorm and "
            "Dropout are only fixed maps in eval mode)"
        )
    bound, _ = _module_bound(module, tuple(int(s) for s in input_shape), device)
    return float(bound)


__all__ = [
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PretrainedEncoder",
    "bilinear_resize_norm",
    "build_pretrained",
    "clip",
    "conv2d_norm_bound",
    "dinov2",
    "load_backbone_weights",
    "matrix_norm_bound",
    "read_state_dict",
    "resnet18",
    "resnet50",
    "spectral_lipschitz",
    "torchvision_weights_path",
    "vit",
]
