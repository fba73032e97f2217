"""Image datasets shared by the vision builders, and the literature's test-subset protocol.

Items are ``(image (C, H, W) float32 in [0, 1], int label)``: in-memory uint8 arrays
(:class:`ArrayImageDataset`, CIFAR-10) or image files decoded on access
(:class:`ImageFileDataset`, ImageNet).

Test-point subsets follow Cohen et al. (2019): ``indices = range(0, N, skip)[:max]`` over the
test split in its canonical order (every 20th CIFAR-10 test image, every 100th ImageNet
validation image), recorded in ``Split.indices`` so tables can be compared point by point.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


class ArrayImageDataset(Dataset):
    """uint8 images held in memory, served as ToTensor would: (C, H, W) float32 in [0, 1].

    Args:
        images: uint8 array (n, C, H, W).
        labels: int64 array (n,).
    Items: (image tensor (C, H, W) float32 in [0, 1], int label).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(
                f"expected uint8 images (n, C, H, W) and n labels, got {images.dtype} "
                f"{images.shape} and {len(labels)} labels"
            )
        # uint8 keeps the 50k CIFAR-10 training images at 150 MB instead of 600 MB as float32.
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        # Same arithmetic as torchvision's ToTensor: float conversion, then division by 255.
        image = torch.from_numpy(self.images[i]).to(torch.float32).div_(255)
        return image, int(self.labels[i])

    def as_array(self) -> np.ndarray:
        """All images as one float32 array (n, C, H, W) in [0, 1] (n * C * H * W * 4 bytes)."""
        return self.images.astype(np.float32) / np.float32(255)


class ImageFileDataset(Dataset):
    """Image files decoded on access with PIL and turned into tensors by ``transform``.

    Paths are kept as one fixed-width byte array (relative to ``root``) rather than a list of
    Python strings: 1.28M ImageNet paths then take ~40 MB, and DataLoader workers do not copy
    them page by page through reference-count writes.

    Args:
        root: folder the relative paths start from.
        relpaths: relative paths, bytes array (n,) (UTF-8).
        labels: int64 array (n,).
        transform: PIL RGB image -> (3, H, W) float tensor in [0, 1].
    Items: (image tensor, int label).
    """

    def __init__(self, root: Path, relpaths: np.ndarray, labels: np.ndarray, transform: Any):
        if len(relpaths) != len(labels):
            raise ValueError(f"{len(relpaths)} paths but {len(labels)} labels")
        self.root = Path(root)
        self.relpaths = relpaths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.relpaths)

    def path(self, i: int) -> Path:
        """Absolute path of item ``i``."""
        return self.root / self.relpaths[i].decode("utf-8")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.path(i)
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")  # greyscale and CMYK JPEGs exist in ImageNet
        except OSError as err:
            raise ValueError(
                f"cannot decode image {path}: {err}; replace or delete the file (and rebuild "
                "the dataset so the index stays consistent)"
            ) from None
        return self.transform(image), int(self.labels[i])


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def image_names(folder: Path) -> list[str]:
    """Sorted image file names in one class folder (hidden files and other types skipped)."""
    with os.scandir(folder) as entries:
        names = [
            e.name
            for e in entries
            if e.is_file()
            and not e.name.startswith(".")
            and e.name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(names)


def check_count(value: Any, what: str, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        alternatives = " or None" if allow_none else ""
        raise ValueError(f"{what} must be a positive integer{alternatives}, got {value!r}")
    return int(value)


def subset_indices(n: int, *, skip: int = 1, max: int | None = None) -> np.ndarray:
    """The literature's test subset: ``range(0, n, skip)[:max]`` as int64 (k,)."""
    skip = check_count(skip, "skip", allow_none=False)
    limit = check_count(max, "max")
    idx = np.arange(0, n, skip, dtype=np.int64)
    return idx if limit is None else idx[:limit]


def make_split(inputs: Any, labels: np.ndarray, indices: np.ndarray) -> Any:
    from gmcert.data import Split

    return Split(
        inputs=inputs,
        labels=np.asarray(labels, dtype=np.int64),
        indices=np.asarray(indices, dtype=np.int64),
    )


__all__ = [
    "IMAGE_EXTENSIONS",
    "ArrayImageDataset",
    "ImageFileDataset",
    "check_count",
    "image_names",
    "make_split",
    "subset_indices",
]
