"""Shared by the benchmark scripts: the median wall time of a callable after one warm-up, and
side-by-side timings of several callables, interleaved so that drifting load hits them alike."""

from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone

import numpy as np
import torch


def median_seconds(fn, repeats: int = 7) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def timed(fn, device: torch.device) -> tuple[float, float]:
    """Wall seconds and CPU seconds of this process (all threads) for one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(runs: dict, repeats: int, device: torch.device) -> tuple[dict, dict]:
    """(wall, cpu): per name of ``runs``, the seconds of each of ``repeats`` calls, after one
    warm-up call each; the order alternates every round to cancel drift in the machine's load."""
    for fn in runs.values():  # warm-up: allocator, kernels, caches
        fn()
    wall = {key: [] for key in runs}
    cpu = {key: [] for key in runs}
    for r in range(repeats):
        for key in list(runs) if r % 2 == 0 else list(reversed(runs)):
            seconds, cpu_seconds = timed(runs[key], device)
            wall[key].append(seconds)
            cpu[key].append(cpu_seconds)
    return wall, cpu


def bare_and_smoothing(base, smoothed, x, inputs, batches: int) -> dict:
    """The two runs every smoothing benchmark compares: ``batches`` bare forward passes of
    ``base`` on ``inputs``, and smoothing drawing the same number of noisy copies of ``x``."""
    samples = len(inputs) * batches

    @torch.inference_mode()
    def bare():
        for _ in range(batches):
            base(inputs)

    def smoothing():
        smoothed.sample_counts(x, samples, seeds=[0])

    return {"bare": bare, "smoothing": smoothing}


def write_report(out, cases: list, *, definition: str, target: float, load_before) -> dict:
    """The benchmark's figures with the machine they were measured on, written atomically."""
    from gmcert.io import write_json

    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "definition": definition,
        "target_overhead": target,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]],
        "cases": cases,
    }
    write_json(out, report)
    print(f"wrote {out}")
    return report
