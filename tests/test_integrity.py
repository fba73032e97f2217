"""Nothing silent: however a run is cut (resumed mid-chunk, sharded, unsplit) it writes the same
table; a folder, a cache or a report never mixes results from different data or configs."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from conftest import QUICK, compose_config, hydra_config, write_cifar10, write_imagenet
from PIL import Image

import gmcert.data.digest as digest_module
from gmcert.data import build_dataset
from gmcert.data.digest import data_digest
from gmcert.pipeline import run
from gmcert.report.sweep import report

SMOOTHING = [
    *QUICK,
    "certify.methods=[smoothing_gmm]",
    "certify.n=100",
    "certify.n0=20",
    "certify.noise_batch=1000",  # ten points share each chunk's forward passes
    "certify.population_samples=0",
    "attack=none",
]


def smoothing_run(tmp_path, folder, *overrides):
    cfg = compose_config(tmp_path, [*SMOOTHING, *overrides])
    cfg.paths.output_dir = str(tmp_path / folder)
    run(cfg)
    return tmp_path / folder


@pytest.mark.e2e
def test_resumed_sharded_and_unsplit_smoothing_runs_write_identical_tables(tmp_path):
    unsplit = smoothing_run(tmp_path, "unsplit")

    # Stopped after 15 points (mid-chunk), the log torn in its last line, then resumed.
    resumed = smoothing_run(tmp_path, "resumed", "certify.stop=15")
    log = resumed / "predictions.csv"
    log.write_text(log.read_text() + "smoothing_gmm,15,3,")
    (resumed / "certified_accuracy.csv").unlink()
    smoothing_run(tmp_path, "resumed")

    for shard in range(3):
        smoothing_run(tmp_path, f"shards/{shard}", "certify.shards=3", f"certify.shard={shard}")
    merged = report([tmp_path / "shards"], tmp_path / "report")["combined"]
    assert merged["run"].nunique() == 1 and "merged 3 parts" in merged["run"].iloc[0]
    merged.drop(columns="run").to_csv(tmp_path / "merged.csv", index=False)

    whole = (unsplit / "certified_accuracy.csv").read_bytes()
    assert (resumed / "certified_accuracy.csv").read_bytes() == whole
    assert (tmp_path / "merged.csv").read_bytes() == whole
    rows = pd.read_csv(unsplit / "certified_accuracy.csv")
    assert 0 < rows["certified_accuracy"].iloc[1] < 1  # a table that can differ


def cifar_overrides(root):
    return [
        "dataset=cifar10",
        f"dataset.root={root}",
        "dataset.verify_checksums=false",
        "encoder=identity",
        *QUICK,
        "certify.population_samples=0",
        "attack=none",
    ]


@pytest.mark.e2e
def test_resume_on_other_data_at_the_same_path_is_refused(tmp_path):
    root, moved = tmp_path / "data", tmp_path / "moved"
    write_cifar10(root, seed=0)
    write_cifar10(moved, seed=0)
    cfg = compose_config(tmp_path, [*cifar_overrides(root), "certify.stop=10"])
    run(cfg)

    shutil.rmtree(root)
    write_cifar10(root, seed=1)  # other images, same folder
    cfg.certify.stop = 20
    with pytest.raises(ValueError, match="different configuration"):
        run(cfg)
    # The same data in another folder: the results still belong to it, so it resumes.
    cfg.dataset.root = str(moved)
    run(cfg)
    assert len(pd.read_csv(f"{cfg.paths.output_dir}/predictions.csv")) == 20


@pytest.mark.e2e
def test_a_refused_resume_leaves_the_recorded_config_alone(tmp_path):
    first = compose_config(tmp_path, ["certify=closed_form", "attack=none"])
    run(first)
    recorded = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "ledoit_wolf" in recorded
    other = compose_config(
        tmp_path, ["certify=closed_form", "attack=none", "mixture.shrinkage=oas"]
    )
    with pytest.raises(ValueError, match="different configuration"):
        run(other)
    assert (tmp_path / "run" / ".hydra" / "config.yaml").read_text() == recorded


def test_hydra_does_not_write_the_config_before_gmcert_accepts_the_folder():
    assert hydra_config().hydra.output_subdir is None


# ----------------------------------------------------------------------------- data digests


def test_image_folder_digest_follows_content_and_hashes_each_file_once(tmp_path, monkeypatch):
    write_imagenet(tmp_path / "imagenet")
    data = build_dataset("imagenet", root=str(tmp_path / "imagenet"))
    hashed = []
    real = digest_module.file_digest
    monkeypatch.setattr(digest_module, "file_digest", lambda p: hashed.append(p) or real(p))

    first = data_digest(data, cache_dir=tmp_path / "cache")
    assert len(hashed) == len(data.train) + len(data.test)
    hashed.clear()
    assert data_digest(data, cache_dir=tmp_path / "cache") == first
    assert hashed == []  # size and mtime unchanged: the stored hashes are used

    image = data.test.inputs.path(0)
    with Image.open(image) as im:
        flipped = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flipped.save(image, format="PNG" if image.suffix == ".png" else "JPEG")
    changed = data_digest(data, cache_dir=tmp_path / "cache")
    assert changed["train"] == first["train"] and changed["test"] != first["test"]
    assert hashed == [image]

    (tmp_path / "cache" / "data_digests").rglob("*.json").__next__().write_text("{oops")
    assert data_digest(data, cache_dir=tmp_path / "cache") == changed  # rebuilt, same answer


def test_cifar_pixels_changed_in_place_change_the_digest(tmp_path):
    write_cifar10(tmp_path / "a", seed=0)
    write_cifar10(tmp_path / "b", seed=0)
    options = {"verify_checksums": False}
    a = data_digest(build_dataset("cifar10", root=str(tmp_path / "a"), **options))
    b = data_digest(build_dataset("cifar10", root=str(tmp_path / "b"), **options))
    assert a == b  # the content, not the path
    data = build_dataset("cifar10", root=str(tmp_path / "b"), **options)
    data.test.inputs.images[3, 0, 0, 0] ^= 1
    assert data_digest(data)["test"] != a["test"]


@pytest.mark.e2e
def test_feature_cache_of_a_pretrained_encoder_misses_when_images_change(tmp_path):
    root = tmp_path / "imagenet"
    write_imagenet(root)
    overrides = [
        "dataset=imagenet",
        f"dataset.root={root}",
        "encoder=resnet18",
        "encoder.weights=random",
        "encoder.image_size=32",
        *QUICK,
        "certify.population_samples=0",
        "attack=none",
        "mixture.covariance=isotropic",
    ]

    def job(name):
        cfg = compose_config(tmp_path, overrides)
        cfg.paths.output_dir = str(tmp_path / name)
        return run(cfg)["cache_hits"]

    assert job("first") == {"train": False, "test": False}
    assert job("second") == {"train": True, "test": True}
    data = build_dataset("imagenet", root=str(root))
    image = data.train.inputs.path(0)
    image.write_bytes(data.train.inputs.path(1).read_bytes())  # a changed file
    assert job("third") == {"train": False, "test": False}


# ----------------------------------------------------------------------------- report


FAST = [*QUICK, "certify.population_samples=0"]


@pytest.mark.e2e
def test_report_merges_only_the_parts_of_one_split_run(tmp_path):
    def job(folder, *overrides):
        cfg = compose_config(tmp_path, [*FAST, "attack=none", *overrides])
        cfg.paths.output_dir = str(tmp_path / folder)
        run(cfg)

    job("twice/a")
    job("twice/b")  # the same complete run twice: two rows, never one
    combined = report([tmp_path / "twice"], tmp_path / "r1")["combined"]
    assert combined["run"].nunique() == 2 and not combined["run"].str.contains("merged").any()

    job("overlap/a", "certify.stop=200")
    job("overlap/b", "certify.start=100")
    combined = report([tmp_path / "overlap"], tmp_path / "r2")["combined"]
    assert combined["run"].nunique() == 2 and not combined["run"].str.contains("merged").any()

    job("parts/a", "certify.stop=200")
    job("parts/b", "certify.start=200")
    combined = report([tmp_path / "parts"], tmp_path / "r3")["combined"]
    assert combined["run"].nunique() == 1
    assert "merged 2 parts, points 0-359" in combined["run"].iloc[0]


@pytest.mark.e2e
def test_smoothing_subset_is_chosen_by_index_so_shards_agree(tmp_path):
    """certify.smoothing_skip=k: smoothing certifies the points whose index is a multiple of
    k, closed form every point; sharded and unsplit runs still write the same table."""
    subset = ["certify.methods=[closed_form,smoothing_gmm]", "certify.smoothing_skip=7"]
    unsplit = smoothing_run(tmp_path, "unsplit", *subset)
    preds = pd.read_csv(unsplit / "predictions.csv")
    smoothed = preds[preds["method"] == "smoothing_gmm"]["index"]
    closed = preds[preds["method"] == "closed_form"]["index"]
    assert (smoothed % 7 == 0).all() and set(smoothed) == {i for i in closed if i % 7 == 0}
    assert len(closed) > 6 * len(smoothed)
    for shard in range(2):
        smoothing_run(
            tmp_path, f"shards/{shard}", *subset, "certify.shards=2", f"certify.shard={shard}"
        )
    merged = report([tmp_path / "shards"], tmp_path / "report")["combined"]
    merged.drop(columns="run").to_csv(tmp_path / "merged.csv", index=False)
    assert (tmp_path / "merged.csv").read_bytes() == (
        unsplit / "certified_accuracy.csv"
    ).read_bytes()
