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
import math
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gmcert.data.images import check_count, subset_indices
from gmcert.memory import check_memory

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


_IMAGE_SIDE = 28  # MNIST and Fashion-MNIST images are 28 x 28
_TYPE_NAMES = {
    0x08: "unsigned bytes",
    0x09: "signed bytes",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}


def _open(path: Path):
    """A binary stream of the file's content, un-gzipped when it starts with the gzip magic
    (whatever its name). Reading from it never holds more than what is asked for."""
    with open(path, "rb") as f:
        zipped = f.read(2) == _GZIP
    return gzip.open(path, "rb") if zipped else open(path, "rb")


def _describe(magic: int) -> str:
    """What an IDX magic number says the file is."""
    if magic >> 16 != 0 or (magic >> 8) & 0xFF not in _TYPE_NAMES:
        return "not an IDX file"
    kind = _TYPE_NAMES[(magic >> 8) & 0xFF]
    return f"an IDX file of {kind} with {magic & 0xFF} dimension(s)"


def _read_header(f, path: Path, kind: str, max_bytes: int) -> tuple[int, ...]:
    """The shape an IDX header declares, checked against what ``kind`` must be and against
    ``max_bytes``, before any value is read."""
    magic, ndim = _MAGIC[kind]
    header = f.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim:
        raise IDXError(
            f"{path} is {len(header)} bytes long, shorter than an IDX header; {_fix(path)}"
        )
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        raise IDXError(
            f"{path} has magic number 0x{found:08x} ({_describe(found)}), but an unsigned-byte "
            f"IDX {kind} file starts with 0x{magic:08x} (unsigned bytes, {ndim} dimension(s)); "
            f"check which file sits under this name or {_fix(path)}"
        )
    shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if 4 + 4 * ndim + math.prod(shape) > max_bytes:
        raise IDXError(f"{path} declares shape {shape}, larger than any IDX dataset; {_fix(path)}")
    if kind == "images" and shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
        raise IDXError(
            f"{path} declares images of {shape[1]}x{shape[2]} pixels; MNIST and Fashion-MNIST "
            f"images are {_IMAGE_SIDE}x{_IMAGE_SIDE}: {_fix(path)}"
        )
    if shape[0] == 0:
        raise IDXError(f"{path} declares 0 {kind}: it holds no data; {_fix(path)}")
    return shape


def read_idx_shape(path: str | os.PathLike, kind: str, *, max_bytes: int = 1 << 31) -> tuple:
    """The checked shape of an IDX file from its header alone (reads a few bytes)."""
    path = Path(path)
    try:
        with _open(path) as f:
            return _read_header(f, path, kind, max_bytes)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise IDXError(f"{path} is a damaged gzip file ({err}); {_fix(path)}") from None


def read_idx(path: str | os.PathLike, kind: str, *, max_bytes: int = 1 << 31) -> np.ndarray:
    """One unsigned-byte IDX file as a uint8 array: images (n, 28, 28) or labels (n,).

    Raises :class:`IDXError` (a ValueError naming the file and the fix) for a wrong magic
    number (not IDX, another value type or dimension count, or images where labels belong),
    images that are not 28x28, no data, a truncated file or one with bytes after its values,
    and a header larger than ``max_bytes``. The header is checked before the values are read,
    and no more than it declares is ever read, so a small (gzipped) file that claims or
    unpacks to gigabytes costs no memory.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            shape = _read_header(f, path, kind, max_bytes)
            size = math.prod(shape)
            values = f.read(size + 1)  # one byte more: a longer file is refused
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise IDXError(f"{path} is a damaged gzip file ({err}); {_fix(path)}") from None
    if len(values) != size:
        header = 4 + 4 * len(shape)
        state = "truncated" if len(values) < size else "longer than its header says"
        holds = f"{header + len(values):,}" if len(values) < size else "more"
        raise IDXError(
            f"{path} is {state}: its header declares shape {shape} ({header + size:,} bytes), "
            f"the file holds {holds}; {_fix(path)}"
        )
    return np.frombuffer(values, dtype=np.uint8).reshape(shape)


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
        if candidate.exists() or candidate.is_symlink():
            what = (
                "a folder"
                if candidate.is_dir()
                else "a link to nothing"
                if not candidate.exists()
                else "not a regular file (a pipe, socket or device)"
            )
            raise IDXError(f"{candidate} is {what}, not an IDX file; {_fix(candidate)}")
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
    image_file, label_file = files[(split, "images")], files[(split, "labels")]
    # Both headers first: two files that disagree, or more data than this machine holds, are
    # refused before any value is read.
    n_images = read_idx_shape(image_file, "images")[0]
    n_labels = read_idx_shape(label_file, "labels")[0]
    if n_images != n_labels:
        raise IDXError(
            f"{image_file} holds {n_images:,} images but {label_file} holds {n_labels:,} labels; "
            "the two files come from different datasets or one is damaged: replace both with "
            "the original pair"
        )
    check_memory(
        n_images * _IMAGE_SIDE**2 * 5,  # the bytes, then float32 pixels of what is kept
        f"reading {n_images:,} {split} images from {image_file}",
        "keep fewer with dataset.train_max / dataset.max, or check the file: " + _fix(image_file),
    )
    images = read_idx(image_file, "images")
    labels = read_idx(label_file, "labels")
    if labels.max() >= num_classes:
        raise IDXError(
            f"{label_file} has labels up to {int(labels.max())}, outside "
            f"0..{num_classes - 1}; {_fix(label_file)}"
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


__all__ = ["FILES", "IDXError", "build_fashion_mnist", "build_mnist", "read_idx", "read_idx_shape"]
