"""Lipschitz bounds of the linear encoders: PCA (plain and whitened) against the map itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from gmcert.encoders import build_encoder
from gmcert.encoders.linear import PCAEncoder


def _anisotropic_data(n: int = 300, dim: int = 20, seed: int = 0) -> np.ndarray:
    """Gaussian inputs whose variances span two decades, so whitening stretches some axes."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(0, -2, dim)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (rng.standard_normal((n, dim)) * scales) @ rotation.T + 0.5


def _ratios(encoder: PCAEncoder, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """||f(x) - f(x2)|| / ||x - x2|| for each row."""
    with torch.no_grad():
        return (encoder(x) - encoder(x2)).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)


def test_whitened_pca_lipschitz_is_the_largest_singular_value():
    train = _anisotropic_data()
    encoder = build_encoder("pca", n_components=6, whiten=True).fit(train)
    assert isinstance(encoder, PCAEncoder)
    # The map is x -> (x - mean) @ W.T: its Lipschitz constant is sigma_max(W).
    weight = encoder.weight.double()
    sigma = torch.linalg.svdvals(weight)
    assert encoder.lipschitz == pytest.approx(float(sigma[0]), rel=1e-6)
    # Whitening scales component i by 1 / sqrt(variance_i): sigma_max = 1 / sqrt(min variance),
    # well above 1 on this data.
    variances = PCA(n_components=6, svd_solver="full").fit(train).explained_variance_
    assert encoder.lipschitz == pytest.approx(1 / np.sqrt(variances.min()), rel=1e-6)
    assert encoder.lipschitz > 3
    encoder.double()

    # No pair of inputs is stretched beyond the bound: random pairs, near and far ...
    lip = encoder.lipschitz * (1 + 1e-6)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(500, train.shape[1], generator=gen, dtype=torch.float64)
    near = x + 1e-3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    far = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    for other in (near, far):
        assert float(_ratios(encoder, x, other).max()) <= lip
    # ... and along the top right-singular direction the bound is attained.
    top = torch.linalg.svd(weight).Vh[0]
    for step in (1e-3, 1.0):
        ratio = _ratios(encoder, x[:5], x[:5] + step * top)
        assert torch.all(ratio <= lip) and torch.all(ratio >= encoder.lipschitz * (1 - 1e-6))


def test_plain_pca_is_a_contraction():
    train = _anisotropic_data(seed=2)
    encoder = PCAEncoder(n_components=6).fit(train).double()
    # Orthonormal rows: every singular value is 1.
    torch.testing.assert_close(
        torch.linalg.svdvals(encoder.weight), torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert encoder.lipschitz == pytest.approx(1.0, rel=1e-6)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(200, train.shape[1], generator=gen, dtype=torch.float64)
    x2 = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    assert float(_ratios(encoder, x, x2).max()) <= 1 + 1e-6


def test_pca_rejects_too_many_components():
    with pytest.raises(ValueError, match=r"encoder.n_components must be in 1\.\.20"):
        PCAEncoder(n_components=21).fit(_anisotropic_data())
