"""The typed options of each encoder (Hydra config group ``encoder``).

Every ``configs/encoder/<name>.yaml`` extends one of these (``schema_<schema name>``, registered
by :func:`gmcert.config.register_configs` from :data:`gmcert.encoders.specs.ENCODERS`), so a
misspelt key or a wrong type fails at once, naming the key. The pretrained encoders share
:class:`PretrainedConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class IdentityConfig:
    name: str = "identity"


@dataclass
class PCAConfig:
    name: str = "pca"
    n_components: int = 32
    whiten: bool = False


@dataclass
class LipschitzConfig:
    """A 1-Lipschitz (l2) network gmcert trains on the train split (encoders/lipschitz.py)."""

    name: str = "lipschitz"
    latent_dim: int = 10
    width: int = 256  # units per hidden layer, a multiple of group_size
    depth: int = 2  # orthogonal layer + GroupSort, this many times, then the projection
    group_size: int = 2  # GroupSort's group; 2 is MaxMin
    # Objective (gmcert/encoders/gm_objective.py): every class N(mu_k, target_std^2 I) ...
    target_std: float = 0.25
    margin: float = 1.0  # ... and each train point's certified radius (input l2) pushed to this
    fit_weight: float = 0.03
    margin_weight: float = 1.0
    likelihood_weight: float = 0.1
    centre_weight: float = 0.0  # pull to the class mean, without the fit term's log det
    margin_temperature: float = 0.0  # > 0: the hinge smoothed over every rival (keeps pushing)
    epochs: int = 150
    train_batch_size: int = 256  # not batch_size: that is the encode stage's extraction batch
    lr: float = 0.01
    # mlp, or conv: 1-Lipschitz convolution blocks (one per channels entry) before the dense
    # layers, for images
    architecture: str = "mlp"
    channels: list[int] = field(default_factory=lambda: [16, 32, 16])
    seed: int = 0  # configs/encoder/lipschitz.yaml sets it to the run's seed


@dataclass
class CNNConfig:
    """An ordinary CNN gmcert trains with cross-entropy, then freezes (encoders/cnn.py)."""

    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [32, 64])  # one conv block each
    latent_dim: int = 128
    epochs: int = 3
    train_batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0  # configs/encoder/cnn.yaml sets it to the run's seed


@dataclass
class PretrainedConfig:
    name: str = MISSING
    # "default": the library's weights from its local cache; a path; or "random" (tests only).
    weights: str = "default"
    # A declared l2 Lipschitz bound, "spectral" (computed where honest), or null (latent units).
    lipschitz: Any = None
    image_size: int | None = None
    # clip / dinov2 only: let open_clip / timm read their hub cache (they may download).
    allow_download: bool = False
    batch_size: int = 128
    num_workers: int = 2
    bf16: bool = True
    channels_last: bool = True
