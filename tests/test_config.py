"""Every config composes; bad overrides fail at once with a message naming the problem."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import CONFIGS, compose_config
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

GROUPS = ["dataset", "encoder", "mixture", "certify", "divergence", "experiment"]


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override", [f"{g}={o}" for g in GROUPS for o in options(g)], ids=lambda s: s
)
def test_every_config_file_composes(tmp_path, override):
    cfg = compose_config(tmp_path, [override])
    # Resolving every interpolation catches typos in keys that composition alone does not.
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert cfg.dataset.name and cfg.encoder.name


def test_unknown_group_option_lists_the_choices(tmp_path):
    with pytest.raises(ConfigCompositionException, match="(?s)encoder/nope.*identity"):
        compose_config(tmp_path, ["encoder=nope"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("certify.radii=oops", "certify.radii"),
        ("certify.radii=[0,oops]", "oops"),
        ("certify.batch_size=big", "certify.batch_size"),
        ("certify.radius=1", "radius"),
        ("dataset.separation=far", "separation"),
    ],
)
def test_type_errors_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigCompositionException, match=message):
        compose_config(tmp_path, ["dataset=synthetic", override])


@pytest.mark.parametrize(
    "args,message",
    [
        (["encoder=nope"], "Could not find 'encoder/nope'"),
        (["certify.radii=oops"], "certify.radii"),
        (["certify.radii=[-1]"], "certify.radii must be a non-empty list of radii >= 0"),
        (["certify.norm=l3"], "certify.norm must be one of"),
    ],
)
def test_command_line_errors_are_one_clear_message(tmp_path, args, message):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gmcert.cli",
            *args,
            f"hydra.run.dir={tmp_path}/run",
            f"paths.cache_dir={tmp_path}/cache",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
