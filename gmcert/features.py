"""Batched latent extraction with a progress bar, and a content-addressed on-disk cache.

Cache layout (STYLE.md 9): ``<cache_dir>/features/<key>/`` holds ``latents.npy``,
``labels.npy`` and ``meta.json``; ``key`` is the SHA-256 of the config subset that determines
the latents, the weight file's digest and ``CACHE_VERSION``. An entry is written to a
temporary folder and renamed into place, and its file digests are checked before every use: a
truncated or altered entry is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@torch.inference_mode()
def extract_features(
    encoder: torch.nn.Module,
    inputs: np.ndarray | Dataset,
    *,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
    bf16: bool = False,
    channels_last: bool = False,
    desc: str = "encode",
) -> np.ndarray:
    """Latents (n, d) float32 for ``inputs`` (an array or a Dataset of (image, label)).

    bf16 autocast and channels_last apply on CUDA only, where they pay off.
    """
    encoder = encoder.eval().to(device)
    cuda = device.type == "cuda"
    if isinstance(inputs, np.ndarray):
        # Arrays are sliced directly: a DataLoader would collate item by item.
        batches = (
            (torch.from_numpy(np.asarray(inputs[i : i + batch_size], dtype=np.float32)), None)
            for i in range(0, len(inputs), batch_size)
        )
        total = -(-len(inputs) // batch_size)
    else:
        batches = DataLoader(
            inputs, batch_size=batch_size, num_workers=num_workers, pin_memory=cuda, shuffle=False
        )
        total = len(batches)
    chunks = []
    for x, _ in tqdm(batches, total=total, desc=desc, unit="batch", leave=False):
        x = x.to(device, non_blocking=True)
        if cuda and channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and bf16):
            z = encoder(x)
        chunks.append(z.float().cpu())
    if not chunks:
        raise ValueError(f"no inputs to encode for {desc!r}")
    return torch.cat(chunks).numpy()


# ------------------------------------------------------------------------------- cache


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_key(material: dict) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **material}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _verified_load(entry: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("key") != key:
            raise ValueError("key mismatch")
        for name in ("latents.npy", "labels.npy"):
            if file_digest(entry / name) != meta["sha256"][name]:
                raise ValueError(f"{name} digest mismatch")
        return np.load(entry / "latents.npy"), np.load(entry / "labels.npy")
    except (OSError, ValueError, KeyError) as err:
        log.warning("feature cache entry %s is unusable (%s); rebuilding it", entry, err)
        return None


def cached(
    material: dict,
    compute: Callable[[], tuple[np.ndarray, np.ndarray]],
    *,
    cache_dir: str | os.PathLike | None,
    force: bool = False,
) -> tuple[tuple[np.ndarray, np.ndarray], bool]:
    """(latents, labels) from the cache when a verified entry exists, else computed and stored.

    Returns the arrays and whether they came from the cache. ``cache_dir=None`` disables it.
    """
    if cache_dir is None:
        return compute(), False
    key = cache_key(material)
    entry = Path(cache_dir) / "features" / key
    if entry.exists() and not force:
        hit = _verified_load(entry, key)
        if hit is not None:
            log.info("feature cache hit %s", entry)
            return hit, True
    latents, labels = compute()
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=entry.parent))
    np.save(tmp / "latents.npy", latents)
    np.save(tmp / "labels.npy", labels)
    meta = {
        "key": key,
        "material": material,
        "shape": list(latents.shape),
        "sha256": {n: file_digest(tmp / n) for n in ("latents.npy", "labels.npy")},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    if entry.exists():
        shutil.rmtree(entry, ignore_errors=True)
    try:
        os.replace(tmp, entry)
    except OSError:  # another sweep job stored the same entry first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return (latents, labels), False
