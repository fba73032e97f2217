"""How a denoiser runs inside smoothing's base classifier, whatever it is.

Smoothing calls its base on one block of ``certify.noise_batch`` noisy copies at a time; the
denoiser at the front of that base sees the same block. :class:`BatchedDenoiser` wraps the
network that does the denoising with what every denoiser needs there: micro-batches when one
block does not fit in memory, bf16 autocast on CUDA, inference mode, and a shape check.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["BatchedDenoiser"]


class BatchedDenoiser(nn.Module):
    """``inner``: noisy inputs (B, *input_shape), images (B, C, H, W) for image data, in [0, 1]
    pixel units -> denoised inputs of the same shape.

    ``max_batch``: at most this many images per call of ``inner`` (None: the whole block).
    ``bf16``: run ``inner`` under bf16 autocast when the input lives on CUDA; on CPU it runs in
    the input's dtype, so a CPU run is exact and reproducible. The output is returned in the
    input's dtype. Runs in inference mode: smoothing never differentiates through its base.
    """

    def __init__(self, inner: nn.Module, *, name: str, bf16: bool = True, max_batch=None):
        super().__init__()
        self.inner = inner
        self.name = name
        self.bf16 = bool(bf16)
        self.max_batch = max_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(
                f"denoiser {self.name!r} takes a batch of inputs (B, *input_shape), got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        with torch.inference_mode():
            if self.max_batch is None or len(x) <= self.max_batch:
                return self._denoise(x)
            return torch.cat([self._denoise(part) for part in x.split(self.max_batch)])

    def _denoise(self, x: torch.Tensor) -> torch.Tensor:
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.bf16 and x.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.inner(x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"denoiser {self.name!r} returned {got} for images of shape {tuple(x.shape)}: "
                "a denoiser must return denoised images of the same shape as its input"
            )
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, bf16={self.bf16}, max_batch={self.max_batch}"
