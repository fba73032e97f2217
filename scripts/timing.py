"""Shared by the benchmark scripts: the median wall time of a callable after one warm-up."""

from __future__ import annotations

import time

import numpy as np


def median_seconds(fn, repeats: int = 7) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
