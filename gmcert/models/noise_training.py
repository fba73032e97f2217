"""Heads trained under the noise they are smoothed with, as randomized smoothing is run in the
literature (Cohen et al. 2019 train the base classifier on x + e, e ~ N(0, sigma^2 I)).

Two routes:

- :func:`noisy_mixture`, exact, for an encoder linear in its input, ``z = W (x - m)``: the
  latent of ``x + e`` is ``z + W e``, so class k's latent law under noise is
  ``N(mu_k, Sigma_k + sigma^2 W W^T)``. The mixture fitted on clean latents gets that covariance
  added in closed form, with no sampling.
- :func:`noisy_latents`, for any encoder (and for the linear probe): encodings of seeded noisy
  copies of the train inputs, with their labels repeated, to fit a head on.

Units: inputs are pixels in [0, 1] and ``sigma`` is the noise std in those units, as in
:mod:`gmcert.certify.smoothing`; noisy inputs are not clipped, as in the smoothing theorem.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch.utils.data import Dataset

from gmcert.checks import check_int, check_sigma
from gmcert.device import resolve_device
from gmcert.models.mixture import GaussianMixtureClassifier

__all__ = ["noise_covariance", "noisy_latents", "noisy_mixture"]


def _weight(linear_map) -> np.ndarray | None:
    """The matrix W of ``z = W (x - m)`` (float64), or None for the identity.

    Accepts ``"identity"``; a (d, D) array or tensor; an object with a ``weight`` attribute
    (such as :class:`gmcert.encoders.linear.LinearMap`, whose weight None is the identity); or
    an encoder with a ``linear_map()`` method (its map is used; None there means the encoder is
    not linear in its input, which is refused).
    """
    if isinstance(linear_map, str):
        if linear_map == "identity":
            return None
        raise ValueError(f"linear_map must be 'identity' or a matrix W, got {linear_map!r}")
    if callable(getattr(linear_map, "linear_map", None)):
        linear_map = linear_map.linear_map()
    if linear_map is None:
        raise ValueError(
            "linear_map is None: the encoder is not linear in its input, so the latent noise "
            "is not Gaussian; fit the head on noisy_latents(...) instead"
        )
    if not isinstance(linear_map, np.ndarray | torch.Tensor) and hasattr(linear_map, "weight"):
        linear_map = linear_map.weight
        if linear_map is None:
            return None
    if isinstance(linear_map, torch.Tensor):
        linear_map = linear_map.detach().cpu().double().numpy()
    weight = np.asarray(linear_map, dtype=np.float64)
    if weight.ndim != 2 or not np.all(np.isfinite(weight)):
        raise ValueError(
            f"linear_map must be a finite (d, D) matrix W of z = W (x - m), got shape "
            f"{weight.shape}"
        )
    return weight


def noise_covariance(*, sigma: float, linear_map, dim: int) -> np.ndarray:
    """(d, d) covariance ``sigma^2 W W^T`` of the latent noise ``W e``, e ~ N(0, sigma^2 I);
    ``sigma^2 I`` (exactly) for the identity; ``dim`` is the latent dimension d."""
    sigma = check_sigma(sigma)
    weight = _weight(linear_map)
    if weight is None:
        return sigma**2 * np.eye(dim)
    if weight.shape[0] != dim:
        raise ValueError(
            f"linear_map maps to {weight.shape[0]} latent dimensions but the mixture has {dim}"
        )
    gram = weight @ weight.T
    return sigma**2 * 0.5 * (gram + gram.T)


def noisy_mixture(
    mixture: GaussianMixtureClassifier, *, sigma: float, linear_map
) -> GaussianMixtureClassifier:
    """The mixture of the latents of noisy inputs ``x + e``, e ~ N(0, sigma^2 I), exactly.

    ``mixture`` is fitted on clean latents ``z = W (x - m)`` of an encoder linear in its input;
    ``linear_map`` gives W (see :func:`noise_covariance`: ``"identity"``, a matrix, a
    ``LinearMap`` or the encoder itself). Returns a fitted copy (``mixture`` is unchanged) with
    class covariances ``Sigma_k + sigma^2 W W^T`` and its decision rule (``precisions_``,
    ``log_weights_``, with ``tau``) recomputed: the Bayes rule for noisy inputs, the base
    classifier that smoothing with ``sigma`` should use.

    Families (:meth:`GaussianMixtureClassifier.with_added_covariance`): ``shared`` and ``full``
    stay; ``isotropic`` stays when W W^T is exactly c I (the identity) and becomes ``shared``
    otherwise; ``diag`` stays when W W^T is exactly diagonal (the identity) and becomes ``full``
    otherwise (the noisy law is then not diagonal: the copy is exact, not a diagonal
    approximation); ``lowrank`` becomes ``full`` unless W W^T is exactly c I.
    """
    if not isinstance(mixture, GaussianMixtureClassifier):
        raise ValueError(
            f"mixture must be a fitted GaussianMixtureClassifier, got {type(mixture).__name__}"
        )
    check_is_fitted(mixture)
    extra = noise_covariance(sigma=sigma, linear_map=linear_map, dim=mixture.n_features_in_)
    return mixture.with_added_covariance(extra)


@torch.inference_mode()
def noisy_latents(
    encoder: torch.nn.Module,
    inputs,
    labels,
    *,
    sigma: float,
    copies: int,
    seed: int,
    device="cpu",
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Encodings of ``copies`` noisy copies ``x + e`` of each input, with their labels.

    ``inputs`` (n, *input_shape) array or tensor, or a Dataset of (image, label) read one batch
    at a time (an image folder is never held whole), pixels in [0, 1]; ``labels`` (n,). Noise
    e ~ N(0, sigma^2 I) is drawn on the CPU by a torch generator seeded with ``seed``, so the
    result is deterministic for given (``seed``, ``batch_size``) on any ``device``; noisy
    inputs are not clipped. The encoder is put in eval mode and moved to ``device`` (as
    :func:`gmcert.features.extract_features` does) and runs in the dtype of its parameters or
    buffers (float32 if it has none).

    Returns ``(Z, y)``: Z (copies * n, d) numpy in the encoder's output dtype, copy-major
    (row ``c * n + i`` is copy c of input i), and y = ``labels`` tiled ``copies`` times.
    """
    sigma = check_sigma(sigma)
    copies = check_int(copies, "copies", 1, "noisy copies per input")
    batch_size = check_int(batch_size, "batch_size", 1, "inputs per forward pass")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    device = resolve_device(device)
    tensors = [*encoder.parameters(), *encoder.buffers()]
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    if isinstance(inputs, Dataset):
        n = len(inputs)

        def rows(start, stop):
            return torch.stack([inputs[i][0] for i in range(start, stop)]).to(dtype=dtype)
    else:
        x = torch.as_tensor(inputs if isinstance(inputs, torch.Tensor) else np.asarray(inputs))
        x, n = x.to(dtype=dtype), len(x)
        if x.ndim < 2 or n == 0:
            raise ValueError(f"inputs must be a non-empty batch (n, *input_shape), got {x.shape}")

        def rows(start, stop):
            return x[start:stop]

    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) like inputs, got {labels.shape}")
    encoder = encoder.eval().to(device)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    chunks = []
    for _ in range(copies):
        for start in range(0, n, batch_size):
            batch = rows(start, min(start + batch_size, n))
            noise = torch.randn(batch.shape, generator=generator, dtype=dtype).mul_(sigma)
            chunks.append(encoder((batch + noise).to(device)).cpu())
    return torch.cat(chunks).numpy(), np.tile(labels, copies)
