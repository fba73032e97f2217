"""The certify stage: which test points this job certifies, the rows it can reuse (from the
folder named by ``certify.predictions_from`` and the prediction cache), and certifying the
rest, one chunk at a time, so that an interrupted run resumes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from gmcert.certify.methods import CertificationMethod
from gmcert.certify.reuse import (
    PredictionCache,
    copy_rows,
    option_changes,
    prediction_options,
    read_rows,
)
from gmcert.data import Split
from gmcert.io import PredictionLog

log = logging.getLogger(__name__)


def certify_positions(num_test: int, options) -> np.ndarray:
    """The test positions this job certifies: [start, stop), then its shard of that range."""
    stop = num_test if options.stop is None else min(options.stop, num_test)
    positions = np.array_split(np.arange(options.start, stop), options.shards)[options.shard]
    if len(positions) == 0:
        raise ValueError(
            f"no test points to certify: start={options.start}, stop={options.stop}, "
            f"shard {options.shard} of {options.shards}, with {num_test} test points"
        )
    return positions


def method_positions(method: CertificationMethod, positions, test: Split, smoothing_skip: int):
    """The positions ``method`` certifies: all of them, or for randomized smoothing (which
    costs n forward passes a point) those whose dataset index is a multiple of
    ``smoothing_skip``: the literature's subset protocol (Cohen et al. certify every 20th
    CIFAR-10 image). Chosen by dataset index, so shards and resumed runs agree."""
    positions = np.asarray(positions)
    if method.smoothing is None or smoothing_skip == 1:
        return positions
    return positions[test.indices[positions] % smoothing_skip == 0]


def reuse_predictions(
    methods: list[CertificationMethod],
    predictions: PredictionLog,
    positions,
    test: Split,
    *,
    key: str,
    source=None,
    cache: PredictionCache | None = None,
    smoothing_skip: int = 1,
) -> int:
    """Copy into the log the rows for this job's points that ``source`` (a run folder that
    :func:`check_prediction_source` accepted before any stage ran, and that must hold
    predictions of this ``key``) or else the verified ``cache`` entry holds; returns how many
    rows were copied."""
    wanted = {
        m.name: test.indices[method_positions(m, positions, test, smoothing_skip)] for m in methods
    }
    labels = dict(zip(test.indices.tolist(), test.labels.tolist(), strict=True))
    copied = 0
    if source is not None:
        log_file = _checked_source(Path(source), key)
        copied += copy_rows(log_file, read_rows(log_file), predictions, wanted, labels)
    cached = cache.rows() if cache is not None else None
    if cached is not None:
        try:
            copied += copy_rows(cache.entry, cached, predictions, wanted, labels)
        except ValueError as err:  # verified, yet not for these data: never trusted
            log.warning("prediction cache entry %s not used: %s", cache.entry, err)
    if copied:
        log.info("reused %d certified predictions; certifying only the rest", copied)
    return copied


def check_prediction_source(folder, options: dict) -> None:
    """Before any stage runs: ``folder`` (``certify.predictions_from``) must be a run folder
    whose saved prediction options equal this run's ``options``
    (:func:`~gmcert.certify.reuse.prediction_options`). The data and latents are checked at
    the certify stage, against the folder's prediction key."""
    folder = Path(folder)
    if not (folder / "predictions.csv").is_file() or not (folder / "prediction_key.txt").is_file():
        raise ValueError(
            f"certify.predictions_from={folder}: not a run folder with predictions.csv and "
            "prediction_key.txt (folders written before gmcert recorded the key must be run again)"
        )
    try:
        saved = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        changes = option_changes(prediction_options(saved), options)
    except (OSError, yaml.YAMLError, AttributeError, TypeError) as err:
        raise ValueError(
            f"certify.predictions_from={folder}: its .hydra/config.yaml cannot be read ({err})"
        ) from None
    if changes:
        raise ValueError(
            f"certify.predictions_from={folder}: these options change its predictions: "
            f"{'; '.join(changes)}. Re-evaluation changes evaluation options only "
            "(certify.radii, ci_alpha, population_samples, divergence.*, attack.*); run "
            "gmcert-run for the others"
        )


def _checked_source(folder: Path, key: str) -> Path:
    """``folder``'s prediction log, if its predictions were made under ``key``."""
    if (folder / "prediction_key.txt").read_text().strip() != key:
        raise ValueError(
            f"certify.predictions_from={folder}: its predictions were certified under the same "
            "options but other data, latents, weight files or device; run gmcert-run instead"
        )
    return folder / "predictions.csv"


def pending_positions(
    methods: list[CertificationMethod],
    predictions: PredictionLog,
    positions,
    test: Split,
    *,
    smoothing_skip: int = 1,
) -> dict[str, np.ndarray]:
    """Per method, its positions (:func:`method_positions`) not yet in the log."""
    pending = {}
    for method in methods:
        mine = method_positions(method, positions, test, smoothing_skip)
        done = predictions.done(method.name)
        pending[method.name] = np.array(
            [p for p in mine if int(test.indices[p]) not in done], dtype=int
        )
        if 0 < len(mine) - len(pending[method.name]):
            log.info(
                "%s: %d of %d points already certified",
                method.name,
                len(mine) - len(pending[method.name]),
                len(mine),
            )
    return pending


def certify_pending(
    methods: list[CertificationMethod],
    predictions: PredictionLog,
    pending: dict[str, np.ndarray],
    test: Split,
) -> int:
    """Certify, with each method, its ``pending`` positions (:func:`pending_positions`),
    appending each chunk to the log as soon as it is done. Returns how many points it
    certified."""
    certified = 0
    for method in methods:
        todo = pending[method.name]
        chunk = method.chunk_size
        for start in tqdm(
            range(0, len(todo), chunk),
            desc=f"certify {method.name}",
            unit="chunk",
            leave=False,
            disable=len(todo) <= chunk,
        ):
            rows = todo[start : start + chunk]
            certified += len(rows)
            t0 = time.perf_counter()
            result = method.certify(rows)
            seconds = (time.perf_counter() - t0) / len(rows)
            labels = test.labels[rows]
            predictions.append(
                pd.DataFrame(
                    {
                        "method": method.name,
                        "index": test.indices[rows],
                        "label": labels,
                        "predict": result.predict,
                        "radius_latent": result.radius_latent,
                        "radius_input": result.radius_input,
                        "correct": result.predict == labels,
                        "seconds": seconds,
                    }
                )
            )
    return certified
