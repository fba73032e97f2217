"""Seconds and peak memory of every stage of whole runs, on real data where it is installed.

Runs each case in this process (one job of an experiment, outputs in a temporary folder, the
feature and weight caches of ``paths.cache_dir`` used as in any run) and writes
outputs/bench/stages.json: per case the stage seconds and peak resident memory from the run's
metrics.json (every stage of STAGES, null where the case does not run it), the total, and
whether any stage after certify took longer than certify itself (issue 21: none should on the
closed-form experiment, fashion_mnist). The same figures are drawn in outputs/bench/stages.png.
The divergence stage is eps (with its null calibration) and the degraded bound.

Targets (issue 17): experiment=fashion_mnist (both jobs) within 5 minutes on 2 cores,
fashion_mnist_lipschitz within 15 including training. Cases whose data is absent are listed as
skipped with the reason; digits always runs. Each case gets an empty cache folder, so the
trained encoders' figures include their training and no case reads another's features.

    python scripts/bench_stages.py                # digits and fashion_mnist (make bench)
    python scripts/bench_stages.py fashion_mnist_lipschitz fashion_mnist_cnn   # ~20 minutes
"""

from __future__ import annotations

import argparse
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
STAGES = ("data", "encode", "fit", "reuse", "heads", "certify", "attack", "evaluate", "divergence")
AFTER_CERTIFY = ("attack", "evaluate", "divergence")
OUT = ROOT / "outputs" / "bench"


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
    unknown = sorted(set(seconds) - set(STAGES))  # a stage added to the pipeline later
    row = {
        "case": name,
        "overrides": overrides,
        "total_seconds": total,
        "stage_seconds": {k: seconds.get(k) for k in (*STAGES, *unknown)},
        "stage_peak_memory_gib": {
            k: memory[k] / 2**30 if k in memory else None for k in (*STAGES, *unknown)
        },
        "stages_not_run": [k for k in STAGES if k not in seconds],
        "stages_after_certify_slower_than_certify": slower,
        "no_stage_after_certify_slower": not slower,
        "cache_hits": metrics.get("cache_hits"),
    }
    print(
        f"{name}: {total:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s/{memory.get(k, 0) / 2**30:.2f} GiB" for k, v in seconds.items())
        + ")"
        + (f"; SLOWER THAN CERTIFY: {slower}" if slower else "; none after certify slower")
    )
    return row


def draw(cases: list[dict], path: Path) -> None:
    """Seconds and peak memory per stage, one bar group per case (skipped cases left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ran = [c for c in cases if "stage_seconds" in c]
    if not ran:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 + 0.45 * len(STAGES) * len(ran) ** 0.5))
    height = 0.8 / len(ran)
    where = np.arange(len(STAGES))
    for i, case in enumerate(ran):
        for ax, key in zip(axes, ("stage_seconds", "stage_peak_memory_gib"), strict=True):
            values = [case[key].get(stage) or 0.0 for stage in STAGES]
            ax.barh(where + i * height, values, height, label=case["case"])
    for ax, label in zip(axes, ("wall seconds (log)", "peak resident memory, GiB"), strict=True):
        ax.set_yticks(where + 0.4 - height / 2, STAGES)
        ax.invert_yaxis()
        ax.set_xlabel(label)
    axes[0].set_xscale("log")
    axes[1].legend(fontsize=8)
    fig.suptitle("Stages of one run (scripts/bench_stages.py); not run: no bar")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.png")
    fig.savefig(partial, dpi=110)
    plt.close(fig)
    partial.replace(path)  # atomic: a reader never sees half a figure


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", help=f"default: {' '.join(DEFAULT)}")
    parser.add_argument("--out", type=Path, default=OUT / "stages.json", help="JSON report")
    args = parser.parse_args(argv)
    names = args.cases
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
        args.out,
        cases,
        definition="wall seconds and peak resident memory per stage of one whole run",
        target=None,
        load_before=load_before,
    )
    draw(cases, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main(sys.argv[1:])
