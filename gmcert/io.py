"""Crash-safe output files: atomic whole-file writes and an append-only predictions log.

A whole file (table, metrics, plot) is written to a temporary name in the same folder and
renamed over the target, so a killed run leaves either the old file or the new one. The
predictions log is appended one flushed, fsynced block of complete lines at a time; a torn
last line (SIGKILL mid-write) is cut off when the log is reopened, and the run resumes from
the rows that are complete. The run's fingerprint keeps a folder to one configuration.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def array_digest(x) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    x = np.ascontiguousarray(np.asarray(x))
    h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    h.update(x.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------- verified cache entries
# A cache entry is a folder ``<key>/`` of files plus ``meta.json`` (the key, and the SHA-256 of
# each file). It is written whole into a temporary folder beside it and renamed into place, so
# a reader never sees half of one, and its digests are checked before every use.


def store_entry(entry: Path, key: str, write: Callable[[Path], None], meta: dict) -> None:
    """Write an entry: ``write(folder)`` puts the files in; ``meta`` is stored with the key and
    their digests. Raises OSError (a read-only or full cache) and leaves nothing behind."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=entry.parent))
    try:
        write(tmp)
        digests = {p.name: file_digest(p) for p in sorted(tmp.iterdir())}
        (tmp / "meta.json").write_text(
            json.dumps({"key": key, **meta, "sha256": digests}, indent=2, default=str)
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if entry.exists():  # an unusable entry being rebuilt
        shutil.rmtree(entry, ignore_errors=True)
    try:
        os.replace(tmp, entry)
    except OSError:  # another job stored the same entry first: it is as good
        shutil.rmtree(tmp, ignore_errors=True)


def check_entry(entry: Path, key: str, names: tuple[str, ...]) -> None:
    """ValueError (or OSError) unless ``entry`` holds ``names`` with the digests its meta.json
    records under ``key``; malformed metadata (a list, a string, missing fields) included."""
    meta = json.loads((entry / "meta.json").read_text())
    if not isinstance(meta, dict) or meta.get("key") != key:
        raise ValueError("key mismatch")
    digests = meta.get("sha256")
    for name in names:
        if not isinstance(digests, dict) or file_digest(entry / name) != digests.get(name):
            raise ValueError(f"{name} digest mismatch")


def _json_safe(obj):
    """NaN and inf are not JSON: write them as null and the string "inf"."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def write_json(path, obj) -> Path:
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=False)
    return atomic_write(path, lambda p: p.write_text(text + "\n"))


def write_csv(path, frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda p: frame.to_csv(p, index=False))


class PredictionLog:
    """``predictions.csv``: one row per (method, test point), appended as certification goes.

    Reopening an existing log keeps its complete rows, so ``done(method)`` tells a restarted
    run which points to skip; the header must match, or the folder belongs to another run.
    """

    COLUMNS = [
        "method",
        "index",
        "label",
        "predict",
        "radius_latent",
        "radius_input",
        "correct",
        "seconds",
    ]

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists():
            self._cut_torn_tail()
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append_text(",".join(self.COLUMNS) + "\n")
        else:
            with open(self.path) as f:
                header = f.readline().strip().split(",")
            if header != self.COLUMNS:
                raise ValueError(
                    f"{self.path} has columns {header}, not {self.COLUMNS}: it was written by "
                    "another gmcert version; start in a fresh folder (a new hydra.run.dir)"
                )

    def _cut_torn_tail(self) -> None:
        """Cut what a crash can leave after the last complete row: a torn line, or a block of
        NUL bytes (the file's size reached the disk before its data did)."""
        data = self.path.read_bytes()
        nul = data.find(b"\0")
        end = len(data) if nul < 0 else nul
        keep = data.rfind(b"\n", 0, end) + 1
        if nul >= 0:
            log.warning(
                "%s holds NUL bytes from byte %d (a crash before the disk caught up); cutting "
                "it after its last complete row before them, and certifying the rest again",
                self.path,
                nul,
            )
        if keep != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def _append_text(self, text: str) -> None:
        with open(self.path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> pd.DataFrame:
        try:
            frame = pd.read_csv(self.path)
            frame["index"] = frame["index"].astype(np.int64)  # a damaged row fails here
            if frame["method"].isna().any():
                raise ValueError("a row without a method")
        except (ValueError, KeyError, TypeError) as err:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
            raise ValueError(
                f"{self.path} is damaged ({reason}); delete its damaged rows (or the file, to "
                "certify everything again) and run the same command"
            ) from None
        return frame

    def done(self, method: str) -> set[int]:
        frame = self.read()
        return set(frame.loc[frame["method"] == method, "index"].astype(int))

    def append(self, rows: pd.DataFrame) -> None:
        if rows.empty:
            return
        buffer = io.StringIO()
        rows[self.COLUMNS].to_csv(buffer, index=False, header=False)
        self._append_text(buffer.getvalue())

    def append_lines(self, lines: list[str]) -> None:
        """Complete rows as written by another log (copied byte for byte), in one block."""
        if lines:
            self._append_text("".join(lines))


def run_fingerprint(cfg: DictConfig, data_digests: dict) -> str:
    """A digest of everything that determines the predictions: the config and the data's
    content (``data_digests``); paths (where the data and outputs live) and the index range a
    job certifies are left out, so a split run's parts share it."""
    keep = OmegaConf.to_container(cfg, resolve=False)
    keep.pop("paths", None)
    keep.get("dataset", {}).pop("root", None)
    for key in ("start", "stop", "shard", "shards"):
        keep.get("certify", {}).pop(key, None)
    keep["data_digests"] = data_digests
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def write_run_config(out_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/config.yaml`` (and, under Hydra, ``overrides.yaml`` and ``hydra.yaml``): the
    configuration the folder's results belong to. gmcert writes them itself, once the folder
    has been accepted for this configuration (Hydra's own copy is switched off in
    configs/hydra/default.yaml), so a refused resume never relabels old results."""
    from hydra.core.hydra_config import HydraConfig

    folder = Path(out_dir) / ".hydra"
    files = {"config.yaml": cfg}
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        files["overrides.yaml"] = OmegaConf.create(list(hydra_cfg.overrides.task))
        files["hydra.yaml"] = OmegaConf.create({"hydra": hydra_cfg})
    for name, node in files.items():
        text = OmegaConf.to_yaml(node)
        atomic_write(folder / name, lambda p, text=text: p.write_text(text))


def lock_run_folder(out_dir: Path):
    """An exclusive lock on the run folder, held while the returned file stays open (use it in
    a ``with`` block; the operating system drops it when the process ends, however it ends)."""
    handle = open(out_dir / ".gmcert.lock", "a+")  # held open for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ValueError(
            f"{out_dir} is in use by another gmcert run; wait for it to finish, or choose "
            "another hydra.run.dir"
        ) from None
    return handle


def open_prediction_log(out_dir: Path, fingerprint: str, prediction_key: str) -> PredictionLog:
    """The run's prediction log (the caller holds the folder's lock); a folder holding another
    configuration's results is refused. ``prediction_key.txt`` records what the predictions
    depend on (:mod:`gmcert.certify.reuse`), for a later re-evaluation of the folder."""
    stamp, key_file = out_dir / "run_fingerprint.txt", out_dir / "prediction_key.txt"
    if stamp.exists() and stamp.read_text().strip() != fingerprint:
        same_predictions = key_file.exists() and key_file.read_text().strip() == prediction_key
        raise ValueError(
            f"{out_dir} holds the results of a different configuration"
            + (
                " (only its evaluation options differ: `gmcert-reevaluate "
                f"{out_dir} <overrides>` evaluates its predictions again, beside it)"
                if same_predictions
                else ""
            )
            + "; resume only with the same config, or choose a fresh hydra.run.dir"
        )
    stamp.write_text(fingerprint + "\n")
    key_file.write_text(prediction_key + "\n")
    return PredictionLog(out_dir / "predictions.csv")
