"""Sweeps: split certification merges exactly, bad jobs never sink a sweep or a report.

The multirun tests launch real sweeps (one process per job) and are slow; the merge and the
report are also checked in-process, on shards run by `run(...)` in one process.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import QUICK, compose_config, gmcert_run

from gmcert.pipeline import run
from gmcert.report.sweep import report

pytestmark = pytest.mark.e2e

FAST = [*QUICK, "certify.population_samples=2000"]


@pytest.fixture(scope="module")
def unsplit(tmp_path_factory):
    """One unsplit run, shared by the tests that compare against it or report on it."""
    cfg = compose_config(tmp_path_factory.mktemp("unsplit"), FAST)
    run(cfg)
    return cfg


def test_shards_run_in_process_merge_to_the_unsplit_table(tmp_path, unsplit):
    for shard in range(3):
        cfg = compose_config(tmp_path, [*FAST, "certify.shards=3", f"certify.shard={shard}"])
        cfg.paths.output_dir = str(tmp_path / "split" / str(shard))
        metrics = run(cfg)
        assert metrics["certified_points"] == 120
    parts = [pd.read_csv(tmp_path / "split" / str(i) / "predictions.csv") for i in range(3)]
    indices = [set(p["index"]) for p in parts]
    assert sum(map(len, indices)) == 360 and len(set.union(*indices)) == 360
    table = pd.read_csv(f"{unsplit.paths.output_dir}/certified_accuracy.csv")
    merged = report([tmp_path / "split"], tmp_path / "report")["combined"]
    assert merged["run"].nunique() == 1 and "merged 3 parts" in merged["run"].iloc[0]
    pd.testing.assert_frame_equal(merged.drop(columns="run"), table, check_exact=False, rtol=1e-12)
    # Each part's own table differs from the whole: the merge recomputes, it does not copy.
    part = pd.read_csv(tmp_path / "split" / "0" / "certified_accuracy.csv")
    assert (part["n"] == 120).all() and (table["n"] == 360).all()


def test_merged_shards_recompute_the_bound_columns(tmp_path):
    """With an eps (here a stated budget), the merge keeps the bound, which depends on Q only,
    and recomputes above_bound from the whole table's intervals."""
    with_eps = [*FAST, "divergence.eps=0.0"]
    whole = compose_config(tmp_path / "whole", with_eps)
    run(whole)
    for shard in range(6):  # small parts: their intervals are wider than the whole's
        cfg = compose_config(tmp_path, [*with_eps, "certify.shards=6", f"certify.shard={shard}"])
        cfg.paths.output_dir = str(tmp_path / "split" / str(shard))
        run(cfg)
    table = pd.read_csv(f"{whole.paths.output_dir}/certified_accuracy.csv")
    assert table["bound_at_eps"].notna().any() and not table["above_bound"].all()
    merged = report([tmp_path / "split"], tmp_path / "report")["combined"].drop(columns="run")
    merged["above_bound"] = merged["above_bound"].astype(bool)  # no NA here; the csv reads bool
    pd.testing.assert_frame_equal(merged, table, check_exact=False, rtol=1e-12)


def test_merged_shards_keep_the_bound_at_the_estimated_eps(tmp_path):
    """With eps estimated (divergence.enabled=true), every part estimates it on all the test
    latents, not on its own points, so the merge of two parts keeps the unsplit run's bound
    (exact Gaussian data: a small eps, a bound that is not 0 everywhere)."""
    estimated = [
        *FAST,
        "dataset=synthetic",
        "dataset.dim=4",
        "mixture.priors=uniform",
        "divergence.truth_samples=2000",
        "divergence.enabled=true",
        "divergence.n_boot=10",
        "divergence.null_replicates=2",
    ]
    whole = compose_config(tmp_path / "whole", estimated)
    eps = run(whole)["divergence"]["eps_used"]
    for shard in range(2):
        cfg = compose_config(tmp_path, [*estimated, "certify.shards=2", f"certify.shard={shard}"])
        cfg.paths.output_dir = str(tmp_path / "split" / str(shard))
        assert run(cfg)["divergence"]["eps_used"] == eps
    table = pd.read_csv(f"{whole.paths.output_dir}/certified_accuracy.csv")
    assert 0 < eps < float("inf") and (table["bound_at_eps"] > 0).any()
    merged = report([tmp_path / "split"], tmp_path / "report")["combined"].drop(columns="run")
    merged["above_bound"] = merged["above_bound"].astype(bool)
    pd.testing.assert_frame_equal(merged, table, check_exact=False, rtol=1e-12)


@pytest.mark.slow
def test_split_over_three_jobs_merges_to_the_unsplit_table(tmp_path, unsplit):
    gmcert_run(
        "-m",
        "hydra/launcher=submitit_local",
        "certify.shards=3",
        "certify.shard=0,1,2",
        f"hydra.sweep.dir={tmp_path}/split",
        f"paths.cache_dir={tmp_path}/cache",
        *FAST,
        cwd=tmp_path,
    )
    parts = [pd.read_csv(tmp_path / "split" / str(i) / "predictions.csv") for i in range(3)]
    assert sum(map(len, parts)) == 360
    assert not set(parts[0]["index"]) & set(parts[1]["index"])

    table = pd.read_csv(f"{unsplit.paths.output_dir}/certified_accuracy.csv")
    merged = report([tmp_path / "split"], tmp_path / "report")["combined"]
    assert merged["run"].nunique() == 1 and "merged 3 parts" in merged["run"].iloc[0]
    pd.testing.assert_frame_equal(merged.drop(columns="run"), table, check_exact=False, rtol=1e-12)


def test_report_lists_failed_and_half_written_runs(tmp_path, unsplit):
    good = unsplit
    sweep = tmp_path / "sweep"
    (sweep / "failed").mkdir(parents=True)
    (sweep / "failed" / "failed.json").write_text(json.dumps({"error": "ValueError: boom"}))
    half = sweep / "half"
    half.mkdir()
    (half / "predictions.csv").write_text(
        "method,index,label,predict,radius_latent,"
        "radius_input,correct,seconds\nclosed_form,0,1,1,0.2"
    )
    result = report([good.paths.output_dir, sweep], tmp_path / "report")
    status = {r.path.name: r.status for r in result["runs"]}
    assert status == {"run": "complete", "failed": "failed", "half": "incomplete"}
    runs_csv = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert set(runs_csv["status"]) == {"complete", "failed", "incomplete"}
    for name in ("combined.csv", "combined.md", "combined.tex", "combined.png"):
        assert (tmp_path / "report" / name).exists()
    tex = (tmp_path / "report" / "combined.tex").read_text()
    assert r"\textbf{" in tex and r"\begin{tabular}" in tex


@pytest.mark.slow
def test_sweep_survives_a_failing_job(tmp_path):
    proc = gmcert_run(
        "-m",
        "mixture.shrinkage=oas,2.0",
        f"hydra.sweep.dir={tmp_path}/sweep",
        f"paths.cache_dir={tmp_path}/cache",
        *FAST,
        cwd=tmp_path,
        status=1,  # the other job ran; the sweep still says one failed
    )
    assert f"job failed: {tmp_path}/sweep/1" in proc.stderr
    assert "1 job(s) of the sweep failed" in proc.stderr and "Traceback" not in proc.stderr
    failed = json.loads((tmp_path / "sweep" / "1" / "failed.json").read_text())
    assert "shrinkage" in failed["error"]
    assert (tmp_path / "sweep" / "0" / "certified_accuracy.csv").exists()
    statuses = sorted(r.status for r in report([tmp_path / "sweep"], tmp_path / "rep")["runs"])
    assert statuses == ["complete", "failed"]
