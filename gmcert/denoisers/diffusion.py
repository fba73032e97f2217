"""One-shot diffusion denoising (Carlini et al. 2023; docs/theory.md section 10).

A DDPM (Ho, Jain and Abbeel 2020) works on images in [-1, 1]; its forward process makes
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) e'``, e' ~ N(0, I). A smoothing sample ``x + e``
(pixels in [0, 1], e ~ N(0, sigma^2 I)) is, in those units, ``x0 + 2 sigma e'`` with
``x0 = 2 x - 1``. Scaled by ``sqrt(abar_t)`` it has exactly the law of ``x_t`` at the timestep
``t*`` where ``(1 - abar_t) / abar_t = 4 sigma^2``, i.e. ``abar_t = 1 / (1 + 4 sigma^2)``. One
call of the network there predicts the noise, and ``x0`` follows in closed form; no sampling
chain, so the denoiser is deterministic (the only randomness is smoothing's own noise).

The schedule is discrete, so ``t*`` is the step whose ``abar_t`` is closest to the target; the
noise level it removes (in pixel units) is logged beside sigma.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gmcert.denoisers import PREDICTION_TYPES
from gmcert.denoisers.batched import BatchedDenoiser
from gmcert.denoisers.builders import build_module
from gmcert.denoisers.weights import (
    FOLDER_HINT,
    import_diffusers,
    load_unet_folder,
)

log = logging.getLogger(__name__)

__all__ = [
    "DDPM_SCHEDULE",
    "OneShotDiffusionDenoiser",
    "build_diffusion_denoiser",
    "matching_timestep",
    "removed_noise_std",
]

# Ho et al.'s schedule (google/ddpm-cifar10-32 uses it), for folders without a scheduler config.
DDPM_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
}
_SCHEDULE_OPTIONS = (*DDPM_SCHEDULE,)


def matching_timestep(alphas_cumprod, sigma: float) -> int:
    """The step ``t*`` whose ``abar_t`` is closest to ``1 / (1 + 4 sigma^2)``: the step whose
    noise matches smoothing's noise of std ``sigma`` (pixel units), doubled by [0, 1] -> [-1, 1].
    Outside the schedule's range this is its first or last step."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    return int(np.argmin(np.abs(abar - 1.0 / (1.0 + 4.0 * sigma**2))))


def removed_noise_std(abar: float) -> float:
    """The pixel-unit noise std that a step with this ``abar`` denoises: the inverse of the
    matching rule, ``sqrt((1 - abar) / abar) / 2``."""
    return math.sqrt((1.0 - abar) / abar) / 2.0


class OneShotDiffusionDenoiser(nn.Module):
    """Noisy images in [0, 1] -> ``network``'s one-step estimate of the clean images, in [0, 1].

    ``network(x_t, t)`` predicts, per ``prediction_type``, the noise (``epsilon``), the clean
    image (``sample``) or ``v = sqrt(abar) e' - sqrt(1 - abar) x0`` (``v_prediction``); an output
    with twice the input's channels carries a learned variance in its second half, which is
    dropped. ``abar`` is ``abar_t`` at ``timestep``. ``image_size``: the network runs at that
    side, the noisy image resized to it (bilinear) and the estimate resized back; None runs it
    at the data's resolution.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        abar: float,
        timestep: int,
        prediction_type: str = "epsilon",
        image_size: int | None = None,
    ):
        super().__init__()
        if not 0.0 < abar < 1.0:
            raise ValueError(f"abar must lie in (0, 1), got {abar}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        self.network = network
        self.timestep = int(timestep)
        self.abar = float(abar)
        self.prediction_type = prediction_type
        self.image_size = image_size
        self._signal, self._noise = math.sqrt(abar), math.sqrt(1.0 - abar)
        config = getattr(network, "config", None)
        self._channels = getattr(config, "in_channels", None)
        self._trained_size = getattr(config, "sample_size", None)
        self._warned_size = False

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        if noisy.dim() != 4:
            raise ValueError(
                f"denoiser=diffusion needs image data (B, C, H, W), got inputs of shape "
                f"{tuple(noisy.shape)}"
            )
        if self._channels is not None and noisy.shape[1] != self._channels:
            raise ValueError(
                f"the diffusion model takes {self._channels}-channel images, the data has "
                f"{noisy.shape[1]} channels"
            )
        size = tuple(noisy.shape[-2:])
        x_t = (2.0 * noisy.float() - 1.0) * self._signal
        if self.image_size is not None and size != (self.image_size, self.image_size):
            # Resizing changes the noise's law (it is no longer white with std 2 sigma per
            # pixel); the certificate stays sound, only the denoising gets worse.
            x_t = _resize(x_t, (self.image_size, self.image_size))
        self._warn_if_untrained_size(tuple(x_t.shape[-2:]))
        t = torch.full((len(x_t),), self.timestep, dtype=torch.long, device=x_t.device)
        out = self.network(x_t, t)
        out = getattr(out, "sample", out)
        if isinstance(out, tuple | list):
            out = out[0]
        out = out.float()
        channels = x_t.shape[1]
        if out.shape[1] == 2 * channels:
            out = out[:, :channels]  # learned variance (guided-diffusion): keep the mean's part
        if out.shape != x_t.shape:
            raise ValueError(
                f"the diffusion network returned shape {tuple(out.shape)} for inputs of shape "
                f"{tuple(x_t.shape)}; expected the same shape (or twice the channels)"
            )
        if self.prediction_type == "epsilon":
            x0 = (x_t - self._noise * out) / self._signal
        elif self.prediction_type == "v_prediction":
            x0 = self._signal * x_t - self._noise * out
        else:
            x0 = out
        x0 = x0.clamp(-1.0, 1.0)
        if tuple(x0.shape[-2:]) != size:
            x0 = _resize(x0, size).clamp(-1.0, 1.0)
        return (x0 + 1.0) / 2.0

    def _warn_if_untrained_size(self, size: tuple[int, int]) -> None:
        trained = self._trained_size
        if isinstance(trained, int):
            trained = (trained, trained)
        if trained is not None and tuple(trained) != size and not self._warned_size:
            self._warned_size = True
            log.warning(
                "denoiser: the diffusion model was trained at %s px and runs at %s px "
                "(set denoiser.image_size to resize)",
                tuple(trained),
                size,
            )

    def extra_repr(self) -> str:
        return (
            f"timestep={self.timestep}, abar={self.abar:.6g}, "
            f"prediction_type={self.prediction_type!r}, image_size={self.image_size}"
        )


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def build_diffusion_denoiser(options, *, sigma: float, device: torch.device) -> BatchedDenoiser:
    """The one-shot denoiser for noise std ``sigma`` (pixel units), on ``device``, in eval mode.

    The network comes from ``options.weights`` (a diffusers folder, :mod:`.weights`) or from
    ``options.builder`` (with ``options.weights`` then an optional state-dict file for it). The
    schedule is the folder's ``scheduler_config.json`` if it has one, else
    :data:`DDPM_SCHEDULE`; the ``beta_*``, ``num_train_timesteps`` and ``prediction_type``
    options override either.
    """
    diffusers = import_diffusers()
    scheduler_config = None
    if options.builder is not None:
        network = build_module(
            options, sigma=sigma, returns="the noise-prediction network eps(x_t, t)"
        )
    elif options.weights is None:
        raise ValueError(f"denoiser=diffusion needs denoiser.weights=DIR. {FOLDER_HINT}")
    else:
        network, scheduler_config = load_unet_folder(options.weights)
    if getattr(getattr(network, "config", None), "time_embedding_type", None) == "fourier":
        raise ValueError(
            "this UNet2DModel is conditioned on noise scales (fourier time embedding, a score "
            "model); one-shot denoising needs a DDPM-style model conditioned on timesteps"
        )

    schedule = {**DDPM_SCHEDULE, **(scheduler_config or {})}
    schedule.update(
        {
            key: getattr(options, key)
            for key in _SCHEDULE_OPTIONS
            if getattr(options, key) is not None
        }
    )
    try:
        scheduler = diffusers.DDPMScheduler.from_config(schedule)
    except NotImplementedError as err:
        raise ValueError(
            f"unsupported diffusion schedule {schedule.get('beta_schedule')!r}: {err}"
        ) from None
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"the schedule's prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}; "
            "set denoiser.prediction_type"
        )
    alphas_cumprod = scheduler.alphas_cumprod.double().numpy()

    timestep = options.timestep
    if timestep is None:
        timestep = matching_timestep(alphas_cumprod, sigma)
    elif timestep >= len(alphas_cumprod):
        raise ValueError(
            f"denoiser.timestep={timestep} is past the schedule's {len(alphas_cumprod)} steps"
        )
    abar = float(alphas_cumprod[timestep])
    removed = removed_noise_std(abar)
    log.info(
        "denoiser: one-shot diffusion at t*=%d of %d (abar=%.6g): removes noise std %.4g, "
        "smoothing sigma %.4g (pixel units)",
        timestep,
        len(alphas_cumprod),
        abar,
        removed,
        sigma,
    )
    if abs(removed - sigma) > 0.05 * sigma:
        log.warning(
            "denoiser: step %d removes noise std %.4g but sigma is %.4g: the schedule cannot "
            "match this sigma closely (certificates stay sound; denoising suffers)",
            timestep,
            removed,
            sigma,
        )
    network.eval().requires_grad_(False)
    inner = OneShotDiffusionDenoiser(
        network,
        abar=abar,
        timestep=timestep,
        prediction_type=prediction_type,
        image_size=options.image_size,
    )
    denoiser = BatchedDenoiser(
        inner, name="diffusion", bf16=options.bf16, max_batch=options.max_batch
    )
    return denoiser.to(device).eval()
