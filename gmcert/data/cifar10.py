"""CIFAR-10 from torchvision's on-disk layout (``cifar-10-batches-py/`` Python pickles).

Images come out at their native 32x32 in [0, 1] pixel units (ToTensor only; any resize to an
encoder's input size happens inside the encoder, so radii stay in native CIFAR pixels).
Labels and class names are read from the pickles.  Nothing is downloaded unless the caller
sets ``download=True``.  The pickles are checked against the official MD5s before they are
read and are read with a restricted unpickler (numpy arrays and plain containers only), so a
crafted file is refused, never run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
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
# The published MD5 digests of the files of the official archive (CIFAR10_URL); the same
# values torchvision checks after its download.
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
# Every official batch holds 10000 images of 3072 bytes, so it is at least this large.
_OFFICIAL_BATCH_MIN_BYTES = 10000 * 3 * 32 * 32


def _cifar_folder(root: Path) -> Path:
    """The folder holding the CIFAR-10 batches: root/cifar-10-batches-py, or root itself."""
    for folder in (root / CIFAR10_FOLDER, root):
        if (folder / CIFAR10_TEST_FILE).is_file():
            return folder
    return root / CIFAR10_FOLDER


def cifar10_missing(root: Path) -> list[str]:
    """The CIFAR-10 batch files missing under ``root`` (reads nothing but the folder)."""
    folder = _cifar_folder(root)
    required = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    return [name for name in required if not (folder / name).is_file()]


def check_cifar10_present(*, root, download: bool = False, **_) -> None:
    """FileNotFoundError naming what is missing, unless it is there or may be downloaded."""
    root = Path(root).expanduser()
    missing = cifar10_missing(root)
    if missing and not download:
        raise FileNotFoundError(_cifar_missing_message(root, _cifar_folder(root), missing))


def _cifar_missing_message(root: Path, folder: Path, missing: Sequence[str]) -> str:
    return (
        f"CIFAR-10 not found under dataset.root={root}: expected the folder {folder} with "
        f"{', '.join(CIFAR10_TRAIN_FILES)}, {CIFAR10_TEST_FILE} and {CIFAR10_META_FILE} "
        f"(torchvision's on-disk format, the 'python version' archive {CIFAR10_URL} extracted "
        f"in place); missing: {', '.join(missing)}. Fix: point dataset.root at the folder that "
        f"contains {CIFAR10_FOLDER}/, or set dataset.download=true to let torchvision download "
        "it (about 170 MB)."
    )


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 file without running anything it names.

    The official batches (and torchvision-style rewrites of them) only reference numpy's array
    reconstruction; a pickle naming any other global -- ``os.system``, ``builtins.eval``, ... --
    is refused before that global is even looked up.
    """

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # Python-2 str -> str, byte for byte
        self._path = path

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise _ForbiddenGlobal(
                f"{self._path} asks to load {module}.{name}, which a CIFAR-10 file never "
                "holds, so it was refused unread (a crafted pickle could run code); delete the "
                "folder and re-extract the official archive"
            )
        return allowed


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the CIFAR-10 format."""


def _latin1_bytes(text, encoding):
    """Stands in for ``_codecs.encode``: protocol-2 pickles written by Python 3 store bytes
    (e.g. an array's raw pixels) as ``_codecs.encode(text, "latin1")``; only that form."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin1 byte strings are accepted")
    return text.encode("latin1")


_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0, dtype=np.uint8))[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy < 2 (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


def _one_line(text: object, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_cifar_pickle(path: Path) -> dict:
    """One CIFAR-10 pickle, read with :class:`_BatchUnpickler`, as a dict with str keys."""
    fix = "delete the folder and re-extract the archive (or re-download it)"
    try:
        with open(path, "rb") as f:
            content = _BatchUnpickler(f, path).load()
    except _ForbiddenGlobal as err:
        raise ValueError(str(err)) from None
    except Exception as err:  # garbage can fail in many ways inside the unpickler
        raise ValueError(
            f"{path} is not a readable CIFAR-10 file ({type(err).__name__}: {_one_line(err)}); "
            f"{fix}"
        ) from None
    if not isinstance(content, dict):
        raise ValueError(
            f"{path} holds a {type(content).__name__}, not the dict of a CIFAR-10 file; {fix}"
        )
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in content.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle -> (uint8 images (n, 3, 32, 32), int64 labels (n,))."""
    batch = _load_cifar_pickle(path)
    fix = "the file is corrupt or not CIFAR-10: delete the folder and re-extract the archive"
    if "data" not in batch or "labels" not in batch:
        found = sorted(map(str, batch))
        raise ValueError(
            f"{path} lacks the 'data'/'labels' entries of a CIFAR-10 batch (found {found}); "
            f"is it a CIFAR-100 file? {fix}"
        )
    data, labels = batch["data"], batch["labels"]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
    ):
        shape = getattr(data, "shape", None)
        kind = f"{type(data).__name__} {getattr(data, 'dtype', '')} of shape {shape}"
        raise ValueError(f"{path}: expected 'data' uint8 of shape (n, 3072), got {kind}; {fix}")
    if not isinstance(labels, (list, tuple)) or not all(
        isinstance(y, int) and not isinstance(y, bool) for y in labels
    ):
        raise ValueError(f"{path}: expected 'labels' as a list of ints; {fix}")
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels; {fix}")
    if labels and (min(labels) < 0 or max(labels) >= 10):
        raise ValueError(f"{path}: labels outside 0..9 ({min(labels)}..{max(labels)}); {fix}")
    # Rows are stored channel-major (1024 R, 1024 G, 1024 B), i.e. already (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_integrity(folder: Path, verify_checksums: bool | None) -> None:
    """Check every present CIFAR-10 file against the official MD5s before any is read.

    ``verify_checksums=None`` (auto) verifies whenever the folder could be the official
    archive, i.e. some batch is large enough to hold an official batch's 10000 images; a folder
    whose batches are all smaller cannot be the official data and is read with a warning.
    """
    if verify_checksums is False:
        return
    names = [name for name in CIFAR10_MD5 if (folder / name).is_file()]
    batches = [name for name in names if name != CIFAR10_META_FILE]
    if verify_checksums is None and all(
        (folder / name).stat().st_size < _OFFICIAL_BATCH_MIN_BYTES for name in batches
    ):
        warnings.warn(
            f"the CIFAR-10 files in {folder} are smaller than the official batches, so they are "
            "not the official archive and their MD5 checksums were not verified (they are read "
            "with the safe unpickler only); pass verify_checksums=False "
            "(+dataset.verify_checksums=false) to load custom CIFAR-10-format data deliberately",
            UserWarning,
            stacklevel=3,
        )
        return
    for name in names:
        found = _md5(folder / name)
        if found != CIFAR10_MD5[name]:
            raise ValueError(
                f"{folder / name} fails the CIFAR-10 checksum: MD5 expected "
                f"{CIFAR10_MD5[name]}, found {found}; the file is corrupt or was altered: "
                f"delete {folder} and re-extract the official archive {CIFAR10_URL} (or set "
                "dataset.download=true), or pass verify_checksums=False for custom data"
            )


def build_cifar10(
    *,
    root: str | os.PathLike,
    download: bool = False,
    skip: int = 1,
    max: int | None = None,
    train_max: int | None = None,
    verify_checksums: bool | None = None,
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
        verify_checksums: check the files against the official archive's MD5s
            (:data:`CIFAR10_MD5`) before reading any of them.  True: always; False: never (for
            custom data in the CIFAR-10 format); None (default): whenever the folder could be
            the official archive (some batch is large enough to hold 10000 images), otherwise
            read with a warning.  Whatever the choice, the pickles are read with a restricted
            unpickler that admits numpy arrays and plain containers only, never code.
    Returns:
        LabelledData "cifar10": train/test Splits whose ``inputs`` are
        :class:`ArrayImageDataset` (items: (3, 32, 32) float32 in [0, 1], label), int64
        labels, and int64 ``indices`` into the original splits; 10 classes.
    Raises:
        FileNotFoundError: the batches are missing (the message says where they are expected).
        ValueError: bad arguments; corrupt, altered or malformed files (a checksum
            mismatch, a pickle naming anything beyond numpy arrays, a wrong structure).
    """
    from gmcert.data import LabelledData

    test_idx_args = {"skip": skip, "max": max}
    subset_indices(0, **test_idx_args)  # validate before touching the disk
    train_max = check_count(train_max, "train_max")
    if verify_checksums not in (None, True, False):
        raise ValueError(f"verify_checksums must be true, false or null, got {verify_checksums!r}")
    root = Path(root).expanduser()
    folder, missing = _cifar_folder(root), cifar10_missing(root)
    if missing and download:
        from torchvision.datasets import CIFAR10

        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(root=str(root), train=True, download=True)  # downloads and checks the MD5s
        folder, missing = root / CIFAR10_FOLDER, cifar10_missing(root)
    if missing:
        raise FileNotFoundError(_cifar_missing_message(root, folder, missing))

    _check_integrity(folder, verify_checksums)  # before any file is unpickled
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
    names = _load_cifar_pickle(meta).get("label_names")
    if not (
        isinstance(names, (list, tuple))
        and len(names) == 10
        and all(isinstance(n, (str, bytes)) for n in names)
    ):
        raise ValueError(
            f"{meta}: expected 'label_names' as 10 strings, got {_one_line(repr(names))}; "
            "delete the folder and re-extract the archive"
        )
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


__all__ = ["CIFAR10_CLASSES", "CIFAR10_MD5", "build_cifar10"]
