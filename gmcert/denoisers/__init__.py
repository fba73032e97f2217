"""Denoisers for denoised smoothing (Salman et al. 2020; Carlini et al. 2023): a module put
in front of the encoder, so that smoothing's base classifier is head(encoder(denoise(x + e))).

``build_denoiser(options, sigma, device)`` returns the module, or None for ``denoiser=none``.
"""

from __future__ import annotations

import torch


def build_denoiser(options, *, sigma: float, device: torch.device) -> torch.nn.Module | None:
    """The denoiser named by ``options.name`` for noise std ``sigma`` (pixel units), or None."""
    if options.name == "none":
        return None
    raise ValueError(f"unknown denoiser {options.name!r}; choose one of ['none']")
