"""``dataset=folder``: any image-folder tree, ``root/train/<class>/*`` and ``root/test/<class>/*``
(PNG or JPEG), decoded once and held in memory as float32 (n, C, H, W) in [0, 1].

The config states the images' size and channels, so the input space is fixed by the user and
not by whichever file happens to come first: an image of another size is refused (or resized,
when ``resize: true`` says radii are meant in the resized pixels), and ``channels`` 1 or 3
converts every image to grey or RGB. Class indices follow the sorted folder names, which must
be the same in train/ and test/.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gmcert.data.images import IMAGE_EXTENSIONS, check_count, subset_indices
from gmcert.memory import check_memory

if TYPE_CHECKING:
    from gmcert.data import LabelledData

SPLITS = ("train", "test")
_MODES = {1: "L", 3: "RGB"}


def _layout(root: Path) -> str:
    return f"{root}/train/<class>/*.png and {root}/test/<class>/*.png (or .jpg)"


def check_folder_present(*, root, **_) -> None:
    """FileNotFoundError unless ``root`` holds train/ and test/ (reads only those folders)."""
    root = Path(str(root)).expanduser()
    for folder in (root, *(root / split for split in SPLITS)):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"dataset=folder: {folder} is not a folder; set dataset.root to a folder laid "
                f"out as {_layout(root)}"
            )


def _classes(root: Path, split: str) -> list[str]:
    with os.scandir(root / split) as entries:
        items = list(entries)
    folders = sorted(e.name for e in items if e.is_dir() and not e.name.startswith("."))
    if not folders:
        loose = [e.name for e in items if e.name.lower().endswith(IMAGE_EXTENSIONS)]
        found = f" (images lie loose in it, e.g. {loose[0]})" if loose else ""
        raise ValueError(
            f"{root / split} has no class folders{found}; sort its images into one folder per "
            f"class: {_layout(root)}"
        )
    return folders


def _what(entry: os.DirEntry) -> str:
    if entry.is_dir():
        return "a folder"
    if entry.is_symlink() and not os.path.exists(entry.path):
        return f"a link to {os.readlink(entry.path)}, which does not exist"
    return "not a regular file (a pipe, socket or device)"


def image_files(folder: Path) -> list[str]:
    """Sorted image file names in one class folder (hidden files and other types skipped).
    A name with an image extension that is not a regular file (a folder, a dangling link, a
    pipe, which would block the read) is refused, never skipped without a word."""
    with os.scandir(folder) as entries:
        named = [
            e
            for e in entries
            if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    for entry in named:
        if not entry.is_file():
            raise ValueError(
                f"{folder / entry.name} is {_what(entry)}, not an image file; remove it or put "
                "the image itself there"
            )
    return sorted(e.name for e in named)


def _decode(path: Path, mode: str, size: tuple[int, int], resize: bool) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3). Its size is checked from the header, before
    the pixels are decoded; beyond PIL's decompression-bomb limit it is refused."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode_checked(Image.open(path), path, mode, size, resize)
    except (
        OSError,
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        raise ValueError(f"cannot decode image {path} ({err}); replace or delete it") from None


def _decode_checked(opened, path: Path, mode: str, size: tuple[int, int], resize: bool):
    from PIL import Image

    with opened as image:
        if image.size != (size[1], size[0]) and not resize:
            raise ValueError(
                f"{path} is {image.size[0]}x{image.size[1]} (width x height) but "
                f"dataset.image_size is {size[0]}x{size[1]} (height x width); set "
                "image_size to the images' size, or dataset.resize=true to resize them "
                "on load (radii are then in the resized pixels)"
            )
        image = image.convert(mode)
        if image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def _scan(root: Path, split: str, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    paths: list[Path] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        names = image_files(root / split / name)
        if not names:
            empty.append(str(root / split / name))
        paths.extend(root / split / name / n for n in names)
        labels.extend([label] * len(names))
    if empty:
        raise ValueError(
            f"class folders without images ({', '.join(IMAGE_EXTENSIONS)}): "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; every class needs "
            "images in both train/ and test/: add some or remove the class from both"
        )
    return paths, np.asarray(labels, dtype=np.int64)


def _image_size(value) -> tuple[int, int]:
    sides = [value, value] if isinstance(value, int) else list(value or ())
    if len(sides) != 2 or not all(isinstance(s, int) and s >= 1 for s in sides):
        raise ValueError(
            f"dataset.image_size must be a side or [height, width] in pixels, got {value!r}"
        )
    return int(sides[0]), int(sides[1])


def build_folder(
    *,
    root: str | os.PathLike,
    image_size,
    channels: int = 3,
    resize: bool = False,
    skip: int = 1,
    max: int | None = None,
    train_max: int | None = None,
) -> LabelledData:
    """The images under ``root/train`` and ``root/test`` as in-memory splits.

    Args:
        root: folder holding ``train/<class>/`` and ``test/<class>/``.
        image_size: the images' side, or [height, width], in pixels.
        channels: 1 (grey) or 3 (RGB); every image is converted to it.
        resize: resize images of another size instead of refusing them.
        skip, max: test subset ``range(0, n_test, skip)[:max]`` (class-sorted, file-sorted).
        train_max: keep this many training images, spread evenly over the sorted order.
    """
    from tqdm.auto import tqdm

    from gmcert.data import LabelledData, Split

    subset_indices(0, skip=skip, max=max)
    train_max = check_count(train_max, "train_max")
    size = _image_size(image_size)
    if channels not in _MODES:
        raise ValueError(f"dataset.channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    root = Path(str(root)).expanduser()
    check_folder_present(root=root)
    classes = _classes(root, "train")
    test_classes = _classes(root, "test")
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise ValueError(
            f"{root}/train and {root}/test must hold the same class folders (class indices come "
            f"from their sorted names); only in train: {only_train[:5]}, only in test: "
            f"{only_test[:5]}. Add or remove folders so both match."
        )
    splits = {}
    for split in SPLITS:
        paths, labels = _scan(root, split, classes)
        if split == "train":
            keep = (
                np.arange(len(paths))
                if train_max is None
                else np.unique(
                    np.linspace(0, len(paths) - 1, min(train_max, len(paths))).astype(np.int64)
                )
            )
        else:
            keep = subset_indices(len(paths), skip=skip, max=max)
        check_memory(
            len(keep) * channels * size[0] * size[1] * 4,
            f"holding {len(keep):,} {split} images of {channels}x{size[0]}x{size[1]} in memory",
            "keep fewer (dataset.train_max, dataset.skip / dataset.max) or a smaller image_size",
        )
        inputs = np.empty((len(keep), channels, *size), dtype=np.float32)
        for row, i in enumerate(tqdm(keep, desc=f"decode {split}", leave=False, unit="img")):
            pixels = _decode(paths[i], _MODES[channels], size, resize)
            inputs[row] = (pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)) / 255.0
        splits[split] = Split(inputs, labels[keep], keep.astype(np.int64))
    return LabelledData(
        name="folder",
        train=splits["train"],
        test=splits["test"],
        num_classes=len(classes),
        class_names=classes,
    )


__all__ = ["build_folder", "check_folder_present"]
