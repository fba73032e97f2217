"""Feature cache: a second run hits it, a corrupt entry is detected and rebuilt, keys differ
when what determines the latents differs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import QUICK

from gmcert.features import cache_key, cached
from gmcert.pipeline import run


@pytest.mark.e2e
def test_second_run_hits_the_cache_and_a_truncated_entry_is_rebuilt(make_cfg, tmp_path):
    def job(name, *overrides):
        cfg = make_cfg(*QUICK, "certify.population_samples=0", *overrides)
        cfg.paths.output_dir = str(tmp_path / name)
        return run(cfg)

    first = job("first")
    assert first["cache_hits"] == {"train": False, "test": False}
    second = job("second", "certify.radii=[0.0,0.5]")  # another job, the same latents
    assert second["cache_hits"] == {"train": True, "test": True}

    entries = sorted((tmp_path / "cache" / "features").glob("*/latents.npy"))
    assert len(entries) == 2
    data = entries[0].read_bytes()
    entries[0].write_bytes(data[: len(data) // 2])  # a torn write or a full disk
    third = job("third", "certify.radii=[0.0,0.25]")
    assert sorted(third["cache_hits"].values()) == [False, True]
    assert entries[0].read_bytes() == data  # rebuilt whole, identical to the first write
    for key in ("clean_accuracy", "average_certified_radius"):
        assert third["methods"]["closed_form"][key] == second["methods"]["closed_form"][key]


def test_force_recomputes_and_keys_follow_their_material(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.ones((3, 2), np.float32), np.arange(3)

    material = {"encoder": "identity", "split": "test"}
    cached(material, compute, cache_dir=tmp_path)
    (_, hit) = cached(material, compute, cache_dir=tmp_path)
    assert hit and len(calls) == 1
    (_, hit) = cached(material, compute, cache_dir=tmp_path, force=True)
    assert not hit and len(calls) == 2
    assert cache_key(material) != cache_key({**material, "split": "train"})
    (latents, labels), hit = cached(material, compute, cache_dir=None)
    assert not hit and latents.shape == (3, 2)
