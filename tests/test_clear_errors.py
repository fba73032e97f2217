"""Damaged inputs, unwritable outputs and full disks: one line naming the file and the fix,
never a traceback from inside a library, never lost results."""

from __future__ import annotations

import errno
import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import gmcert_run, hydra_config
from omegaconf import open_dict

import gmcert.features as features
from gmcert.cli import file_error
from gmcert.encoders.weights import read_state_dict
from gmcert.features import cached


def test_a_text_file_given_as_weights_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("hello, not a weight file\n")
    with pytest.raises(ValueError, match=r"cannot read .*weights.pth as a weight file"):
        read_state_dict(path)


@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', '{"key": 3}', "{"])
def test_malformed_cache_metadata_is_rebuilt(tmp_path, meta):
    def compute():
        return np.ones((3, 2), np.float32), np.arange(3)

    material = {"encoder": "identity"}
    cached(material, compute, cache_dir=tmp_path)
    (meta_file,) = (tmp_path / "features").glob("*/meta.json")
    meta_file.write_text(meta)
    (latents, _), hit = cached(material, compute, cache_dir=tmp_path)
    assert not hit and latents.shape == (3, 2)
    assert json.loads(meta_file.read_text())["shape"] == [3, 2]  # stored again, whole


def test_an_unwritable_cache_costs_the_cache_not_the_run(tmp_path, monkeypatch, caplog):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.npy"))

    monkeypatch.setattr(features.np, "save", full_disk)
    (latents, _), hit = cached(
        {"a": 1}, lambda: (np.ones((2, 2)), np.arange(2)), cache_dir=tmp_path
    )
    assert not hit and latents.shape == (2, 2)
    assert "cannot store features in the cache" in caplog.text
    assert list((tmp_path / "features").iterdir()) == []  # no half-written entry left


@pytest.mark.parametrize(
    "code, fix",
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only"),
        (errno.ENOTDIR, "is a file, not a folder"),
    ],
)
def test_file_errors_are_one_line_with_the_file_and_the_fix(code, fix):
    message = file_error(OSError(code, "reason", "/data/run/predictions.csv"))
    assert "/data/run/predictions.csv" in message and fix in message and "\n" not in message


@pytest.mark.slow
def test_an_output_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    proc = gmcert_run(f"hydra.run.dir={tmp_path}/file/run", status=2, timeout=300)
    assert "cannot create the output folder" in proc.stderr
    assert "is a file, not a folder" in proc.stderr and "Traceback" not in proc.stderr


def test_a_fit_too_big_for_memory_is_refused_with_the_number(monkeypatch):
    import gmcert.memory
    from gmcert.fit import fit_memory_bytes

    # encoder=identity on ImageNet: one shared 150528 x 150528 covariance.
    assert fit_memory_bytes(3 * 224 * 224, 1000, "shared") > 1000 * gmcert.memory.GIB
    monkeypatch.setattr(gmcert.memory, "physical_memory", lambda: 64 * gmcert.memory.GIB)
    with pytest.raises(
        ValueError, match=r"on 150528-dimensional latents needs about 1,01\d\.\d GiB.*encoder=pca"
    ):
        gmcert.memory.check_memory(
            fit_memory_bytes(150528, 1000, "shared"),
            "fitting mixture.covariance=shared on 150528-dimensional latents",
            "use a pretrained encoder, or encoder=pca",
        )


def test_the_pipeline_refuses_before_fitting_or_encoding(make_cfg, monkeypatch):
    import gmcert.memory
    from gmcert.pipeline import run

    cfg = make_cfg("certify=closed_form", "attack=none", "divergence.enabled=false")
    monkeypatch.setattr(gmcert.memory, "physical_memory", lambda: 400_000)
    with pytest.raises(ValueError, match=r"the encode train latents \(1,437 x 64 float32\)"):
        run(cfg)
    monkeypatch.setattr(gmcert.memory, "physical_memory", lambda: 200_000)
    monkeypatch.setattr(features, "check_memory", lambda *args: None)
    with pytest.raises(ValueError, match=r"fitting mixture.covariance=shared on 64-dimensional"):
        run(cfg)


def test_every_missing_input_is_named_before_any_work(make_cfg, tmp_path, monkeypatch):
    from gmcert.data.specs import DATASETS
    from gmcert.pipeline import run

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no weights in this hub cache
    unread = replace(DATASETS["cifar10"], build=lambda **_: pytest.fail("data was read"))
    monkeypatch.setitem(DATASETS, "cifar10", unread)
    cfg = make_cfg("experiment=cifar10_vit_dds")
    with pytest.raises(FileNotFoundError) as err:
        run(cfg)
    message = str(err.value)
    assert message.startswith("3 inputs of this run are missing")
    assert "CIFAR-10 not found" in message and "vit_b_16: weights='default'" in message
    assert f"denoiser.weights={tmp_path}/data/denoisers/ddpm-cifar10-32" in message
    assert not (tmp_path / "run").exists()  # refused before the output folder was made


def test_the_output_folder_check_resolves_hydras_own_paths(tmp_path, monkeypatch):
    """A plain run printed a UserWarning: the callback resolved ``hydra.run.dir`` (through
    ``${hydra:runtime.cwd}``) before Hydra had set its config, and the check was skipped."""
    from hydra.core.hydra_config import HydraConfig

    from gmcert.cli import CheckOutputFolder

    monkeypatch.chdir(tmp_path)
    cfg = hydra_config()
    HydraConfig.instance().cfg = None  # as Hydra leaves it when the callbacks run
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = str(tmp_path)
    CheckOutputFolder().on_run_start(cfg)
    assert len(list((tmp_path / "outputs" / "run" / "runs").iterdir())) == 1
