"""Content-addressed cache of weights an encoder trains itself.

An entry ``<cache_dir>/<stage>/<key>/`` holds ``weights.pt`` (a state dict of tensors) and
``meta.json`` (the key, what it was computed from, the weight file's SHA-256). ``key`` is the
SHA-256 of everything that determines the weights: the training inputs and labels (their
bytes, dtype and shape), every option of the encoder and ``WEIGHTS_VERSION`` (raise it when a
change to the training code changes what the same options produce). An entry is written to a
temporary folder and renamed into place, so a reader never sees half of one; before use its
digest is checked (both by :func:`gmcert.io.store_entry` / :func:`gmcert.io.check_entry`, as
for the feature cache) and it is read with ``torch.load(weights_only=True)`` (tensors only, no
pickled code), and an entry that fails either is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

import torch

from gmcert.io import array_digest, check_entry, store_entry

log = logging.getLogger(__name__)

WEIGHTS_VERSION = 2  # 2: meta.json records a digest per file, as the feature cache does
_WEIGHTS = "weights.pt"


def weights_key(train_inputs, train_labels, options: dict) -> str:
    """The entry's key: training data, every encoder option, ``WEIGHTS_VERSION``."""
    material = {
        "version": WEIGHTS_VERSION,
        "train_inputs": array_digest(train_inputs),
        "train_labels": array_digest(train_labels),
        "options": options,
    }
    blob = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def load_weights(cache_dir, stage: str, key: str) -> dict[str, torch.Tensor] | None:
    """The state dict stored under ``key``, or None when there is no usable entry (missing,
    wrong key, digest mismatch, unreadable: the last three are logged)."""
    entry = Path(cache_dir) / stage / key
    if not entry.exists():
        return None
    try:
        check_entry(entry, key, (_WEIGHTS,))
        state = torch.load(entry / _WEIGHTS, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{_WEIGHTS} is not a state dict")
        return state
    # UnpicklingError: weights_only refused something other than tensors and containers.
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        log.warning("weight cache entry %s is unusable (%s); retraining", entry, err)
        return None


def load_cached(network: torch.nn.Module, cache_dir, stage: str, key: str, *, force: bool) -> bool:
    """Load the weights cached under ``key`` into ``network``; False (train it) when there is
    no cache, ``force`` is set, the entry is unusable, or its weights do not fit the network."""
    if cache_dir is None or force:
        return False
    state = load_weights(cache_dir, stage, key)
    if state is None:
        return False
    try:
        network.load_state_dict(state)
    except RuntimeError as err:  # a version bump was forgotten: train afresh
        log.warning("cached weights do not fit this network (%s); retraining", err)
        return False
    log.info("%s encoder: weights from the cache (%s)", stage, key)
    return True


def store_weights(
    cache_dir, stage: str, key: str, state: dict[str, torch.Tensor], material: dict
) -> Path | None:
    """Write ``state`` under ``key`` atomically; returns the entry's folder, or None when the
    cache cannot be written (read-only, full): that costs a retraining next time, never this
    run."""
    entry = Path(cache_dir) / stage / key
    weights = {name: t.detach().cpu() for name, t in state.items()}
    try:
        store_entry(
            entry,
            key,
            lambda folder: torch.save(weights, folder / _WEIGHTS),
            {"version": WEIGHTS_VERSION, "material": material},
        )
    except OSError as err:
        log.warning(
            "cannot store trained weights in the cache at %s (%s); set paths.cache_dir to a "
            "writable folder",
            entry.parent,
            err.strerror or err,
        )
        return None
    return entry
