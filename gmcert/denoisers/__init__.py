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
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from gmcert.checks import check_sigma

log = logging.getLogger(__name__)

__all__ = [
    "DENOISERS",
    "DenoiserSpec",
    "build_denoiser",
    "check_denoiser_options",
    "check_denoiser_present",
]

# Options that only some denoisers read (each spec lists its own); set for another one they
# are ignored, with a warning.
_SELECTIVE_OPTIONS = (
    "weights",
    "builder",
    "timestep",
    "image_size",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "num_train_timesteps",
    "prediction_type",
)
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


def _nothing_to_check(options) -> None:
    """``denoiser=none``: no file to look for."""


def _weights_present(options) -> None:
    """FileNotFoundError when ``denoiser.weights`` names a file or folder that is not there."""
    from gmcert.denoisers.weights import FOLDER_HINT

    if options.weights is not None and not Path(options.weights).expanduser().exists():
        raise FileNotFoundError(
            f"denoiser.weights={options.weights}: no such folder or file. {FOLDER_HINT}"
        )


def _diffusion_present(options) -> None:
    """The weights are there, and a diffusion denoiser has weights or a builder to load."""
    from gmcert.denoisers.weights import FOLDER_HINT

    _weights_present(options)
    if options.weights is None and options.builder is None:
        raise ValueError(f"denoiser=diffusion needs denoiser.weights=DIR. {FOLDER_HINT}")


@dataclass(frozen=True)
class DenoiserSpec:
    """A denoiser as the rest of gmcert sees it (all share the ``denoiser`` schema,
    :class:`gmcert.config.DenoiserConfig`).

    ``build(options, *, sigma, device)`` returns the module (None for ``none``); ``reads`` are
    the selective options it uses (others set for it draw a warning); ``preflight(options)``
    raises when an input it needs is not on this machine, reading only the file system.
    """

    name: str
    build: Callable[..., torch.nn.Module | None]
    reads: frozenset[str] = frozenset()
    preflight: Callable[[SimpleNamespace], None] = _nothing_to_check


DENOISERS: dict[str, DenoiserSpec] = {
    spec.name: spec
    for spec in (
        DenoiserSpec("none", _build_none),
        DenoiserSpec(
            "diffusion",
            _build_diffusion,
            reads=frozenset(_SELECTIVE_OPTIONS),
            preflight=_diffusion_present,
        ),
        DenoiserSpec(
            "custom",
            _build_custom,
            reads=frozenset({"weights", "builder"}),
            preflight=_weights_present,
        ),
    )
}


def build_denoiser(options, *, sigma: float, device: torch.device) -> torch.nn.Module | None:
    """The denoiser named by ``options.name`` for noise std ``sigma`` (pixel units), on
    ``device`` in eval mode, or None for ``none``. Raises ValueError / FileNotFoundError /
    ImportError with the fix in the message (``gmcert-run`` prints them as one line)."""
    options = check_denoiser_options(options)
    sigma = check_sigma(sigma)
    build = DENOISERS[options.name].build
    return build(options, sigma=sigma, device=torch.device(device))


def check_denoiser_present(options) -> None:
    """FileNotFoundError when the configured denoiser weights are not on this machine."""
    options = check_denoiser_options(options)
    DENOISERS[options.name].preflight(options)


def check_denoiser_options(options) -> SimpleNamespace:
    """The ``denoiser`` options as a plain namespace, after the checks a schema cannot express.

    Cheap (reads no file), so a run can call it before any work is done.
    """
    fields = _as_dict(options)
    name = fields.get("name", "none")
    if name not in DENOISERS:
        raise ValueError(
            f"unknown denoiser {name!r}; choose one of {sorted(DENOISERS)} "
            "(e.g. denoiser=diffusion denoiser.weights=/path/to/diffusers_folder)"
        )
    for key in _SELECTIVE_OPTIONS:
        if fields.get(key) is not None and key not in DENOISERS[name].reads:
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
    defaults = {key: None for key in (*_SELECTIVE_OPTIONS, "max_batch")}
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
