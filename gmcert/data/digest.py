"""Content digests of a dataset's splits: what the run fingerprint and the feature cache key
on, so that results are never resumed or reused across different data at the same path.

In-memory inputs (arrays, CIFAR-10's uint8 images) are hashed as they are. Image files are
hashed by content too, but a file's hash is computed once and kept in a manifest beside the
cache (``<cache_dir>/data_digests/``), keyed by its path, size and modification time: a file
changed in place gets a new mtime (or size) and is read again; an unchanged one is not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gmcert.data import LabelledData, Split
from gmcert.data.images import ArrayImageDataset, ImageFileDataset
from gmcert.io import file_digest, write_json

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def split_digest(split: Split, *, cache_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 (hex, 24 characters) of a split's inputs, labels and indices."""
    h = hashlib.sha256()
    for array in (split.labels, split.indices):
        h.update(np.ascontiguousarray(array).tobytes())
    inputs = split.inputs
    if isinstance(inputs, np.ndarray):
        h.update(str((inputs.dtype, inputs.shape)).encode())
        h.update(np.ascontiguousarray(inputs).tobytes())
    elif isinstance(inputs, ArrayImageDataset):
        h.update(str((inputs.images.dtype, inputs.images.shape)).encode())
        h.update(np.ascontiguousarray(inputs.images).tobytes())
    elif isinstance(inputs, ImageFileDataset):
        for relpath, digest in _file_digests(inputs, cache_dir):
            h.update(relpath + b"\0" + digest.encode())
    else:
        raise TypeError(
            f"cannot digest inputs of type {type(inputs).__name__}: give the split a numpy array, "
            "an ArrayImageDataset or an ImageFileDataset"
        )
    return h.hexdigest()[:24]


def data_digest(data: LabelledData, *, cache_dir: str | os.PathLike | None = None) -> dict:
    """The digest of each split, as ``{"train": ..., "test": ...}``."""
    return {
        name: split_digest(getattr(data, name), cache_dir=cache_dir) for name in ("train", "test")
    }


def _file_digests(dataset: ImageFileDataset, cache_dir) -> list[tuple[bytes, str]]:
    """(relative path, content SHA-256) of every file, reusing the manifest's hash where the
    file's size and mtime are what they were when it was hashed."""
    root = dataset.root.resolve()
    manifest_path = _manifest_path(root, cache_dir)
    manifest = _read_manifest(manifest_path)
    out, changed = [], False
    for relpath in tqdm(dataset.relpaths, desc="hash data", unit="file", leave=False):
        name = relpath.decode("utf-8")
        path = root / name
        try:
            stat = path.stat()
        except OSError as err:
            raise ValueError(
                f"cannot read image {path}: {err.strerror}; restore the file or rebuild the "
                "dataset folder"
            ) from None
        known = manifest.get(name)
        if known and known[:2] == [stat.st_size, stat.st_mtime_ns]:
            digest = known[2]
        else:
            digest = file_digest(path)
            manifest[name] = [stat.st_size, stat.st_mtime_ns, digest]
            changed = True
        out.append((relpath, digest))
    if changed and manifest_path is not None:
        _write_manifest(manifest_path, manifest)
    return out


def _manifest_path(root: Path, cache_dir) -> Path | None:
    if cache_dir is None:
        return None
    name = hashlib.sha256(str(root).encode()).hexdigest()[:24]
    return Path(cache_dir) / "data_digests" / f"{name}.json"


def _read_manifest(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    try:
        payload = json.loads(path.read_text())
        if payload.get("version") != MANIFEST_VERSION or not isinstance(payload["files"], dict):
            raise ValueError("unknown layout")
        return payload["files"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("data digest manifest %s is unusable (%s); hashing the files again", path, err)
        return {}


def _write_manifest(path: Path, files: dict) -> None:
    try:
        write_json(path, {"version": MANIFEST_VERSION, "files": files})
    except OSError as err:  # a read-only cache costs time next run, never the result
        log.warning("cannot store the data digest manifest %s (%s)", path, err.strerror)
