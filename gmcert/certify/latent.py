"""The closed-form certifiers of a fitted mixture (in latent space, and folded into a linear
encoder in input space), and batched certification."""

from __future__ import annotations

import numpy as np
import torch

from gmcert.certify.linear import LinearCertifier

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"certify.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def latent_certifier(mixture, *, norm: str, device, dtype: torch.dtype):
    """The exact closed-form certifier for a fitted mixture: linear or quadratic boundaries."""
    if mixture.is_linear_:
        M, c = mixture.linear_head()
        return LinearCertifier(M, c, norm=norm, device=device, dtype=dtype)
    from gmcert.certify.quadratic import QuadraticCertifier

    return QuadraticCertifier(
        mixture.means_,
        mixture.class_precisions(),
        mixture.log_weights_,
        norm=norm,
        device=device,
        dtype=dtype,
    )


def folded_certifier(mixture, linear_map, *, norm: str, device, dtype: torch.dtype):
    """The exact input-space certifier of ``mixture``'s linear rule composed with an encoder
    linear in its input (``linear_map``), or None where either is not linear."""
    if linear_map is None or not mixture.is_linear_:
        return None
    A, b = linear_map.fold(*mixture.linear_head())
    return LinearCertifier(A, b, norm=norm, device=device, dtype=dtype)


def certify_latents(certifier, Z: np.ndarray, *, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Class codes and latent radii for Z (n, d), one device batch at a time."""
    preds, radii = [], []
    for start in range(0, len(Z), batch_size):
        pred, radius = certifier.certify(
            torch.from_numpy(np.asarray(Z[start : start + batch_size]))
        )
        preds.append(pred.cpu().numpy())
        radii.append(radius.double().cpu().numpy())
    return np.concatenate(preds), np.concatenate(radii)
