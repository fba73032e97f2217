"""CIFAR-10 from torchvision's on-disk layout (``cifar-10-batches-py/`` Python pickles).

Images come out at their native 32x32 in [0, 1] pixel units (ToTensor only; any resize to an
encoder's input size happens inside the encoder, so radii stay in native CIFAR pixels).
Labels and class names are read from the pickles.  Nothing is downloaded unless the caller
sets ``download=True``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gmcert.data.images import ArrayImageDataset, check_count, make_split, subset_indices

if TYPE_CHECKING:  # the containers live in gmcert.data (imported lazily: no import cycle)
    from gmcert.data import LabelledData

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# The fixed class order of CIFAR-10 (also stored in batches.meta; used if that file is absent).
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _cifar_folder(root: Path) -> Path:
    """The folder holding the CIFAR-10 batches: root/cifar-10-batches-py, or root itself."""
    for folder in (root / CIFAR10_FOLDER, root):
        if (folder / CIFAR10_TEST_FILE).is_file():
            return folder
    return root / CIFAR10_FOLDER


def _cifar_missing_message(root: Path, folder: Path, missing: Sequence[str]) -> str:
    return (
        f"CIFAR-10 not found under dataset.root={root}: expected the folder {folder} with "
        f"{', '.join(CIFAR10_TRAIN_FILES)}, {CIFAR10_TEST_FILE} and {CIFAR10_META_FILE} "
        f"(torchvision's on-disk format, the 'python version' archive {CIFAR10_URL} extracted "
        f"in place); missing: {', '.join(missing)}. Fix: point dataset.root at the folder that "
        f"contains {CIFAR10_FOLDER}/, or set dataset.download=true to let torchvision download "
        "it (about 170 MB)."
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle -> (uint8 images (n, 3, 32, 32), int64 labels (n,))."""
    try:
        with open(path, "rb") as f:
            # The batches are Python-2 pickles; latin1 maps their byte strings 1:1.
            batch = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable CIFAR-10 batch ({err}); delete the folder and "
            "re-extract the archive (or set dataset.download=true)"
        ) from None
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(
            f"{path} lacks the 'data'/'labels' entries of a CIFAR-10 batch (found "
            f"{sorted(batch)}); is it a CIFAR-100 file? re-extract CIFAR-10 there"
        )
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(
            f"{path}: expected 'data' of shape (n, 3072) and n labels, got {data.shape} and "
            f"{len(labels)} labels; the file is corrupt, re-extract the archive"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise ValueError(f"{path}: labels outside 0..9 ({labels.min()}..{labels.max()})")
    # Rows are stored channel-major (1024 R, 1024 G, 1024 B), i.e. already (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels


def build_cifar10(
    *,
    root: str | os.PathLike,
    download: bool = False,
    skip: int = 1,
    max: int | None = None,
    train_max: int | None = None,
) -> LabelledData:
    """CIFAR-10 as native 32x32 images in [0, 1].

    Args:
        root: folder containing ``cifar-10-batches-py/`` (torchvision's layout); a path to
            ``cifar-10-batches-py`` itself is accepted too.
        download: let torchvision download and verify the archive into ``root`` if it is
            missing.  Off by default: nothing is downloaded unless asked.
        skip, max: test subset ``indices = range(0, 10000, skip)[:max]`` (the literature uses
            skip=20, i.e. 500 images).
        train_max: keep the first ``train_max`` training images (the training batches are
            stored in random order, so a prefix is an unbiased subsample); None keeps 50000.
    Returns:
        LabelledData "cifar10": train/test Splits whose ``inputs`` are
        :class:`ArrayImageDataset` (items: (3, 32, 32) float32 in [0, 1], label), int64
        labels, and int64 ``indices`` into the original splits; 10 classes.
    Raises:
        FileNotFoundError: the batches are missing (the message says where they are expected).
        ValueError: bad arguments or corrupt files.
    """
    from gmcert.data import LabelledData

    test_idx_args = {"skip": skip, "max": max}
    subset_indices(0, **test_idx_args)  # validate before touching the disk
    train_max = check_count(train_max, "train_max")
    root = Path(root).expanduser()
    folder = _cifar_folder(root)
    required = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    missing = [name for name in required if not (folder / name).is_file()]
    if missing and download:
        from torchvision.datasets import CIFAR10

        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(root=str(root), train=True, download=True)  # downloads and checks the MD5s
        folder = root / CIFAR10_FOLDER
        missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(_cifar_missing_message(root, folder, missing))

    train_parts = [_read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_FILES]
    train_images = np.concatenate([images for images, _ in train_parts])
    train_labels = np.concatenate([labels for _, labels in train_parts])
    test_images, test_labels = _read_cifar_batch(folder / CIFAR10_TEST_FILE)

    train_idx = np.arange(len(train_images), dtype=np.int64)[:train_max]
    test_idx = subset_indices(len(test_images), **test_idx_args)
    if len(test_idx) == 0:
        raise ValueError(f"the CIFAR-10 test subset is empty (skip={skip}, max={max})")
    return LabelledData(
        name="cifar10",
        train=make_split(
            ArrayImageDataset(train_images[train_idx], train_labels[train_idx]),
            train_labels[train_idx],
            train_idx,
        ),
        test=make_split(
            ArrayImageDataset(test_images[test_idx], test_labels[test_idx]),
            test_labels[test_idx],
            test_idx,
        ),
        num_classes=10,
        class_names=_cifar_class_names(folder),
    )


def _cifar_class_names(folder: Path) -> list[str]:
    meta = folder / CIFAR10_META_FILE
    if not meta.is_file():
        return list(CIFAR10_CLASSES)
    with open(meta, "rb") as f:
        content = pickle.load(f, encoding="latin1")
    content = {(k.decode() if isinstance(k, bytes) else k): v for k, v in content.items()}
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in content.get("label_names", [])]
    if len(names) != 10:
        raise ValueError(f"{meta}: expected 10 'label_names', got {names}; re-extract CIFAR-10")
    return names


__all__ = ["CIFAR10_CLASSES", "build_cifar10"]
