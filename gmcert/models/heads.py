"""Classification heads as torch modules over latents, so that ``encoder -> head`` is one base
classifier for randomized smoothing: the fitted mixture's Bayes rule, and a linear probe."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import nn


def _check_dtype(dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"dtype must be torch.float32 (the default) or torch.float64, got {dtype!r}"
        )
    return dtype


class MixtureHead(nn.Module):
    """Scores s_k(z) = log pi_k + log N(z; mu_k, Sigma_k), up to a term common to all classes:
    the mixture's ``class_scores``, whose argmax is its ``predict``.

    Linear families are one affine layer (M z + c); per-class covariances evaluate each
    class's quadratic form through its Cholesky factor of the precision. ``dtype`` is the
    precision of the buffers and of the computation (inputs are cast to it): float32 by default,
    float64 for a deterministic model that follows the float64 estimator (e.g. for attacks).
    """

    def __init__(self, mixture, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        _check_dtype(dtype)
        self.linear = mixture.is_linear_
        if self.linear:
            M, c = mixture.linear_head()
            self.register_buffer("weight", torch.as_tensor(M, dtype=dtype))
            self.register_buffer("bias", torch.as_tensor(c, dtype=dtype))
        else:
            # ||L_k^T (z - mu_k)||^2 = (z - mu_k)^T P_k (z - mu_k) with P_k = L_k L_k^T.
            chol = np.linalg.cholesky(mixture.class_precisions())
            self.register_buffer("chol", torch.as_tensor(chol, dtype=dtype))
            self.register_buffer("means", torch.as_tensor(mixture.means_, dtype=dtype))
            self.register_buffer("log_weights", torch.as_tensor(mixture.log_weights_, dtype=dtype))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the scores are computed in (follows ``.double()`` / ``.float()``)."""
        return (self.weight if self.linear else self.chol).dtype

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.dtype)
        if self.linear:
            return torch.addmm(self.bias, z, self.weight.T)
        centred = z[:, None, :] - self.means[None]  # (B, K, d)
        quad = torch.einsum("bkd,kde->bke", centred, self.chol).square().sum(-1)
        return self.log_weights - 0.5 * quad


@dataclass
class LinearProbe:
    """Logistic regression on (z - mean) / scale, with one global scale: unlike per-feature
    standardisation, this keeps the L2 penalty's geometry on the raw latents (it only rescales
    C), so near-constant features do not get large weights; it just conditions the solver."""

    logistic: LogisticRegression
    mean: np.ndarray
    scale: float


class LinearProbeHead(nn.Module):
    """The linear-probe baseline as one affine map of the raw latents."""

    def __init__(self, probe: LinearProbe):
        super().__init__()
        weight = probe.logistic.coef_ / probe.scale
        bias = probe.logistic.intercept_ - weight @ probe.mean
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))
        self.classes = probe.logistic.classes_

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scores = torch.addmm(self.bias, z.float(), self.weight.T)
        if scores.shape[1] == 1:  # binary: scikit-learn keeps one logit for classes_[1]
            scores = torch.cat([torch.zeros_like(scores), scores], dim=1)
        return scores


def fit_linear_probe(
    Z_train,
    y_train,
    *,
    seed: int,
    C_grid=(0.01, 0.1, 1.0, 10.0),
    holdout_fraction: float = 0.2,
    selection_rows: int = 20_000,
) -> LinearProbe:
    """Logistic regression with C chosen on a held-out split of train (never on test), then
    refitted on all of train.

    C is chosen on a stratified subsample of at most ``selection_rows`` rows: the choice
    between values a decade apart is clear on that many points, and fitting every C on the
    whole of a noise-augmented train split (240,000 x 784 for Fashion-MNIST pixels) took
    minutes where the one final fit takes half a minute.
    """
    Z = np.asarray(Z_train, np.float64)
    mean = Z.mean(axis=0)
    scale = float(np.sqrt(((Z - mean) ** 2).sum(axis=1).mean())) or 1.0
    X = (Z - mean) / scale

    def probe(C):
        return LogisticRegression(C=C, max_iter=1000, random_state=seed)

    try:
        rows = np.arange(len(y_train))
        if len(rows) > selection_rows:
            rows, _ = train_test_split(
                rows, train_size=selection_rows, stratify=y_train, random_state=seed
            )
        fit_idx, val_idx = train_test_split(
            rows,
            test_size=holdout_fraction,
            stratify=y_train[rows],
            random_state=seed,
        )
        scores = [
            probe(C).fit(X[fit_idx], y_train[fit_idx]).score(X[val_idx], y_train[val_idx])
            for C in C_grid
        ]
        best = C_grid[int(np.argmax(scores))]
    except ValueError:  # too few samples per class to hold any out: keep the default C = 1
        best = 1.0
    return LinearProbe(probe(best).fit(X, y_train), mean, scale)
