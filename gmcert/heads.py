"""Classification heads as torch modules over latents, so that ``encoder -> head`` is one base
classifier for randomized smoothing: the fitted mixture's Bayes rule, and a linear probe."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn


class MixtureHead(nn.Module):
    """Scores s_k(z) = log pi_k + log N(z; mu_k, Sigma_k), up to a term common to all classes.

    Linear families are one affine layer (M z + c); per-class covariances evaluate each
    class's quadratic form through its Cholesky factor of the precision.
    """

    def __init__(self, mixture):
        super().__init__()
        self.linear = mixture.is_linear_
        if self.linear:
            M, c = mixture.linear_head()
            self.register_buffer("weight", torch.as_tensor(M, dtype=torch.float32))
            self.register_buffer("bias", torch.as_tensor(c, dtype=torch.float32))
        else:
            # ||L_k^T (z - mu_k)||^2 = (z - mu_k)^T P_k (z - mu_k) with P_k = L_k L_k^T.
            chol = np.linalg.cholesky(mixture.class_precisions())
            self.register_buffer("chol", torch.as_tensor(chol, dtype=torch.float32))
            self.register_buffer("means", torch.as_tensor(mixture.means_, dtype=torch.float32))
            self.register_buffer(
                "log_weights", torch.as_tensor(mixture.log_weights_, dtype=torch.float32)
            )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        if self.linear:
            return torch.addmm(self.bias, z, self.weight.T)
        centred = z[:, None, :] - self.means[None]  # (B, K, d)
        quad = torch.einsum("bkd,kde->bke", centred, self.chol).square().sum(-1)
        return self.log_weights - 0.5 * quad


class LinearProbeHead(nn.Module):
    """Multinomial logistic regression on the latents: the standard linear-probe baseline.

    The probe is fitted on standardised latents (for the solver's conditioning); the scaler is
    folded into the weights, so the head is one affine map of the raw latents.
    """

    def __init__(self, probe: Pipeline):
        super().__init__()
        scaler, logistic = probe.named_steps["scale"], probe.named_steps["logistic"]
        weight = logistic.coef_ / scaler.scale_
        bias = logistic.intercept_ - weight @ scaler.mean_
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))
        self.classes = logistic.classes_

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scores = torch.addmm(self.bias, z.float(), self.weight.T)
        if scores.shape[1] == 1:  # binary: scikit-learn keeps one logit for classes_[1]
            scores = torch.cat([torch.zeros_like(scores), scores], dim=1)
        return scores


def fit_linear_probe(
    Z_train, y_train, *, seed: int, C_grid=(0.01, 0.1, 1.0, 10.0), holdout_fraction: float = 0.2
) -> Pipeline:
    """Standardise + logistic regression, with C chosen on a held-out split of train (never on
    test), then refitted on all of train."""
    Z = np.asarray(Z_train, np.float64)

    def probe(C):
        return Pipeline(
            [
                ("scale", StandardScaler()),
                ("logistic", LogisticRegression(C=C, max_iter=1000, random_state=seed)),
            ]
        )

    try:
        fit_idx, val_idx = train_test_split(
            np.arange(len(y_train)), test_size=holdout_fraction, stratify=y_train, random_state=seed
        )
    except ValueError:  # too few samples per class to hold any out: keep the default C = 1
        return probe(1.0).fit(Z, y_train)
    scores = [
        probe(C).fit(Z[fit_idx], y_train[fit_idx]).score(Z[val_idx], y_train[val_idx])
        for C in C_grid
    ]
    return probe(C_grid[int(np.argmax(scores))]).fit(Z, y_train)
