"""Kill-and-resume: a run SIGKILLed mid-certification, restarted in its folder, ends with
exactly the predictions of an uninterrupted run: no duplicates, nothing lost, no torn file.

Slow (three processes); the fast suite covers resuming in-process (test_pipeline) and the torn
last line (test_io)."""

from __future__ import annotations

import os
import signal
import time

import pandas as pd
import pytest
from conftest import QUICK, start_cli

ARGS = [
    *QUICK,
    "certify.methods=[smoothing_gmm]",
    "certify.n=1500",
    "certify.noise_batch=500",
    "certify.population_samples=0",
    "attack=none",  # resuming is what is tested; the smoothing attack would triple the time
]


def start(run_dir, cache):
    return start_cli(ARGS, run_dir, cache, start_new_session=True)


def rows_written(path):
    try:
        return max(sum(1 for _ in open(path)) - 1, 0)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
@pytest.mark.e2e
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = start(killed, tmp_path / "cache")
    deadline = time.time() + 300
    while rows_written(killed / "predictions.csv") < 40:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the run wrote no predictions in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = rows_written(killed / "predictions.csv")
    assert 0 < partial < 360
    assert not (killed / "certified_accuracy.csv").exists()

    for run_dir in (killed, whole):
        proc = start(run_dir, tmp_path / "cache")
        assert proc.wait(timeout=900) == 0, proc.stderr.read().decode()[-2000:]
    resumed = pd.read_csv(killed / "predictions.csv").drop(columns="seconds")
    uninterrupted = pd.read_csv(whole / "predictions.csv").drop(columns="seconds")
    assert resumed["index"].is_unique and len(resumed) == 360
    pd.testing.assert_frame_equal(
        resumed.sort_values("index").reset_index(drop=True),
        uninterrupted.sort_values("index").reset_index(drop=True),
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(killed / "certified_accuracy.csv"),
        pd.read_csv(whole / "certified_accuracy.csv"),
    )
