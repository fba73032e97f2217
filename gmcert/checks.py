"""Argument checks shared by every layer: integers, the smoothing noise's sigma, sample
matrices and Gaussian parameters.

Each check raises ``ValueError`` naming the argument and the fix, and returns the value in the
type the caller computes with (float64 arrays for samples and Gaussians).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["as_matrix", "check_gaussian", "check_int", "check_sigma"]


def check_int(value, name: str, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} ({meaning}), got {value!r}")
    return int(value)


def check_sigma(sigma) -> float:
    """The noise std as a float: finite and > 0 (a bool is refused, not read as 1)."""
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, numbers.Real)
        or not math.isfinite(sigma)
        or sigma <= 0
    ):
        raise ValueError(
            f"sigma must be a finite number > 0 (noise std in [0, 1] pixel units, "
            f"e.g. 0.25), got {sigma!r}"
        )
    return float(sigma)


def as_matrix(a, name: str) -> np.ndarray:
    """float64 (n, d) copy-free view where possible; rejects NaN/inf and wrong ranks."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n, d), got shape {arr.shape}; "
            "reshape a single sample with x[None, :]"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); pass at least one sample")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; drop or impute those rows first")
    return arr


def check_gaussian(mean, cov, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), cov (d, d)) as float64, finite and symmetric (positive definiteness is left
    to the Cholesky factorisation that every caller does anyway)."""
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    cov = np.asarray(cov, dtype=np.float64)
    if mean.shape != (d,):
        raise ValueError(f"mean must have shape ({d},) to match the data, got {mean.shape}")
    if cov.shape != (d, d):
        raise ValueError(f"cov must have shape ({d}, {d}) to match the data, got {cov.shape}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise ValueError("mean and cov must be finite")
    if not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-12 * np.abs(cov).max()):
        raise ValueError("cov must be symmetric; pass (cov + cov.T) / 2 if it is round-off")
    return mean, cov
