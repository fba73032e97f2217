"""Denoisers for denoised smoothing (Salman et al. 2020; Carlini et al. 2023): a module put
in front of the encoder, so that smoothing's base classifier is head(encoder(denoise(x + e)))
(docs/theory.md section 10).

``build_denoiser(options, sigma=..., device=...)`` returns the module, or None for
``denoiser=none``. Every denoiser takes noisy images in [0, 1] pixel units (noise std
``sigma`` in those units, not clipped) and returns denoised images of the same shape. The
certificate never depends on how well it denoises: it is part of the base classifier.

- ``diffusion``: one-shot denoising with a pretrained diffusion model (:mod:`.diffusion`);
- ``custom``: any module from ``denoiser.builder=package.module:function`` (:mod:`.custom`).
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
from collections.abc import Callable, Mapping
from types import SimpleNamespace

import torch

from gmcert.checks import check_sigma

log = logging.getLogger(__name__)

__all__ = [
    "DENOISER_BUILDERS",
    "build_denoiser",
    "check_denoiser_options",
    "check_denoiser_present",
]

# Options that only some denoisers read; set for another one they are ignored, with a warning.
_READ_BY = {
    "weights": {"diffusion", "custom"},
    "builder": {"diffusion", "custom"},
    "timestep": {"diffusion"},
    "image_size": {"diffusion"},
    "beta_schedule": {"diffusion"},
    "beta_start": {"diffusion"},
    "beta_end": {"diffusion"},
    "num_train_timesteps": {"diffusion"},
    "prediction_type": {"diffusion"},
}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _build_none(options, *, sigma: float, device: torch.device) -> None:
    return None


def _build_diffusion(options, *, sigma: float, device: torch.device) -> torch.nn.Module:
    from gmcert.denoisers.diffusion import build_diffusion_denoiser

    return build_diffusion_denoiser(options, sigma=sigma, device=device)


def _build_custom(options, *, sigma: float, device: torch.device) -> torch.nn.Module:
    from gmcert.denoisers.custom import build_custom_denoiser

    return build_custom_denoiser(options, sigma=sigma, device=device)


DENOISER_BUILDERS: dict[str, Callable[..., torch.nn.Module | None]] = {
    "none": _build_none,
    "diffusion": _build_diffusion,
    "custom": _build_custom,
}


def build_denoiser(options, *, sigma: float, device: torch.device) -> torch.nn.Module | None:
    """The denoiser named by ``options.name`` for noise std ``sigma`` (pixel units), on
    ``device`` in eval mode, or None for ``none``. Raises ValueError / FileNotFoundError /
    ImportError with the fix in the message (``gmcert-run`` prints them as one line)."""
    options = check_denoiser_options(options)
    sigma = check_sigma(sigma)
    return DENOISER_BUILDERS[options.name](options, sigma=sigma, device=torch.device(device))


def check_denoiser_present(options) -> None:
    """FileNotFoundError when the configured denoiser weights are not on this machine."""
    from pathlib import Path

    from gmcert.denoisers.weights import FOLDER_HINT

    options = check_denoiser_options(options)
    if options.name == "none":
        return
    if options.weights is not None and not Path(options.weights).expanduser().exists():
        raise FileNotFoundError(
            f"denoiser.weights={options.weights}: no such folder or file. {FOLDER_HINT}"
        )
    if options.name == "diffusion" and options.weights is None and options.builder is None:
        raise ValueError(f"denoiser=diffusion needs denoiser.weights=DIR. {FOLDER_HINT}")


def check_denoiser_options(options) -> SimpleNamespace:
    """The ``denoiser`` options as a plain namespace, after the checks a schema cannot express.

    Cheap (reads no file), so a run can call it before any work is done.
    """
    fields = _as_dict(options)
    name = fields.get("name", "none")
    if name not in DENOISER_BUILDERS:
        raise ValueError(
            f"unknown denoiser {name!r}; choose one of {sorted(DENOISER_BUILDERS)} "
            "(e.g. denoiser=diffusion denoiser.weights=/path/to/diffusers_folder)"
        )
    for key, readers in _READ_BY.items():
        if fields.get(key) is not None and name not in readers:
            log.warning("denoiser.%s is set but denoiser=%s does not read it", key, name)
    _check_optional_int(fields, "timestep", 0, "a diffusion timestep index")
    _check_optional_int(fields, "image_size", 1, "side in pixels the network runs at")
    _check_optional_int(fields, "num_train_timesteps", 1, "length of the diffusion schedule")
    _check_optional_int(fields, "max_batch", 1, "images per denoiser call")
    start, end = fields.get("beta_start"), fields.get("beta_end")
    for key, value in (("beta_start", start), ("beta_end", end)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1
        ):
            raise ValueError(
                f"denoiser.{key} must lie in (0, 1) (DDPM: 0.0001 / 0.02), got {value!r}"
            )
    if start is not None and end is not None and start > end:
        raise ValueError(f"denoiser.beta_start ({start}) must not exceed beta_end ({end})")
    for key, allowed in (("beta_schedule", BETA_SCHEDULES), ("prediction_type", PREDICTION_TYPES)):
        if fields.get(key) is not None and fields[key] not in allowed:
            raise ValueError(f"denoiser.{key} must be one of {list(allowed)}, got {fields[key]!r}")
    if not isinstance(fields.get("bf16", True), bool):
        raise ValueError(f"denoiser.bf16 must be true or false, got {fields['bf16']!r}")
    builder = fields.get("builder")
    if builder is not None and (not isinstance(builder, str) or builder.count(":") != 1):
        raise ValueError(f"denoiser.builder must read 'package.module:function', got {builder!r}")
    weights = fields.get("weights")
    if weights is not None and (not isinstance(weights, str) or not weights.strip()):
        raise ValueError(f"denoiser.weights must be a path, got {weights!r}")
    defaults = {key: None for key in (*_READ_BY, "max_batch")}
    return SimpleNamespace(**{**defaults, "bf16": True, **fields, "name": name})


def _as_dict(options) -> dict:
    if isinstance(options, Mapping):  # a dict, or the run's DictConfig node
        return dict(options)
    if dataclasses.is_dataclass(options):
        return dataclasses.asdict(options)
    return dict(vars(options))  # a SimpleNamespace or any plain object


def _check_optional_int(fields: dict, key: str, minimum: int, meaning: str) -> None:
    value = fields.get(key)
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum
    ):
        raise ValueError(
            f"denoiser.{key} must be an integer >= {minimum} ({meaning}), got {value!r}"
        )
