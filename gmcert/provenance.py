"""Where a result came from: package versions, the git commit, the device, stage timings."""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    """This process's peak resident memory since the last reset (VmHWM), None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class StageTimer:
    """``with timer("fit"): ...`` adds the block's wall time to ``seconds["fit"]`` and records
    the process's peak resident memory during the block in ``peak_memory_bytes["fit"]`` (where
    the kernel lets the mark be reset; else the peak since the process started)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_memory_bytes: dict[str, int] = {}

    @contextmanager
    def __call__(self, stage: str):
        _reset_peak_rss()
        start = time.perf_counter()
        log.info("stage %s ...", stage)
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        peak = _peak_rss_bytes()
        if peak is not None:
            self.peak_memory_bytes[stage] = max(peak, self.peak_memory_bytes.get(stage, 0))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def versions() -> dict:
    import hydra
    import scipy
    import sklearn
    import torchvision

    import gmcert

    return {
        "gmcert": gmcert.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "pandas": pd.__version__,
        "hydra": hydra.__version__,
    }


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: torch.device, timer: StageTimer) -> dict:
    """The metrics.json entries that say how and where the run was made."""
    return {
        "stage_seconds": timer.seconds,
        "stage_peak_memory_bytes": timer.peak_memory_bytes,
        "device": device_name(device),
        "versions": versions(),
        "git_commit": git_commit(),
    }
