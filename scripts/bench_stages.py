"""Seconds and peak memory of every stage of whole runs, on real data where it is installed.

Runs each case in this process (one job of an experiment, outputs in a temporary folder, the
feature and weight caches of ``paths.cache_dir`` used as in any run) and writes
outputs/bench/stages.json: per case the stage seconds and peak resident memory from the run's
metrics.json, the total, and whether any stage after certify took longer than certify itself.

Targets (issue 17): experiment=fashion_mnist (both jobs) within 5 minutes on 2 cores,
fashion_mnist_lipschitz within 15 including training. Cases whose data is absent are listed as
skipped with the reason; digits always runs. Each case gets an empty cache folder, so the
trained encoders' figures include their training and no case reads another's features.

    python scripts/bench_stages.py                # digits and fashion_mnist (make bench)
    python scripts/bench_stages.py fashion_mnist_lipschitz fashion_mnist_cnn   # ~20 minutes
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from timing import write_report

from gmcert.config import register_configs
from gmcert.pipeline import run
from gmcert.preflight import check_inputs_present

ROOT = Path(__file__).resolve().parents[1]
FASHION = "Fashion-MNIST (apt-get install dataset-fashion-mnist)"
CASES = {
    "digits": (["experiment=digits"], None),
    "fashion_mnist/identity": (["experiment=fashion_mnist", "encoder=identity"], FASHION),
    "fashion_mnist/pca": (["experiment=fashion_mnist", "encoder=pca"], FASHION),
    "fashion_mnist_lipschitz": (["experiment=fashion_mnist_lipschitz"], FASHION),
    "fashion_mnist_cnn": (["experiment=fashion_mnist_cnn"], FASHION),
}
DEFAULT = ("digits", "fashion_mnist/identity", "fashion_mnist/pca")
AFTER_CERTIFY = ("attack", "evaluate", "divergence")


def config(overrides: list[str], out_dir: Path, cache_dir: Path | None = None):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.root_dir = str(ROOT)
            cfg.paths.output_dir = str(out_dir)
            if cache_dir is not None:
                cfg.paths.cache_dir = str(cache_dir)
            del cfg.hydra
    return cfg


def data_missing(overrides: list[str]) -> str | None:
    """Why the case cannot run here, or None."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(overrides, Path(tmp))
        try:
            check_inputs_present(cfg)
        except FileNotFoundError as err:
            return str(err).splitlines()[0]
    return None


def bench(name: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(overrides, Path(tmp) / "run", Path(tmp) / "cache")
        start = time.perf_counter()
        metrics = run(cfg)
        total = time.perf_counter() - start
    seconds = metrics["stage_seconds"]
    memory = metrics.get("stage_peak_memory_bytes") or {}
    certify = seconds.get("certify", 0.0)
    slower = [s for s in AFTER_CERTIFY if seconds.get(s, 0.0) > certify]
    row = {
        "case": name,
        "overrides": overrides,
        "total_seconds": total,
        "stage_seconds": seconds,
        "stage_peak_memory_gib": {k: v / 2**30 for k, v in memory.items()},
        "stages_after_certify_slower_than_certify": slower,
        "cache_hits": metrics.get("cache_hits"),
    }
    print(
        f"{name}: {total:.1f} s ("
        + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
        + ")"
        + (f"; slower than certify: {slower}" if slower else "")
    )
    return row


def main(names: list[str]) -> None:
    unknown = set(names) - set(CASES)
    if unknown:
        sys.exit(f"unknown case(s) {sorted(unknown)}; choose from {sorted(CASES)}")
    register_configs()
    load_before = os.getloadavg()
    cases = []
    for name in names or DEFAULT:
        overrides, needs = CASES[name]
        reason = data_missing(overrides) if needs else None
        if reason:
            print(f"{name}: skipped, {needs} is not installed ({reason})")
            cases.append({"case": name, "skipped": f"{needs}: {reason}"})
            continue
        cases.append(bench(name, overrides))
    write_report(
        ROOT / "outputs" / "bench" / "stages.json",
        cases,
        definition="wall seconds and peak resident memory per stage of one whole run",
        target=None,
        load_before=load_before,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
