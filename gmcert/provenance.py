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


class StageTimer:
    """``with timer("fit"): ...`` adds the block's wall time to ``seconds["fit"]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        log.info("stage %s ...", stage)
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


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
        "device": device_name(device),
        "versions": versions(),
        "git_commit": git_commit(),
    }
