"""Hostile inputs, round 3: damaged run folders under gmcert-report, failed single runs, weight
paths that are folders, data in other units, and the IDX / image-folder / npz loaders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gmcert.report.sweep import report, report_cli

# ---------------------------------------------------------------------------------------------
# gmcert-report over damaged folders


def _complete_run(folder: Path, *, accuracy: float = 0.9, eps: bool = False) -> Path:
    """A run folder as a finished run leaves it (the files the report reads), written by hand."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- mixture.shrinkage={accuracy}\n")
    (folder / ".hydra" / "config.yaml").write_text("certify:\n  ci_alpha: 0.05\n")
    (folder / "run_fingerprint.txt").write_text(f"fingerprint-{folder.name}\n")
    table = pd.DataFrame(
        {
            "method": ["closed_form"] * 2,
            "norm": ["l2"] * 2,
            "space": ["input"] * 2,
            "radius": [0.0, 0.5],
            "certified_accuracy": [accuracy, accuracy / 2],
            "ci_low": [accuracy - 0.1, accuracy / 2 - 0.1],
            "ci_high": [1.0, accuracy / 2 + 0.1],
            "n": [10, 10],
        }
    )
    table.to_csv(folder / "certified_accuracy.csv", index=False)
    metrics = {"certified_indices": [0, 10]}
    if eps:
        metrics["divergence"] = {"eps_used": 0.5, "eps_source": "knn", "estimates": {"joint": {}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "predictions.csv").write_text(
        "method,index,label,predict,radius_latent,radius_input,correct,seconds\n"
        + "".join(f"closed_form,{i},0,0,0.5,0.5,True,0.0\n" for i in range(10))
    )
    return folder


DAMAGE = {
    "metrics_json": ("metrics.json", "{'certified_indices': [0, 10]}", "not valid JSON"),
    "metrics_list": ("metrics.json", "[1, 2]", "holds a list"),
    "metrics_indices": ("metrics.json", '{"certified_indices": "all"}', "certified_indices"),
    "metrics_empty": ("metrics.json", "", "not valid JSON"),
    "table_columns": ("certified_accuracy.csv", "a,b\n1,2\n", "lacks the column"),
    "table_text": (
        "certified_accuracy.csv",
        "method,norm,space,radius,certified_accuracy,ci_low,ci_high\ncf,l2,input,x,y,z,w\n",
        "hold text",
    ),
    "table_empty": ("certified_accuracy.csv", "", "not a readable CSV"),
    "config_yaml": (".hydra/config.yaml", "certify: [unclosed\n", "not valid YAML"),
    "config_scalar": (".hydra/config.yaml", "just a string\n", "holds a str"),
    "overrides_yaml": (".hydra/overrides.yaml", "{a: 1}\n", "not a list"),
    "fingerprint_binary": ("run_fingerprint.txt", b"\xff\xfe\x00", "cannot be read"),
    "eps_section": (
        "metrics.json",
        '{"certified_indices": [0, 10], "divergence": {"eps_used": 1}}',
        "divergence section is malformed",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_report_lists_a_damaged_folder_and_reports_the_others(tmp_path, case, capsys):
    name, content, why = DAMAGE[case]
    sweep = tmp_path / "sweep"
    _complete_run(sweep / "0", accuracy=0.9)
    _complete_run(sweep / "1", accuracy=0.8)
    target = sweep / "1" / name
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)
    status = report_cli([str(sweep), "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert status == 1  # non-zero at the end ...
    assert f"skipped (damaged): {sweep / '1'}: {Path(name).name}: " in out and why in out
    assert "wrote " in out  # ... after the healthy job was reported
    combined = pd.read_csv(tmp_path / "report" / "combined.csv")
    assert combined["run"].unique().tolist() == ["mixture.shrinkage=0.9"]
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert runs.set_index("folder").loc[str(sweep / "1"), "status"] == "damaged"


def test_report_healthy_sweep_exits_zero(tmp_path, capsys):
    _complete_run(tmp_path / "sweep" / "0", eps=True)
    assert report_cli([str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "eps.csv").exists()


def test_damaged_part_of_a_split_run_spoils_only_its_merge(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for shard, (first, stop) in enumerate([(0, 10), (10, 20)]):
        folder = _complete_run(sweep / str(shard))
        (folder / "run_fingerprint.txt").write_text("one-config\n")
        (folder / "metrics.json").write_text(json.dumps({"certified_indices": [first, stop]}))
    (sweep / "1" / "predictions.csv").write_text("garbage\n")
    _complete_run(tmp_path / "other", accuracy=0.7)
    result = report([sweep, tmp_path / "other"], tmp_path / "report")
    statuses = {r.path.name: r.status for r in result["runs"]}
    assert statuses == {"0": "damaged", "1": "damaged", "other": "complete"}
    assert "predictions.csv: lacks the column" in next(r.reason for r in result["runs"])


def test_damaged_unsound_record_still_marks_the_run_unsound(tmp_path):
    folder = _complete_run(tmp_path / "run")
    (folder / "unsound.json").write_text("[{truncated")
    (run,) = report([folder], tmp_path / "report")["runs"]
    assert run.status == "unsound" and "damaged" in run.reason


@pytest.mark.parametrize(
    "content, reason",
    [
        ('{"error": "ValueError: boom"}', "ValueError: boom"),
        ("{not json", "failed.json is damaged"),
        ('{"error": ""}', "records no error"),
        ('["ValueError"]', "records no error"),
    ],
)
def test_failed_record_gives_its_error_or_says_what_is_wrong(tmp_path, content, reason, capsys):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "failed.json").write_text(content)
    assert report_cli([str(tmp_path / "job"), "--out", str(tmp_path / "report")]) == 1
    out = capsys.readouterr().out
    assert f"skipped (failed): {tmp_path / 'job'}: " in out and reason in out


def test_report_on_a_folder_without_runs_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report_cli([str(tmp_path / "empty"), "--out", str(tmp_path / "report")]) == 1
    assert "no run folders under" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failed_single_run_records_its_error_for_the_report(tmp_path):
    """A single run (not a sweep) that fails writes failed.json too: the report gives its error
    (before, the folder held only an empty run.log and the report said nothing about it)."""
    run_dir = tmp_path / "single"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gmcert.cli",
            "mixture.shrinkage=2.0",
            f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={tmp_path}/cache",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (run,) = report([run_dir], tmp_path / "report")["runs"]
    assert run.status == "failed" and "mixture.shrinkage must be one of" in run.reason
    assert run.name == "mixture.shrinkage=2.0"  # the config is recorded, so the run is named


def test_record_failure_keeps_a_complete_folder_unmarked(tmp_path):
    from omegaconf import OmegaConf

    from gmcert.cli import record_failure

    cfg = OmegaConf.create({"x": 1})
    folder = _complete_run(tmp_path / "done")
    record_failure(folder, cfg, ValueError("refused"), multirun=False)
    assert not (folder / "failed.json").exists()
    (tmp_path / "new").mkdir()
    record_failure(tmp_path / "new", cfg, ValueError("boom"), multirun=False)
    assert json.loads((tmp_path / "new" / "failed.json").read_text()) == {
        "error": "ValueError: boom"
    }


# ---------------------------------------------------------------------------------------------
# Weight paths that are folders (or links to nothing, or pipes)


def _weight_targets(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "weights_dir"
    folder.mkdir()
    (folder / "model.pth").write_bytes(b"")
    link = tmp_path / "dangling.pth"
    link.symlink_to(tmp_path / "gone.pth")
    pipe = tmp_path / "pipe.pth"
    os.mkfifo(pipe)
    return {"folder": folder, "link": link, "pipe": pipe}


WEIGHT_PATH_MESSAGES = {
    "folder": r"is a folder, but a weight file .* is expected; it holds model.pth",
    "link": r"is a link to .*gone.pth, which does not exist",
    "pipe": r"is not a regular file",
}


@pytest.mark.parametrize("kind", sorted(WEIGHT_PATH_MESSAGES))
def test_encoder_weights_that_are_not_files_say_what_they_are(tmp_path, kind):
    from torchvision import models

    from gmcert.encoders.weights import read_state_dict, resolve_torchvision_weights

    path = _weight_targets(tmp_path)[kind]
    message = WEIGHT_PATH_MESSAGES[kind]
    with pytest.raises(ValueError, match=f"encoder.weights={path} {message}"):
        read_state_dict(path)
    # The run's preflight check (before any work) says the same, not "does not exist" later.
    with pytest.raises(ValueError, match=message):
        resolve_torchvision_weights("resnet18", str(path), models.ResNet18_Weights)


@pytest.mark.parametrize("kind", sorted(WEIGHT_PATH_MESSAGES))
def test_denoiser_weights_that_are_not_files_say_what_they_are(tmp_path, kind):
    from gmcert.denoisers.weights import read_weight_file

    path = _weight_targets(tmp_path)[kind]
    with pytest.raises(
        ValueError, match=f"denoiser.weights={path} .*" + WEIGHT_PATH_MESSAGES[kind]
    ):
        read_weight_file(path)


def test_hub_encoder_weights_folder_says_what_it_is(tmp_path):
    from gmcert.encoders.hub_models import _library_weights

    folder = _weight_targets(tmp_path)["folder"]
    with pytest.raises(ValueError, match="is a folder, but a weight file"):
        _library_weights("clip", str(folder), False, "open_clip_pytorch_model.bin")


def test_missing_weight_file_is_still_not_found(tmp_path):
    from gmcert.encoders.weights import read_state_dict

    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pth")


# ---------------------------------------------------------------------------------------------
# Data in other units: the fit follows the data's scale

SCALES = (1e-6, 1e-3, 1.0, 1e3, 1e6)
# Each a mixture config (the pipeline's fit) and whether it has a radius in latent units that
# must be given in the data's units too.
SLOW = pytest.mark.slow  # a fit per held-out candidate, or the quadratic certifier
FITS = {
    "shared_ledoit_wolf": {},
    "shared_oas": {"shrinkage": "oas"},
    "shared_fixed": {"shrinkage": 0.3},
    "shared_none": {"shrinkage": "none"},
    "shared_select": pytest.param({"shrinkage": "select", "select_radius": 0.5}, marks=SLOW),
    "robust": pytest.param({"robust_radius": 0.25}, marks=SLOW),
    "isotropic": {"covariance": "isotropic", "shrinkage": "none"},
    "diag": {"covariance": "diag", "shrinkage": "none", "reg_covar": 1e-4},
    "full": {"covariance": "full"},
    "lowrank": pytest.param({"covariance": "lowrank", "shrinkage": "none", "rank": 4}, marks=SLOW),
}
RADIUS_OPTIONS = ("select_radius", "robust_radius")


@pytest.fixture(scope="module")
def digits64():
    from gmcert.data.digits import build_digits

    data = build_digits()
    return (
        data.train.inputs.astype(np.float64),
        data.train.labels,
        data.test.inputs.astype(np.float64),
        data.test.labels,
    )


def _fit_and_certify(digits64, options: dict, scale: float):
    from omegaconf import OmegaConf

    from gmcert.certify.latent import certify_latents, latent_certifier
    from gmcert.config import MixtureConfig
    from gmcert.models.fitting import fit_mixture

    x_train, y_train, x_test, _ = digits64
    x_test = (
        x_test if options.get("covariance", "shared") in ("shared", "isotropic") else x_test[:40]
    )
    scaled = {k: v * scale if k in RADIUS_OPTIONS else v for k, v in options.items()}
    cfg = OmegaConf.merge(OmegaConf.structured(MixtureConfig), scaled)
    mixture = fit_mixture(x_train * scale, y_train, cfg, seed=0)
    certifier = latent_certifier(mixture, norm="l2", device="cpu", dtype=torch.float64)
    codes, radii = certify_latents(certifier, x_test * scale, batch_size=4096)
    return mixture, mixture.classes_[codes], radii


@pytest.mark.parametrize("options", FITS.values(), ids=FITS.keys())
def test_the_same_data_in_other_units_gives_the_same_rule(digits64, options):
    """Digits times c for c in 1e-6 .. 1e6: the same predictions, radii times c. (Before,
    reg_covar was an absolute 1e-6: at c = 1e-6 it swamped variances of order 1e-12 and clean
    accuracy fell from 0.958 to 0.197 without a word.)"""
    _, reference, reference_radii = _fit_and_certify(digits64, options, 1.0)
    assert (reference == digits64[3][: len(reference)]).mean() > 0.85
    for scale in SCALES:
        mixture, predicted, radii = _fit_and_certify(digits64, options, scale)
        np.testing.assert_array_equal(predicted, reference, err_msg=f"scale {scale}")
        np.testing.assert_allclose(radii / scale, reference_radii, rtol=1e-6, err_msg=f"{scale}")
        np.testing.assert_allclose(
            mixture.reg_covar_,
            mixture.reg_covar * np.var(digits64[0] * scale, axis=0).mean(),
            rtol=1e-9,
        )


def test_reg_covar_is_relative_to_the_mean_variance():
    from gmcert.models.mixture import GaussianMixtureClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)) * [1.0, 10.0, 0.1, 3.0] + 5.0
    y = np.arange(60) % 3
    mixture = GaussianMixtureClassifier(covariance="isotropic", reg_covar=0.5).fit(X, y)
    assert mixture.data_variance_ == pytest.approx(np.var(X, axis=0).mean(), rel=1e-12)
    # All points equal: no scale to follow, the ridge is reg_covar itself.
    same = GaussianMixtureClassifier(covariance="isotropic", reg_covar=0.5)
    assert same.fit(np.ones((6, 2)), np.arange(6) % 2).reg_covar_ == 0.5
