"""The certify stage: which test points this job certifies, and certifying those not yet in
the run's prediction log, one chunk at a time, so that an interrupted run resumes."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from gmcert.certify.methods import CertificationMethod
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


def certify_pending(
    methods: list[CertificationMethod],
    predictions: PredictionLog,
    positions,
    test: Split,
    *,
    smoothing_skip: int = 1,
) -> None:
    """Certify, with each method, its positions (:func:`method_positions`) not yet in the
    log; each chunk is appended as soon as it is done."""
    for method in methods:
        mine = method_positions(method, positions, test, smoothing_skip)
        done = predictions.done(method.name)
        todo = np.array([p for p in mine if int(test.indices[p]) not in done], dtype=int)
        if len(todo) < len(mine):
            log.info(
                "%s: resuming, %d of %d points already certified",
                method.name,
                len(mine) - len(todo),
                len(mine),
            )
        chunk = method.chunk_size
        for start in tqdm(
            range(0, len(todo), chunk),
            desc=f"certify {method.name}",
            unit="chunk",
            leave=False,
            disable=len(todo) <= chunk,
        ):
            rows = todo[start : start + chunk]
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
