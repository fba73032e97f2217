"""The typed options of each dataset (Hydra config group ``dataset``).

Every ``configs/dataset/<name>.yaml`` extends one of these (``schema_<name>``, registered by
:func:`gmcert.config.register_configs` from :data:`gmcert.data.specs.DATASETS`), so a misspelt
key or a wrong type fails at once, naming the key. Each dataset's spec names its schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class DigitsConfig:
    name: str = "digits"
    test_size: float = 0.2
    split_seed: int = 0


@dataclass
class _SampledMixtureConfig:
    """Options shared by the datasets drawn from a known mixture law."""

    num_classes: int = 2
    dim: int = 2
    # Distance between class means, in units of the class noise's standard deviation.
    separation: float = 3.0
    n_train: int = 2000
    n_test: int = 1000
    seed: int = 0  # draws the means, the covariances and both splits


@dataclass
class SyntheticConfig(_SampledMixtureConfig):
    """An exact Gaussian mixture."""

    name: str = "synthetic"
    covariance: str = "isotropic"


@dataclass
class DistortedConfig(_SampledMixtureConfig):
    """Student-t mixture: a known, controlled departure from Gaussianity (eps_controlled)."""

    name: str = "distorted"
    nu: float = 5.0  # its other defaults are in configs/dataset/distorted.yaml


@dataclass
class _ImageDatasetConfig:
    """Options shared by the image datasets: where they live and which test images to use."""

    root: str = MISSING
    skip: int = 1  # every skip-th test image (the literature's protocol: 20 or 100)
    max: int | None = None


@dataclass
class Cifar10Config(_ImageDatasetConfig):
    name: str = "cifar10"
    download: bool = False
    train_max: int | None = None
    # true: check the official MD5s; false: your own data; null: check whenever the files
    # are official-sized (smaller ones are read with a warning). Always unpickled safely.
    verify_checksums: Any = None


@dataclass
class ImageNetConfig(_ImageDatasetConfig):
    name: str = "imagenet"
    train_per_class: int | None = None


@dataclass
class _IDXConfig(_ImageDatasetConfig):
    """MNIST-format IDX files (gmcert/data/idx.py), 1x28x28 pixels in [0, 1]."""

    fallback_roots: list[str] = field(default_factory=list)  # tried after root, in order
    train_max: int | None = None


@dataclass
class FashionMNISTConfig(_IDXConfig):
    name: str = "fashion_mnist"


@dataclass
class MNISTConfig(_IDXConfig):
    name: str = "mnist"


@dataclass
class FolderConfig(_ImageDatasetConfig):
    """root/train/<class>/*, root/test/<class>/* (gmcert/data/folder.py), held in memory."""

    name: str = "folder"
    image_size: Any = MISSING  # a side or [height, width], pixels
    channels: int = 3  # 1: grey, 3: RGB
    resize: bool = False  # resize other sizes on load instead of refusing them
    train_max: int | None = None


@dataclass
class ArraysConfig:
    """One .npz with x_train, y_train, x_test, y_test (gmcert/data/arrays.py)."""

    name: str = "arrays"
    path: str = MISSING
    num_classes: int | None = None  # null: 1 + the largest label
    skip: int = 1
    max: int | None = None
    train_max: int | None = None
