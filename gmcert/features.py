"""The encode stage: batched latent extraction with a progress bar, through a
content-addressed on-disk cache.

Cache layout: ``<cache_dir>/features/<key>/`` holds ``latents.npy``,
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from gmcert.data import LabelledData
from gmcert.encoders import EncoderSpec, encoder_spec
from gmcert.io import check_entry, file_digest, store_entry
from gmcert.memory import check_memory

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: float64 latents kept for encoders that compute in float64
_ENTRY_FILES = ("latents.npy", "labels.npy")


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
        # float32 latents, unless the encoder computes in float64 for exact certificates.
        z = (z if z.dtype == torch.float64 else z.float()).cpu()
        if not chunks:  # the first batch tells the latent size: refuse what cannot fit
            check_memory(
                len(inputs) * z.shape[1] * z.element_size(),
                f"the {desc} latents ({len(inputs):,} x {z.shape[1]:,} "
                f"{str(z.dtype).removeprefix('torch.')})",
                "use a pretrained encoder (encoder=resnet50, vit, clip, dinov2) or fewer "
                "images (dataset.train_per_class, dataset.max)",
            )
        chunks.append(z)
    if not chunks:
        raise ValueError(f"no inputs to encode for {desc!r}")
    return torch.cat(chunks).numpy()


# ------------------------------------------------------------------------------- cache


def cache_key(material: dict) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **material}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _verified_load(entry: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        check_entry(entry, key, _ENTRY_FILES)
        return np.load(entry / "latents.npy"), np.load(entry / "labels.npy")
    except (OSError, ValueError) as err:
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

    def write(folder: Path) -> None:
        np.save(folder / "latents.npy", latents)
        np.save(folder / "labels.npy", labels)

    try:
        store_entry(entry, key, write, {"material": material, "shape": list(latents.shape)})
    except OSError as err:  # a read-only or full cache costs time next run, never this result
        log.warning(
            "cannot store features in the cache at %s (%s); this run goes on without it. Set "
            "paths.cache_dir to a writable folder, or cache.enabled=false",
            entry.parent,
            err.strerror or err,
        )
    return (latents, labels), False


# Options of a pretrained encoder that shape extraction speed, not the latents.
_EXTRACTION_OPTIONS = ("batch_size", "num_workers", "bf16", "channels_last")


@dataclass(frozen=True)
class Encoded:
    """The encode stage's output: the built (and fitted) encoder, the latents of each split,
    and the encoder's spec (what later stages may ask of it, e.g. whether it is the identity)."""

    encoder: torch.nn.Module
    train: np.ndarray
    test: np.ndarray
    cache_hits: dict[str, bool]
    spec: EncoderSpec


def encode(
    data: LabelledData, encoder_cfg, *, device, cache_dir, force: bool, data_digests: dict
) -> Encoded:
    """Build and fit the encoder; latents of both splits, through the feature cache.

    ``data_digests``: each split's content digest (:func:`gmcert.data.digest.data_digest`),
    part of the cache key, so changed data are never served old latents.
    """
    spec = encoder_spec(encoder_cfg.name)
    name = spec.name
    opts = OmegaConf.to_container(encoder_cfg, resolve=True)
    opts.pop("name", None)
    extraction = {k: opts.pop(k) for k in _EXTRACTION_OPTIONS if k in opts}
    if spec.pretrained:
        # Grey images are replicated to RGB inside the encoder; its bound must know.
        opts["source_channels"] = int(data.test.batch([0]).shape[1])
    if opts.get("lipschitz") == "spectral":
        # The bound covers the resize from the data's native size: it needs that size.
        opts["source_size"] = tuple(data.test.batch([0]).shape[-2:])
        opts["device"] = device
    # lipschitz and cnn train their own weights and keep them in this cache (None: retrain).
    trained_weights = {"cache_dir": cache_dir, "force": force} if spec.trained else {}
    encoder = spec.build(**opts, **trained_weights)
    # Learns from train only (PCA from the inputs, lipschitz from inputs and labels).
    encoder.fit(data.train.inputs, data.train.labels)
    weights = opts.get("weights")
    material = {
        "dataset": data.name,
        "encoder": {"name": name, **{k: v for k, v in opts.items() if k != "device"}},
        "weights_source": getattr(encoder, "weights_source", None),
        "weights_sha256": file_digest(weights) if weights and Path(weights).is_file() else None,
    }
    latents, hits = {}, {}
    for split_name in ("train", "test"):
        split = getattr(data, split_name)

        def compute(split=split, split_name=split_name):
            z = extract_features(
                encoder, split.inputs, device=device, desc=f"encode {split_name}", **extraction
            )
            return z, split.labels

        (z, labels), hits[split_name] = cached(
            # Both splits' digests: a learned encoder (PCA) depends on the train split too.
            {**material, "split": split_name, "data": data_digests},
            compute,
            cache_dir=cache_dir,
            force=force,
        )
        if not np.array_equal(labels, split.labels):
            raise ValueError(f"cached labels for the {split_name} split do not match the data")
        latents[split_name] = z
    return Encoded(encoder, latents["train"], latents["test"], hits, spec)
