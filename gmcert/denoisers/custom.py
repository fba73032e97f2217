"""``denoiser=custom``: any denoiser the user builds (``denoiser.builder=package.module:function``).

The contract, which :class:`gmcert.denoisers.batched.BatchedDenoiser` checks on every call:

- the builder is called as ``function(sigma=sigma)`` when it declares a ``sigma`` parameter (the
  smoothing noise std in [0, 1] pixel units), else as ``function()``, and returns a
  ``torch.nn.Module``;
- the module maps a batch of noisy inputs ``(B, *input_shape)`` (images ``(B, C, H, W)`` for
  image data), pixels in [0, 1] plus noise of std ``sigma`` (not clipped), to denoised inputs
  of the same shape in [0, 1] pixel units;
- ``denoiser.weights=/path`` (optional): a state dict loaded into the module strictly, from a
  ``.safetensors`` file or with ``torch.load(weights_only=True)`` (no pickled code).

A module object cannot come from a weight file alone: unpickling a module runs code, which
gmcert refuses; the builder is the code, named explicitly.
"""

from __future__ import annotations

import torch

from gmcert.denoisers.batched import BatchedDenoiser
from gmcert.denoisers.builders import build_module

__all__ = ["build_custom_denoiser"]


def build_custom_denoiser(options, *, sigma: float, device: torch.device) -> BatchedDenoiser:
    """The user's denoiser for noise std ``sigma``, on ``device``, in eval mode."""
    if options.builder is None:
        raise ValueError(
            "denoiser=custom needs denoiser.builder=package.module:function, a function "
            "returning the denoiser module (noisy images in [0, 1] -> denoised, same shape); "
            "denoiser.weights=/path/to/state_dict optionally loads its weights"
        )
    module = build_module(options, sigma=sigma, returns="the denoiser")
    module.eval().requires_grad_(False)
    denoiser = BatchedDenoiser(
        module, name="custom", bf16=options.bf16, max_batch=options.max_batch
    )
    return denoiser.to(device).eval()
