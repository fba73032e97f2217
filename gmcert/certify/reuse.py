"""Certified predictions reused across runs, so that a sweep over evaluation options (radii,
``ci_alpha``, eps, the attack) certifies once and every other job only evaluates.

A prediction is fixed by the prediction key (:func:`prediction_key`): the latents and the
data, the weight files, and every option except those that only evaluate predictions
(:data:`EVALUATION_ONLY`). Two places can hold rows for a key:

- the prediction cache, ``<cache_dir>/predictions/<key>/predictions.csv``: a verified entry
  (:func:`gmcert.io.store_entry`), filled by every run and used by every later one;
- a run folder named by ``certify.predictions_from`` (what ``gmcert-reevaluate`` sets): its
  ``prediction_key.txt`` must equal this run's key, or the run is refused.

Rows are copied byte for byte into the run's own prediction log, so a run that reused them
writes the same tables as one that certified them itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from gmcert.io import PredictionLog, array_digest, check_entry, file_digest, store_entry

log = logging.getLogger(__name__)

PREDICTION_KEY_VERSION = 1
# Top-level groups and certify options that never change a prediction: what a job certifies
# (start / stop / shards / the smoothing subset: rows are per point, so any subset is served),
# where files live, and everything computed from the predictions afterwards. Any option not
# named here, including one added later, is part of the key.
EVALUATION_ONLY = ("paths", "divergence", "attack", "cache", "task_name", "continue_on_error")
EVALUATION_ONLY_CERTIFY = (
    "radii",
    "ci_alpha",
    "population_samples",
    "start",
    "stop",
    "shard",
    "shards",
    "smoothing_skip",
    "predictions_from",
)
ENTRY_FILE = "predictions.csv"


def prediction_options(cfg) -> dict:
    """The options that determine a prediction, as a plain (unresolved) dict."""
    options = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    options = {k: v for k, v in options.items() if k not in (*EVALUATION_ONLY, "hydra")}
    options["dataset"] = {k: v for k, v in options.get("dataset", {}).items() if k != "root"}
    certify = options.get("certify", {})
    options["certify"] = {k: v for k, v in certify.items() if k not in EVALUATION_ONLY_CERTIFY}
    return options


def _path_digest(path) -> str | None:
    """SHA-256 of a weight file, or of every file in a weight folder; None for no path."""
    if not path:
        return None
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        h = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{file.relative_to(path)}:{file_digest(file)}\n".encode())
        return h.hexdigest()
    return None


def prediction_key(cfg, *, data_digests: dict, train_latents, test_latents, device) -> str:
    """A digest of everything that determines the certified predictions: the options
    (:func:`prediction_options`), the data and latents themselves (so an encoder's weights are
    covered by what they produce), the weight files' content, and the device type (CUDA and
    CPU arithmetic may differ in the last bits)."""
    material = {
        "version": PREDICTION_KEY_VERSION,
        "options": prediction_options(cfg),
        # Resolved: interpolated paths name the files whose content is digested below.
        "weights": {
            group: _path_digest(OmegaConf.select(cfg, f"{group}.weights"))
            for group in ("encoder", "denoiser")
        },
        "data": data_digests,
        "latents": [array_digest(train_latents), array_digest(test_latents)],
        "device": str(getattr(device, "type", device)),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def option_changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """The dotted names of the prediction options that differ between two configs."""
    changed = []
    for key in sorted(set(before) | set(after), key=str):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += option_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changed


def read_rows(csv: Path) -> list[tuple[str, int, str, str]]:
    """(method, index, label, line) for every row of a prediction log; ValueError where the
    file is not one (its header differs, or a row does not parse)."""
    lines = csv.read_text().splitlines(keepends=True)
    if not lines or lines[0].strip().split(",") != PredictionLog.COLUMNS:
        raise ValueError(f"{csv} is not a gmcert prediction log (its header differs)")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != len(PredictionLog.COLUMNS) or not line.endswith("\n"):
            raise ValueError(f"{csv} line {number} is not a complete prediction row")
        try:
            rows.append((fields[0], int(fields[1]), fields[2], line))
        except ValueError:
            raise ValueError(f"{csv} line {number}: index {fields[1]!r} is not a number") from None
    return rows


def copy_rows(source, rows, log_: PredictionLog, wanted: dict[str, np.ndarray], labels) -> int:
    """Append to ``log_`` the ``rows`` (:func:`read_rows` of ``source``, named in errors) for
    ``wanted`` (method -> dataset indices) that it lacks, in the order a run certifies them
    (method by method, point by point); returns how many. ``labels``: dataset index -> label,
    checked against each row copied, so a log of other data is never taken for this one."""
    found = {}
    for method, index, label, line in rows:
        if method in wanted:
            found.setdefault((method, index), (label, line))
    lines = []
    for method, indices in wanted.items():
        done = log_.done(method)
        for index in map(int, indices):
            if index in done or (method, index) not in found:
                continue
            label, line = found[(method, index)]
            if index not in labels or str(labels[index]) != label:
                raise ValueError(
                    f"{source}: point {index} has label {label}, the data {labels.get(index)}"
                )
            lines.append(line)
    log_.append_lines(lines)
    return len(lines)


class PredictionCache:
    """The verified cache entry of one prediction key (``None`` dir: no cache)."""

    def __init__(self, cache_dir, key: str):
        self.key = key
        self.entry = Path(cache_dir) / "predictions" / key

    def rows(self) -> list[tuple[str, int, str, str]] | None:
        """The entry's rows (:func:`read_rows`), or None where there is none or it fails
        verification (logged)."""
        if not (self.entry / "meta.json").exists():
            return None
        try:
            check_entry(self.entry, self.key, (ENTRY_FILE,))
            return read_rows(self.entry / ENTRY_FILE)
        except (OSError, ValueError, TypeError) as err:
            log.warning("prediction cache entry %s is unusable (%s); certifying", self.entry, err)
            return None

    def store(self, log_path: Path, *, force: bool = False) -> None:
        """Add the rows of ``log_path`` that the entry lacks (``force``: its rows replace the
        entry's). A read-only or full cache is logged, never fatal: the run's own log holds
        every row. The entry is read again here: another job may have added to it since."""
        own = {(method, index): line for method, index, _, line in read_rows(log_path)}
        rows = {(method, index): line for method, index, _, line in self.rows() or []}
        if not force and own.keys() <= rows.keys():
            return  # nothing new
        rows = {**rows, **own} if force else {**own, **rows}  # the kept row first
        text = ",".join(PredictionLog.COLUMNS) + "\n" + "".join(rows.values())
        try:
            store_entry(
                self.entry,
                self.key,
                lambda folder: (folder / ENTRY_FILE).write_text(text),
                {"version": PREDICTION_KEY_VERSION, "rows": len(rows)},
            )
        except OSError as err:
            log.warning("could not store the predictions in the cache %s: %s", self.entry, err)
