"""Linear encoders: the identity (flattened pixels) and PCA fitted on the train split.

Both state their map exactly (:class:`LinearMap`), so a linear head can be folded into them and
certified in input space directly, exactly and in every norm, from the inputs in float64
(the stored latents are float32, like every encoder's; the folded certificate never reads
them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class LinearMap:
    """z = weight @ (x - offset) for flattened inputs x; ``weight`` None is the identity."""

    weight: np.ndarray | None
    offset: np.ndarray | None

    def fold(self, M: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) with A x + b = M z + c for z = this map of x, in float64."""
        M, c = np.asarray(M, np.float64), np.asarray(c, np.float64)
        if self.weight is None:
            return M, c
        A = M @ self.weight
        return A, c - A @ self.offset

    def preimage(self, Z: np.ndarray) -> np.ndarray:
        """Inputs x with this map of x equal to Z (the least-norm ones; PCA's rows have full
        rank, so every latent has one)."""
        if self.weight is None:
            return np.asarray(Z, np.float64)
        return np.asarray(Z, np.float64) @ np.linalg.pinv(self.weight).T + self.offset

    def smallest_gain(self) -> float:
        """min ||W d||_2 / ||d||_2 over d in the row space: every latent l2 ball of radius
        g * r is the image of inputs within r."""
        if self.weight is None:
            return 1.0
        return float(np.linalg.svd(self.weight, compute_uv=False).min())


class IdentityEncoder(nn.Module):
    """Flattens the input: Lipschitz 1, so latent radii are input radii."""

    lipschitz = 1.0
    name = "identity"

    def fit(self, train_inputs: np.ndarray, train_labels=None) -> IdentityEncoder:
        return self

    def linear_map(self) -> LinearMap:
        return LinearMap(None, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class PCAEncoder(nn.Module):
    """scikit-learn PCA fitted on the train split only, applied as one affine map in torch.

    Orthonormal components are a contraction, so the Lipschitz bound is 1; whitening divides
    by sqrt(explained variance), so the bound becomes 1 / sqrt(smallest kept variance).
    """

    name = "pca"

    def __init__(self, *, n_components: int, whiten: bool = False):
        super().__init__()
        self.n_components, self.whiten = n_components, whiten
        self.lipschitz: float | None = None

    def fit(self, train_inputs: np.ndarray, train_labels=None) -> PCAEncoder:
        from sklearn.decomposition import PCA

        if not isinstance(train_inputs, np.ndarray):
            raise ValueError(
                "encoder=pca fits on in-memory arrays (digits, synthetic); for image folders "
                "use a pretrained encoder"
            )
        x = train_inputs.reshape(len(train_inputs), -1).astype(np.float64)
        if not 1 <= self.n_components <= min(x.shape):
            raise ValueError(
                f"encoder.n_components must be in 1..{min(x.shape)} for inputs of shape "
                f"{x.shape}, got {self.n_components}"
            )
        pca = PCA(n_components=self.n_components, whiten=self.whiten, svd_solver="full").fit(x)
        weight = pca.components_
        if self.whiten:
            weight = weight / np.sqrt(pca.explained_variance_)[:, None]
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float64))
        self.register_buffer("mean", torch.as_tensor(pca.mean_, dtype=torch.float64))
        self.lipschitz = float(np.linalg.norm(weight, ord=2))
        return self

    def linear_map(self) -> LinearMap:
        return LinearMap(self.weight.cpu().numpy(), self.mean.cpu().numpy())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).double() - self.mean) @ self.weight.T
