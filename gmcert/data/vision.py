"""CIFAR-10 and ImageNet from their standard on-disk layouts, with the literature's subsets.

Images come out in [0, 1] pixel units at the resolution the certificates are stated in:
CIFAR-10 at its native 32x32 (ToTensor only; any resize to an encoder's input size happens
inside the encoder, so radii stay in native CIFAR pixels), ImageNet as the standard smoothing
protocol's 224x224 centre crops (Resize(256) + CenterCrop(224) + ToTensor).

Test-point subsets follow Cohen et al. (2019): ``indices = range(0, N, skip)[:max]`` over the
test split in its canonical order (every 20th CIFAR-10 test image, every 100th ImageNet
validation image), recorded in ``Split.indices`` so tables can be compared point by point.

Labels are read from the CIFAR pickles and the ImageNet folder names; ImageNet images are
decoded lazily, one at a time, by the returned Dataset.  Nothing is ever downloaded unless the
caller sets ``download=True`` (CIFAR-10 only; ImageNet has no public download).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

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
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
_WNID = re.compile(r"^n\d{8}$")


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


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


def _check_count(value: Any, what: str, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        alternatives = " or None" if allow_none else ""
        raise ValueError(f"{what} must be a positive integer{alternatives}, got {value!r}")
    return int(value)


def subset_indices(n: int, *, skip: int = 1, max: int | None = None) -> np.ndarray:
    """The literature's test subset: ``range(0, n, skip)[:max]`` as int64 (k,)."""
    skip = _check_count(skip, "skip", allow_none=False)
    limit = _check_count(max, "max")
    idx = np.arange(0, n, skip, dtype=np.int64)
    return idx if limit is None else idx[:limit]


def _make_split(inputs: Any, labels: np.ndarray, indices: np.ndarray) -> Any:
    from gmcert.data import Split

    return Split(
        inputs=inputs,
        labels=np.asarray(labels, dtype=np.int64),
        indices=np.asarray(indices, dtype=np.int64),
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


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
    train_max = _check_count(train_max, "train_max")
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
        train=_make_split(
            ArrayImageDataset(train_images[train_idx], train_labels[train_idx]),
            train_labels[train_idx],
            train_idx,
        ),
        test=_make_split(
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


# --------------------------------------------------------------------------------------------
# ImageNet
# --------------------------------------------------------------------------------------------


def imagenet_transform(*, resize_size: int = 256, crop_size: int = 224) -> Any:
    """The standard evaluation preprocessing: Resize(256), CenterCrop(224), ToTensor.

    Returns a callable PIL image -> (3, crop, crop) float32 tensor in [0, 1] (no
    normalisation: that belongs to the encoder, so radii are in [0, 1] pixel units).
    """
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize(resize_size), transforms.CenterCrop(crop_size), transforms.ToTensor()]
    )


def _image_names(folder: Path) -> list[str]:
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


def _class_folders(split_dir: Path, split: str, root: Path) -> list[str]:
    with os.scandir(split_dir) as entries:
        items = list(entries)
    folders = sorted(e.name for e in items if e.is_dir() and not e.name.startswith("."))
    loose = [e.name for e in items if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    if loose and not folders:
        raise ValueError(
            f"ImageNet {split} images lie directly in {split_dir} (e.g. {loose[0]}), but one "
            f"folder per class is expected: {root}/{split}/<wnid>/*.JPEG. Sort them into wnid "
            "folders, e.g. with torchvision.datasets.ImageNet(root, split='val') from the "
            "original archives and devkit, or the usual valprep.sh script."
        )
    if not folders:
        raise FileNotFoundError(
            f"no class folders in {split_dir}; expected {root}/{split}/<wnid>/*.JPEG"
        )
    return folders


def _scan_split(
    root: Path, split: str, classes: Sequence[str], per_class: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(relative paths bytes (k,), labels int64 (k,), indices int64 (k,)) for one split.

    Order: classes as given, files sorted within a class (torchvision ImageFolder's order);
    indices are positions in that full order, also when ``per_class`` keeps a prefix only.
    """
    paths: list[str] = []
    labels: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    empty: list[str] = []
    offset = 0
    for label, wnid in enumerate(classes):
        names = _image_names(root / split / wnid)
        if not names:
            empty.append(wnid)
            continue
        kept = names if per_class is None else names[:per_class]
        paths.extend(f"{split}/{wnid}/{name}" for name in kept)
        labels.append(np.full(len(kept), label, dtype=np.int64))
        indices.append(np.arange(offset, offset + len(kept), dtype=np.int64))
        offset += len(names)
    if empty:
        more = f" (+{len(empty) - 5} more)" if len(empty) > 5 else ""
        raise ValueError(
            f"ImageNet {split} class folders without images ({', '.join(IMAGE_EXTENSIONS)}): "
            f"{', '.join(str(root / split / w) for w in empty[:5])}{more}. Every class needs "
            "images in both train/ and val/; restore them or remove the class from both."
        )
    return (
        np.array([p.encode("utf-8") for p in paths], dtype=bytes),
        np.concatenate(labels),
        np.concatenate(indices),
    )


def _imagenet_class_names(root: Path, wnids: Sequence[str]) -> list[str]:
    """Readable names: a synset mapping file in root if present, else torchvision's list when
    the folders are exactly the 1000 wnids, else the wnids themselves."""
    for mapping_name in ("LOC_synset_mapping.txt", "synset_words.txt"):
        mapping = root / mapping_name
        if mapping.is_file():
            names = {}
            for line in mapping.read_text(encoding="utf-8").splitlines():
                wnid, _, words = line.strip().partition(" ")
                if wnid:
                    names[wnid] = words.split(",")[0].strip() or wnid
            return [names.get(w, w) for w in wnids]
    if len(wnids) == 1000 and all(_WNID.match(w) for w in wnids):
        from torchvision.models import ResNet50_Weights

        # torchvision's 1000-class order is the sorted wnid order, the order used here.
        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return list(wnids)


def build_imagenet(
    *,
    root: str | os.PathLike,
    skip: int = 1,
    max: int | None = None,
    train_per_class: int | None = None,
    resize_size: int = 256,
    crop_size: int = 224,
) -> LabelledData:
    """ImageNet (ILSVRC-2012) from ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``.

    Class index = position of the wnid among the class folders present, sorted.  With all
    1000 folders this is exactly torchvision's class order (the sorted wnids), so indices
    match torchvision's pretrained heads; with a subset of folders (tests, ImageNet-100-style
    subsets) labels are 0..K-1 in sorted-wnid order, and ``class_names`` says which is which.

    Args:
        root: the ImageNet folder with ``train/`` and ``val/`` (one folder per wnid in each).
        skip, max: validation subset ``indices = range(0, 50000, skip)[:max]`` over the
            class-sorted, file-sorted order (torchvision ImageFolder's).  Cohen et al. use
            skip=100: 500 images, which in this order means every other class.
        train_per_class: keep the first (sorted by file name) images of each class; fitting
            the mixture does not need all 1.28M.  None keeps all.
        resize_size, crop_size: the evaluation preprocessing (default 256 -> 224).
    Returns:
        LabelledData "imagenet": Splits whose ``inputs`` are :class:`ImageFileDataset`
        (items: (3, crop, crop) float32 in [0, 1], label), int64 labels and indices.
    Raises:
        FileNotFoundError: root, train/ or val/ missing.
        ValueError: flat val folder, empty class folders, train/val class mismatch, bad args.
    """
    from gmcert.data import LabelledData

    subset_indices(0, skip=skip, max=max)  # validate before scanning the disk
    train_per_class = _check_count(train_per_class, "train_per_class")
    resize_size = _check_count(resize_size, "resize_size", allow_none=False)
    crop_size = _check_count(crop_size, "crop_size", allow_none=False)
    if crop_size > resize_size:
        raise ValueError(f"crop_size {crop_size} exceeds resize_size {resize_size}")
    root = Path(root).expanduser()
    layout = f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG"
    if not root.is_dir():
        raise FileNotFoundError(
            f"ImageNet root {root} does not exist; set dataset.root to the folder holding "
            f"train/ and val/ ({layout}). ImageNet cannot be downloaded automatically: get "
            "ILSVRC-2012 from https://image-net.org and extract it into that layout."
        )
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"ImageNet folder {root / split} is missing; expected {layout}")
    train_classes = _class_folders(root / "train", "train", root)
    val_classes = _class_folders(root / "val", "val", root)
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise ValueError(
            "ImageNet train/ and val/ must hold the same class folders (class indices come "
            f"from their sorted names); only in train: {only_train[:5]}"
            f"{' ...' if len(only_train) > 5 else ''}, only in val: {only_val[:5]}"
            f"{' ...' if len(only_val) > 5 else ''}. Add or remove folders so both match."
        )
    transform = imagenet_transform(resize_size=resize_size, crop_size=crop_size)

    train_paths, train_labels, train_idx = _scan_split(
        root, "train", train_classes, train_per_class
    )
    val_paths, val_labels, val_full_idx = _scan_split(root, "val", val_classes, None)
    val_idx = subset_indices(len(val_paths), skip=skip, max=max)
    if len(val_idx) == 0:
        raise ValueError(f"the ImageNet validation subset is empty (skip={skip}, max={max})")
    return LabelledData(
        name="imagenet",
        train=_make_split(
            ImageFileDataset(root, train_paths, train_labels, transform), train_labels, train_idx
        ),
        test=_make_split(
            ImageFileDataset(root, val_paths[val_idx], val_labels[val_idx], transform),
            val_labels[val_idx],
            val_full_idx[val_idx],
        ),
        num_classes=len(train_classes),
        class_names=_imagenet_class_names(root, train_classes),
    )


__all__ = [
    "ArrayImageDataset",
    "CIFAR10_CLASSES",
    "ImageFileDataset",
    "build_cifar10",
    "build_imagenet",
    "imagenet_transform",
    "subset_indices",
]
