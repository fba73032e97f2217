"""Shared fixtures: configs composed the way Hydra composes them, each run under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from gmcert.cli import CONFIG_DIR

CONFIGS = Path(CONFIG_DIR)


def compose_config(tmp_path: Path, overrides: list[str] = ()):
    """A fully composed run config, with every output and the cache under ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.cache_dir = str(tmp_path / "cache")
            cfg.paths.data_dir = str(tmp_path / "data")
            del cfg.hydra
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    return lambda *overrides: compose_config(tmp_path, overrides)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
