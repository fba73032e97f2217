"""The frozen-encoder wrapper every pretrained builder returns: [0, 1] images -> latents.

A :class:`PretrainedEncoder` is an ``nn.Module`` mapping a batch of images in [0, 1] pixel
units, shape (B, 3, H, W), to latents of shape (B, latent_dim).  The resize to the network's
input size (bilinear, ``antialias=False``, so a fixed linear map) and the channel
normalisation live *inside* the module, so noise levels (sigma) and certified radii are always
stated in [0, 1] pixel units of the images the user passes.

Attributes shared by every encoder:

- ``name``: registry name, ``latent_dim``: d, ``input_size``: (H, W) the backbone sees;
- ``lipschitz``: an upper bound on the l2 -> l2 Lipschitz constant of the *whole* map from
  [0, 1] pixels to latents, or None when unknown (then only latent-space certificates exist);
- ``lipschitz_source``: "declared" (the user's word), "spectral" (computed by
  :mod:`gmcert.encoders.spectral`) or None; ``lipschitz_input_size``: the (H, W) pixel grid a
  spectral bound refers to;
- ``weights_source``: "random", "torchvision:<ENUM>" + file path, or the file that was loaded
  (feature caches hash it).

Self-attention is not globally Lipschitz (Kim, Papamakarios & Mnih 2021), so encoders with
attention layers refuse "spectral" with :data:`ATTENTION_REFUSAL`.

Every pretrained builder takes the options they share as one :class:`BuildOptions` and ends
with :meth:`BuildOptions.wrap` (wrap the backbone, move it to the device, attach the bound).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmcert.encoders.spectral import bilinear_resize_norm, module_device, spectral_lipschitz

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ATTENTION_REFUSAL = (
    "{name}: lipschitz='spectral' is refused: dot-product self-attention is not globally "
    "Lipschitz (Kim et al. 2021), so no honest product-of-layer-norms bound exists for this "
    "encoder. Either declare a bound you can justify (encoder.lipschitz=<float>) or leave "
    "encoder.lipschitz=null, which reports certificates in latent units only."
)


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
        mean, std: per-channel normalisation constants (3 values each, in [0, 1] pixel units;
            default ImageNet's).
        weights_source: human-readable provenance of the weights (file path or "random").
        attention: the backbone has self-attention layers, so a spectral bound is refused with
            :data:`ATTENTION_REFUSAL` (kept as ``spectral_refusal``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        name: str,
        latent_dim: int,
        input_size: tuple[int, int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        weights_source: str = "unknown",
        attention: bool = False,
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
        self.spectral_refusal = ATTENTION_REFUSAL.format(name=name) if attention else None
        self.lipschitz: float | None = None
        self.lipschitz_source: str | None = None
        self.lipschitz_input_size: tuple[int, int] | None = None
        self.lipschitz_channels: int = 3
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

    def fit(self, train_inputs, train_labels=None) -> PretrainedEncoder:
        """Nothing to learn: a pretrained encoder is frozen (every encoder has ``fit``)."""
        return self

    def linear_map(self) -> None:
        """Not linear in its input: certificates go through ``lipschitz`` (every encoder has
        ``linear_map``)."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        """Encode images.

        Args:
            x: (B, 3, H, W) float images in [0, 1] pixel units (any H, W; resized inside).
        Returns:
            (B, latent_dim) latents in the backbone's dtype.
        """
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"{self.name}: expected images of shape (B, 3, H, W) or grey (B, 1, H, W) in "
                f"[0, 1], got {tuple(x.shape)}; add a batch dimension with x[None]"
            )
        if self.lipschitz is not None and x.shape[1] != self.lipschitz_channels:
            # Replicating grey to RGB multiplies distances by sqrt(3): a bound made for one
            # channel count does not hold for the other.
            raise ValueError(
                f"{self.name}: its Lipschitz bound was made for {self.lipschitz_channels}-channel "
                f"inputs but got {x.shape[1]}; rebuild the encoder with "
                f"source_channels={x.shape[1]}"
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB, as PIL's convert("RGB") does
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
        source_size: int | tuple[int, int] | None = None,
        source_channels: int = 3,
        device: torch.device | str | None = None,
    ) -> PretrainedEncoder:
        """Attach a Lipschitz bound of the whole map ([0, 1] pixels, l2 -> latents, l2).

        Args:
            lipschitz: None (unknown; latent-unit certificates only), a positive float the
                user declares and answers for, or "spectral" (computed, see
                :mod:`gmcert.encoders.spectral`).
            source_size: (H, W) of the images that will be fed (e.g. (32, 32) for CIFAR-10
                into a 224 px network); the resize's norm depends on it.  Default: input_size.
            source_channels: 1 for grey images, which forward() replicates to RGB: every
                l2 distance grows by sqrt(3) on the way, so the bound (spectral or declared,
                a bound of the RGB map) is multiplied by sqrt(3).
            device: where to run the spectral computation (default: the encoder's device).
        Returns:
            self.
        """
        self.lipschitz, self.lipschitz_source, self.lipschitz_input_size = None, None, None
        if source_channels not in (1, 3):
            raise ValueError(f"{self.name}: source_channels must be 1 or 3, got {source_channels}")
        self.lipschitz_channels = source_channels
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
        replication = math.sqrt(3) if source_channels == 1 else 1.0
        if isinstance(lipschitz, str):
            size = as_hw(source_size, "source_size") if source_size else self.input_size
            rgb_bound = self.spectral_lipschitz(source_size=size, device=device)
            self.lipschitz = replication * rgb_bound
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
        self.lipschitz, self.lipschitz_source = replication * value, "declared"
        return self

    def spectral_lipschitz(
        self,
        *,
        source_size: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
    ) -> float:
        """Upper bound on the l2 Lipschitz constant of forward() for (3, *source_size) inputs.

        = ||resize(source_size -> input_size)||_2 * max_c(1 / std_c) * L(backbone), each factor
        an upper bound (see :mod:`gmcert.encoders.spectral`).  Raises ValueError for backbones with
        layers that have no honest bound (attention, unknown modules).
        """
        if self.spectral_refusal:
            raise ValueError(self.spectral_refusal)
        size = as_hw(source_size, "source_size") if source_size else self.input_size
        if device is None:
            device = module_device(self)
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


def as_hw(size: int | Sequence[int] | None, what: str) -> tuple[int, int]:
    """``size`` (an int side or an (H, W) pair of positive ints) as (H, W); ValueError else."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        size is None
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"{what} must be a positive int or (H, W) pair of ints, got {size!r}")
    return int(size[0]), int(size[1])


@dataclass(frozen=True)
class BuildOptions:
    """The options every pretrained builder takes; builder-specific ones are its own keywords.

    Attributes:
        weights: where the weights come from: "default" (the library's default weights, from
            its local cache), a path to a weight file, or None/"random" (random init, tests
            only); each builder says what else it accepts and where "default" is read from.
        lipschitz: None (unknown: latent-unit certificates only), a declared positive float
            (a number typed as a string is accepted), or "spectral" (an honest upper bound,
            see :mod:`gmcert.encoders.spectral`; refused for encoders with attention).
        image_size: side of the square input the backbone sees; None = the builder's default.
            Small values (32, 64) let tests run random-init networks cheaply.
        source_size: (H, W) (or one int side) of the images that will be fed, for the spectral
            bound's resize factor (default: image_size, i.e. no resize).
        source_channels: 3, or 1 for grey images (replicated to RGB: the bound gains sqrt(3)).
        device: where the module lives and where a spectral bound is computed.
    """

    weights: str | Path | None = "default"
    lipschitz: float | str | None = None
    image_size: int | None = None
    source_size: int | tuple[int, int] | None = None
    source_channels: int = 3
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        for what in ("image_size", "source_size"):
            if getattr(self, what) is not None:
                as_hw(getattr(self, what), what)

    def wrap(self, backbone: nn.Module, **encoder_args) -> PretrainedEncoder:
        """The frozen :class:`PretrainedEncoder` around ``backbone`` (``encoder_args`` are its
        keywords), moved to ``device``, with the ``lipschitz`` bound attached."""
        encoder = PretrainedEncoder(backbone, **encoder_args).to(self.device)
        return encoder.set_lipschitz(
            self.lipschitz,
            source_size=self.source_size,
            source_channels=self.source_channels,
            device=self.device,
        )


__all__ = [
    "ATTENTION_REFUSAL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BuildOptions",
    "PretrainedEncoder",
    "as_hw",
]
