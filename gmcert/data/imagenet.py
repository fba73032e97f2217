"""ImageNet (ILSVRC-2012) from ``root/{train,val}/<wnid>/*.JPEG`` class folders.

Images come out as the standard smoothing protocol's 224x224 centre crops in [0, 1] pixel
units (Resize(256) + CenterCrop(224) + ToTensor).  Labels are read from the folder names;
images are decoded lazily, one at a time, by the returned Dataset.  ImageNet has no public
download: nothing here downloads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gmcert.data.images import (
    IMAGE_EXTENSIONS,
    ImageFileDataset,
    check_count,
    image_names,
    make_split,
    subset_indices,
)

if TYPE_CHECKING:  # the containers live in gmcert.data (imported lazily: no import cycle)
    from gmcert.data import LabelledData

_WNID = re.compile(r"^n\d{8}$")


def imagenet_transform(*, resize_size: int = 256, crop_size: int = 224) -> Any:
    """The standard evaluation preprocessing: Resize(256), CenterCrop(224), ToTensor.

    Returns a callable PIL image -> (3, crop, crop) float32 tensor in [0, 1] (no
    normalisation: that belongs to the encoder, so radii are in [0, 1] pixel units).
    """
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize(resize_size), transforms.CenterCrop(crop_size), transforms.ToTensor()]
    )


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
        names = image_names(root / split / wnid)
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


def check_imagenet_present(*, root, **_) -> None:
    """FileNotFoundError unless ``root`` holds train/ and val/ (reads only those folders)."""
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
    train_per_class = check_count(train_per_class, "train_per_class")
    resize_size = check_count(resize_size, "resize_size", allow_none=False)
    crop_size = check_count(crop_size, "crop_size", allow_none=False)
    if crop_size > resize_size:
        raise ValueError(f"crop_size {crop_size} exceeds resize_size {resize_size}")
    root = Path(root).expanduser()
    check_imagenet_present(root=root)
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
        train=make_split(
            ImageFileDataset(root, train_paths, train_labels, transform), train_labels, train_idx
        ),
        test=make_split(
            ImageFileDataset(root, val_paths[val_idx], val_labels[val_idx], transform),
            val_labels[val_idx],
            val_full_idx[val_idx],
        ),
        num_classes=len(train_classes),
        class_names=_imagenet_class_names(root, train_classes),
    )


__all__ = ["IMAGE_EXTENSIONS", "build_imagenet", "check_imagenet_present", "imagenet_transform"]
