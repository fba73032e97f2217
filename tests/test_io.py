"""Atomic writes and the predictions log survive being killed mid-write."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from gmcert.io import PredictionLog, atomic_write, write_json


def rows(indices, method="closed_form"):
    return pd.DataFrame(
        {
            "method": method,
            "index": indices,
            "label": 1,
            "predict": 1,
            "radius_latent": 0.5,
            "radius_input": 0.5,
            "correct": True,
            "seconds": 0.1,
        }
    )


def test_torn_last_line_is_cut_and_rows_resume(tmp_path):
    path = tmp_path / "predictions.csv"
    log = PredictionLog(path)
    log.append(rows([0, 1, 2]))
    with open(path, "a") as f:  # what a SIGKILL in the middle of a write leaves
        f.write("closed_form,3,1,1,0.5")
    reopened = PredictionLog(path)
    assert reopened.done("closed_form") == {0, 1, 2}
    reopened.append(rows([3]))
    assert reopened.read()["index"].tolist() == [0, 1, 2, 3]


def test_foreign_log_is_refused(tmp_path):
    (tmp_path / "predictions.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="fresh folder"):
        PredictionLog(tmp_path / "predictions.csv")


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})

    def crash(p):
        p.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="^killed$"):
        atomic_write(path, crash)
    assert path.read_text().strip().startswith("{")
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary left behind


def test_json_writes_inf_and_nan_as_valid_json(tmp_path):
    import json

    write_json(tmp_path / "m.json", {"r": float("inf"), "x": float("nan")})
    assert json.loads((tmp_path / "m.json").read_text()) == {"r": "inf", "x": None}


def test_a_nul_block_after_a_crash_is_cut_and_the_run_resumes(tmp_path):
    path = tmp_path / "predictions.csv"
    PredictionLog(path).append(rows([0, 1, 2]))
    with open(path, "ab") as f:  # the file's size reached the disk, its last block did not
        f.write(b"closed_form,3,1,1,0.5,0.5,True,0.1\n" + b"\0" * 4096)
    reopened = PredictionLog(path)
    assert reopened.done("closed_form") == {0, 1, 2, 3}
    reopened.append(rows([4]))
    assert reopened.read()["index"].tolist() == [0, 1, 2, 3, 4]


def test_a_damaged_row_names_the_file(tmp_path):
    path = tmp_path / "predictions.csv"
    PredictionLog(path).append(rows([0, 1]))
    with open(path, "a") as f:
        f.write("closed_form,oops,1,1,0.5,0.5,True,0.1\n")
    with pytest.raises(ValueError, match=r"predictions.csv is damaged .*delete its damaged rows"):
        PredictionLog(path).read()
