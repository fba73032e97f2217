"""``dataset=arrays``: a user's own data as one ``.npz`` holding ``x_train, y_train, x_test,
y_test``: the shortest path from arrays to a certified table.

The file is read with ``allow_pickle=False``, so an object array (which only a pickle can hold)
is refused, never unpickled. Inputs keep their shape (flat vectors or images (n, C, H, W))
and their units: floats as they are, unsigned bytes divided by 255 (the image convention), so
radii are in the units the arrays are in. Labels are integers 0..K-1.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gmcert.data.images import check_count, subset_indices
from gmcert.memory import check_memory

if TYPE_CHECKING:
    from gmcert.data import LabelledData

KEYS = ("x_train", "y_train", "x_test", "y_test")


def check_arrays_present(*, path, **_) -> None:
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset.path={path} is not a file; point it at an .npz holding {', '.join(KEYS)} "
            "(np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...))"
        )


def _load(path: Path) -> dict[str, np.ndarray]:
    fix = f"write it with np.savez({path.name!r}, x_train=..., y_train=..., x_test=..., y_test=...)"
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            missing = [key for key in KEYS if key not in npz.files]
            if missing:
                raise KeyError(f"missing {', '.join(missing)} (found {sorted(npz.files)})")
            # Every header before any values: an array that claims more bytes than its member
            # holds (or than this machine has) is refused without allocating it.
            shapes = {key: _declared(npz, key) for key in KEYS}
            _check_declared_shapes(shapes, path)
            needed = sum(math.prod(shape) * dtype.itemsize for shape, dtype in shapes.values())
            check_memory(
                2 * needed,  # the arrays, then their float32 copies
                f"reading the arrays of {path}",
                "store fewer rows, or keep fewer with dataset.train_max / dataset.max",
            )
            return {key: npz[key] for key in KEYS}
    except MemoryError:
        raise ValueError(f"{path}: its arrays do not fit in this machine's memory") from None
    except KeyError as err:
        raise ValueError(f"{path}: {err.args[0]}; {fix}") from None
    except ValueError as err:
        if "allow_pickle" in str(err):
            err = "it holds object arrays, which only a pickle can load (refused: pickles run code)"
        raise ValueError(f"{path} cannot be used as dataset=arrays: {err}; {fix}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err}); {fix}") from None


def _declared(npz, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) the header of ``key`` declares, checked against what its member holds."""
    name = f"{key}.npy" if f"{key}.npy" in npz.zip.namelist() else key
    info = npz.zip.getinfo(name)
    with npz.zip.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        header = fp.tell()
    if dtype.hasobject:  # refused here with the same words as np.load's own refusal
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    declared = math.prod(shape) * dtype.itemsize
    if declared > info.file_size - header:
        raise ValueError(
            f"{key} declares shape {shape} of {dtype} ({declared:,} bytes) but holds "
            f"{info.file_size - header:,} bytes: the file is damaged or forged"
        )
    return shape, dtype


def _check_declared_shapes(shapes: dict, path: Path) -> None:
    """Rows of inputs and labels, and the two splits' input shapes, must agree: checked on the
    headers, before gigabytes of a mismatched file are read."""
    for split in ("train", "test"):
        x, y = shapes[f"x_{split}"][0], shapes[f"y_{split}"][0]
        if x and y and x[0] != y[0]:
            raise ValueError(
                f"{x[0]} inputs but {y[0]} labels in {split} (x_{split} {x}, y_{split} {y}); "
                "they must match"
            )
    train, test = shapes["x_train"][0], shapes["x_test"][0]
    if len(train) >= 2 and len(test) >= 2 and train[1:] != test[1:]:
        raise ValueError(
            f"x_train rows have shape {train[1:]} but x_test rows {test[1:]}; both splits must "
            "hold inputs of one shape"
        )


def _inputs(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise ValueError(f"{path}: {key} has dtype {x.dtype}; store numbers (float or uint8)")
    if x.ndim < 2:
        raise ValueError(f"{path}: {key} has shape {x.shape}; expected (n, features...)")
    if x.size == 0:
        raise ValueError(
            f"{path}: {key} has shape {x.shape}, no values; store at least one row of at least "
            "one feature"
        )
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
        raise ValueError(
            f"{path}: {key} has {len(bad)} rows with NaN or inf values (first: "
            f"{bad[:5].tolist()}), or values too large for float32; clean or drop them"
        )
    return x


def _labels(y: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(
            f"{path}: {key} has dtype {y.dtype} and shape {y.shape}; expected integer labels (n,)"
        )
    if len(y) != n:
        raise ValueError(f"{path}: {n} inputs but {len(y)} labels in {key}; they must match")
    if len(y) and y.min() < 0:
        raise ValueError(f"{path}: {key} has negative labels; use 0..K-1")
    if len(y) and y.max() >= 1 << 31:
        raise ValueError(f"{path}: {key} has labels up to {y.max()}; use class indices 0..K-1")
    return y.astype(np.int64)


def build_arrays(
    *,
    path: str | os.PathLike,
    skip: int = 1,
    max: int | None = None,
    train_max: int | None = None,
    num_classes: int | None = None,
) -> LabelledData:
    """The four arrays of one ``.npz`` as in-memory splits.

    Args:
        path: the ``.npz`` file.
        skip, max: test subset ``range(0, n_test, skip)[:max]``.
        train_max: keep the first ``train_max`` training rows.
        num_classes: K; None takes 1 + the largest label in either split.
    """
    from gmcert.data import LabelledData, Split

    subset_indices(0, skip=skip, max=max)
    train_max = check_count(train_max, "train_max")
    num_classes = check_count(num_classes, "num_classes")
    path = Path(str(path)).expanduser()
    check_arrays_present(path=path)
    arrays = _load(path)
    x_train, x_test = (_inputs(arrays[k], path, k) for k in ("x_train", "x_test"))
    y_train = _labels(arrays["y_train"], len(x_train), path, "y_train")
    y_test = _labels(arrays["y_test"], len(x_test), path, "y_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{path}: x_train rows have shape {x_train.shape[1:]} but x_test rows "
            f"{x_test.shape[1:]}; both splits must hold inputs of one shape"
        )
    found = int(max_label(y_train, y_test)) + 1
    if num_classes is None:
        num_classes = found
    elif found > num_classes:
        raise ValueError(
            f"{path}: labels go up to {found - 1}, outside 0..{num_classes - 1} "
            f"(dataset.num_classes={num_classes}); raise it or fix the labels"
        )
    if num_classes < 2:
        raise ValueError(f"{path}: the labels name one class only; a classifier needs two")
    train_idx = np.arange(len(y_train), dtype=np.int64)[:train_max]
    absent = _absent_labels(y_train[train_idx], num_classes)
    if absent:
        raise ValueError(
            f"{path}: no training row has label {', '.join(map(str, absent))}"
            f"{' ...' if len(absent) == 5 else ''} (of 0..{num_classes - 1}); a class without "
            "training rows cannot be fitted. Relabel to 0..K-1 with no gaps (e.g. "
            "np.unique(y, return_inverse=True)), or keep more rows (dataset.train_max)"
        )
    test_idx = subset_indices(len(y_test), skip=skip, max=max)
    return LabelledData(
        name="arrays",
        train=Split(x_train[train_idx], y_train[train_idx], train_idx),
        test=Split(x_test[test_idx], y_test[test_idx], test_idx),
        num_classes=num_classes,
        class_names=[str(k) for k in range(num_classes)],
    )


def _absent_labels(y: np.ndarray, num_classes: int, limit: int = 5) -> list[int]:
    """Up to ``limit`` labels of 0..num_classes-1 that ``y`` never uses (no K-sized array)."""
    present = np.unique(y)
    absent, i = [], 0
    for label in range(num_classes):
        while i < len(present) and present[i] < label:
            i += 1
        if i == len(present) or present[i] != label:
            absent.append(label)
            if len(absent) == limit:
                break
    return absent


def max_label(*labels: np.ndarray) -> int:
    return max((int(y.max()) for y in labels if len(y)), default=-1)


__all__ = ["KEYS", "build_arrays", "check_arrays_present"]
