"""MNIST and Fashion-MNIST from their IDX files (the format LeCun et al. published MNIST in).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values. The image files are unsigned bytes of
shape (n, 28, 28) (magic 0x00000803), the label files unsigned bytes of shape (n,) (0x00000801);
either may be gzipped. Images come out as float32 (n, 1, 28, 28) in [0, 1] (byte / 255), the
dataset's own pixel units, so certified radii are measured on the dataset's own pixels.

Accepted layouts under ``root``: the four standard files in ``root`` itself (as Debian's
``dataset-fashion-mnist`` installs them under ``/usr/share/datasets/fashion-mnist``), in
``root/raw/``, or in torchvision's ``root/FashionMNIST/raw/`` / ``root/MNIST/raw/``. Every file is
checked against its header before it is used, so a wrong, truncated or padded file is refused
with its name, never read into a wrong table.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gmcert.data.images import check_count, subset_indices

if TYPE_CHECKING:  # the containers live in gmcert.data (imported lazily: no import cycle)
    from gmcert.data import LabelledData

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# (magic number, dimensions) of unsigned-byte IDX files: images (n, rows, cols), labels (n,).
_MAGIC = {"images": (0x00000803, 3), "labels": (0x00000801, 1)}
_GZIP = b"\x1f\x8b"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
# torchvision's raw folder per dataset, and where Debian's package installs the files.
DATASETS = {
    "fashion_mnist": (
        "FashionMNIST",
        FASHION_MNIST_CLASSES,
        "apt-get install dataset-fashion-mnist",
    ),
    "mnist": ("MNIST", MNIST_CLASSES, None),
}


class IDXError(ValueError):
    """An IDX file that is not what its name says."""


def _fix(path: Path) -> str:
    return f"replace {path} with the original file (re-download or reinstall the dataset)"


def _read_bytes(path: Path, limit: int) -> bytes:
    """The file's content, un-gzipped when it starts with the gzip magic (whatever its name);
    at most ``limit + 1`` bytes are read, so a crafted archive cannot fill the memory."""
    try:
        with open(path, "rb") as f:
            zipped = f.read(2) == _GZIP
        with gzip.open(path, "rb") if zipped else open(path, "rb") as f:
            return f.read(limit + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise IDXError(f"{path} is a damaged gzip file ({err}); {_fix(path)}") from None


def read_idx(path: str | os.PathLike, kind: str, *, max_bytes: int = 1 << 31) -> np.ndarray:
    """One unsigned-byte IDX file as a uint8 array: images (n, rows, cols) or labels (n,).

    Raises :class:`IDXError` (a ValueError naming the file and the fix) for a wrong magic
    number (not IDX, or images where labels belong), a truncated file or one with bytes after
    its values, and a header larger than ``max_bytes``.
    """
    path = Path(path)
    magic, ndim = _MAGIC[kind]
    content = _read_bytes(path, max_bytes)
    header = 4 + 4 * ndim
    if len(content) < header:
        raise IDXError(
            f"{path} is {len(content)} bytes long, shorter than an IDX header; {_fix(path)}"
        )
    found = int.from_bytes(content[:4], "big")
    if found != magic:
        what = {0x00000803: "an image file", 0x00000801: "a label file"}.get(found, "not IDX")
        raise IDXError(
            f"{path} has magic number 0x{found:08x} ({what}), but an unsigned-byte IDX "
            f"{kind} file starts with 0x{magic:08x}; check which file sits under this name "
            f"or {_fix(path)}"
        )
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape, dtype=np.int64))
    if header + size > max_bytes:
        raise IDXError(f"{path} declares shape {shape}, larger than any IDX dataset; {_fix(path)}")
    if len(content) != header + size:
        state = "truncated" if len(content) < header + size else "longer than its header says"
        raise IDXError(
            f"{path} is {state}: its header declares shape {shape} ({header + size:,} bytes), "
            f"the file holds {len(content):,}; {_fix(path)}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _folders(root: Path, raw_folder: str) -> tuple[Path, ...]:
    return (root, root / "raw", root / raw_folder / "raw")


def find_idx_files(root: Path, raw_folder: str) -> tuple[Path, dict | None]:
    """(the folder searched last or found, {(split, kind): path} or None when incomplete)."""
    for folder in _folders(root, raw_folder):
        files = {key: _file(folder, name) for key, name in FILES.items()}
        if all(files.values()):
            return folder, files
    return root, None


def _missing_message(name: str, roots: list[Path]) -> str:
    raw_folder, _, install = DATASETS[name]
    wanted = ", ".join(f"{n}[.gz]" for n in FILES.values())
    where = " or ".join(str(r) for r in roots)
    hint = f" On Debian: {install} (files in /usr/share/datasets/fashion-mnist)." if install else ""
    return (
        f"{name} not found under dataset.root={where}: expected the four IDX files {wanted} "
        f"in that folder, in its raw/ or in its {raw_folder}/raw/ (torchvision's layout). Fix: "
        f"point dataset.root at the folder holding them.{hint}"
    )


def _resolve(name: str, root, fallback_roots) -> tuple[dict | None, list[Path]]:
    roots = [Path(root).expanduser(), *(Path(r).expanduser() for r in fallback_roots or ())]
    raw_folder = DATASETS[name][0]
    for candidate in roots:
        _, files = find_idx_files(candidate, raw_folder)
        if files:
            return files, roots
    return None, roots


def check_idx_present(*, name: str, root, fallback_roots=(), **_) -> None:
    """FileNotFoundError naming the expected files, unless they are there (reads no data)."""
    files, roots = _resolve(name, root, fallback_roots)
    if files is None:
        raise FileNotFoundError(_missing_message(name, roots))


def _read_split(files: dict, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(files[(split, "images")], "images")
    labels = read_idx(files[(split, "labels")], "labels")
    if len(images) != len(labels):
        raise IDXError(
            f"{files[(split, 'images')]} holds {len(images):,} images but "
            f"{files[(split, 'labels')]} holds {len(labels):,} labels; the two files come from "
            "different datasets or one is damaged: replace both with the original pair"
        )
    if len(labels) and labels.max() >= num_classes:
        raise IDXError(
            f"{files[(split, 'labels')]} has labels up to {int(labels.max())}, outside "
            f"0..{num_classes - 1}; {_fix(files[(split, 'labels')])}"
        )
    return images, labels.astype(np.int64)


def build_idx(
    *,
    name: str,
    root: str | os.PathLike,
    fallback_roots=(),
    skip: int = 1,
    max: int | None = None,
    train_max: int | None = None,
) -> LabelledData:
    """MNIST or Fashion-MNIST (``name``) as float32 images (n, 1, 28, 28) in [0, 1].

    Args:
        root: the folder with the four IDX files (or their raw/, or torchvision's layout).
        fallback_roots: folders tried after ``root``, in order (the configs name Debian's).
        skip, max: test subset ``range(0, 10000, skip)[:max]``.
        train_max: keep the first ``train_max`` training images (None: all 60,000).
    """
    from gmcert.data import LabelledData, Split

    subset_indices(0, skip=skip, max=max)  # validate before touching the disk
    train_max = check_count(train_max, "train_max")
    if name not in DATASETS:
        raise ValueError(f"unknown IDX dataset {name!r}; choose one of {sorted(DATASETS)}")
    files, roots = _resolve(name, root, fallback_roots)
    if files is None:
        raise FileNotFoundError(_missing_message(name, roots))
    classes = DATASETS[name][1]
    x_train, y_train = _read_split(files, "train", len(classes))
    x_test, y_test = _read_split(files, "test", len(classes))
    train_idx = np.arange(len(y_train), dtype=np.int64)[:train_max]
    test_idx = subset_indices(len(y_test), skip=skip, max=max)
    if len(test_idx) == 0:
        raise ValueError(f"the {name} test subset is empty (skip={skip}, max={max})")

    def split(x, y, idx):
        pixels = x[idx, None].astype(np.float32) / np.float32(255)  # ToTensor's arithmetic
        return Split(pixels, y[idx], idx)

    return LabelledData(
        name=name,
        train=split(x_train, y_train, train_idx),
        test=split(x_test, y_test, test_idx),
        num_classes=len(classes),
        class_names=list(classes),
    )


def build_fashion_mnist(**options) -> LabelledData:
    return build_idx(name="fashion_mnist", **options)


def build_mnist(**options) -> LabelledData:
    return build_idx(name="mnist", **options)


__all__ = ["FILES", "IDXError", "build_fashion_mnist", "build_mnist", "read_idx"]
