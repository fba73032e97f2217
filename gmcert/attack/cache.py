"""The attack stage's results, cached by what determines them, so that a sweep over evaluation
options (eps, radii, ci_alpha) attacks once, as it certifies once.

An attack is fixed by the predictions it attacks (their prediction key,
:mod:`gmcert.certify.reuse`), the points of the job, the ``attack`` options and the seed; its
noise and restarts are all seeded from these. An entry ``<cache_dir>/attacks/<key>/`` holds
``radii.npz`` (each method's attack radius by dataset index, read without pickle) and
``results.json`` (the rest of each result: violations, flips, the smoothing account, seconds);
it is verified (:func:`gmcert.io.check_entry`) before use, and rebuilt when it fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from gmcert.attack.results import Attacked
from gmcert.attack.smoothing import SmoothedAttacked
from gmcert.io import array_digest, check_entry, store_entry

log = logging.getLogger(__name__)

ATTACK_CACHE_VERSION = 1
FILES = ("radii.npz", "results.json")
KINDS = {"certificate": Attacked, "smoothed": SmoothedAttacked}


def attack_key(prediction_key: str, options: dict, positions, smoothing_skip: int, seed: int):
    """A digest of what determines the attack stage's results."""
    material = {
        "version": ATTACK_CACHE_VERSION,
        "predictions": prediction_key,
        "attack": options,
        "positions": array_digest(np.asarray(positions, dtype=np.int64)),
        "smoothing_skip": smoothing_skip,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _plain(value):
    """numpy scalars and arrays as Python values; NaN and inf kept (JSON's NaN/Infinity)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store a {type(value).__name__} in the attack cache")


def _write(folder: Path, attacks: list[Attacked]) -> None:
    arrays, records = {}, []
    for number, attacked in enumerate(attacks):
        arrays[f"index_{number}"] = attacked.radius.index.to_numpy(dtype=np.int64)
        arrays[f"radius_{number}"] = attacked.radius.to_numpy(dtype=np.float64)
        fields = {f.name: getattr(attacked, f.name) for f in dataclasses.fields(attacked)}
        fields.pop("radius")
        kind = next(k for k, cls in KINDS.items() if type(attacked) is cls)
        records.append(
            {
                "kind": kind,
                "radius_name": attacked.radius.name,
                "index_name": attacked.radius.index.name,
                **fields,
            }
        )
    np.savez(folder / "radii.npz", **arrays)
    (folder / "results.json").write_text(json.dumps(records, default=_plain))


def _read(entry: Path) -> list[Attacked]:
    records = json.loads((entry / "results.json").read_text())
    attacks = []
    with np.load(entry / "radii.npz", allow_pickle=False) as arrays:
        for number, record in enumerate(records):
            cls = KINDS[record.pop("kind")]
            index = pd.Index(arrays[f"index_{number}"], name=record.pop("index_name"))
            radius = pd.Series(arrays[f"radius_{number}"], index=index)
            radius.name = record.pop("radius_name")
            attacks.append(cls(radius=radius, **record))
    return attacks


def cached_attacks(cache_dir, key: str, compute, *, force: bool = False) -> list[Attacked]:
    """The attack stage's results for ``key``: from a verified entry, or ``compute()`` and
    stored. ``cache_dir`` None: always computed, nothing stored."""
    if cache_dir is None:
        return compute()
    entry = Path(cache_dir) / "attacks" / key
    if not force and (entry / "meta.json").exists():
        try:
            check_entry(entry, key, FILES)
            attacks = _read(entry)
            log.info("attack results reused from the cache (%s)", entry)
            return attacks
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            log.warning("attack cache entry %s is unusable (%s); attacking", entry, err)
    attacks = compute()
    try:
        store_entry(
            entry,
            key,
            lambda folder: _write(folder, attacks),
            {"version": ATTACK_CACHE_VERSION},
        )
    except (OSError, TypeError, StopIteration) as err:  # StopIteration: an unknown result type
        log.warning("could not store the attack results in the cache %s: %s", entry, err)
    return attacks
