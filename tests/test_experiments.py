"""Smoke sweep: every experiment config runs end to end on tiny data, as a multirun (slow:
one process per sweep), and the embedded ones also in-process (fast).

The paper-scale configs run on fake CIFAR-10 / ImageNet written in the real on-disk formats
and on random-init encoders at 32 px: the same code path as real data and weights.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import CONFIGS, gmcert_run, write_cifar10, write_idx, write_imagenet

from gmcert.pipeline import run
from gmcert.report.sweep import report

TINY = [
    "certify.population_samples=2000",
    "divergence.n_boot=5",
    "divergence.truth_samples=2000",
    "certify.n=64",
    "certify.n0=8",
    "certify.noise_batch=64",
]
PER_EXPERIMENT = {
    "digits": ["certify.noise_batch=1280"],  # 20 points per forward pass, not 1
    "synthetic_exact": ["dataset.separation=3.0", "dataset.n_train=300", "dataset.n_test=200"],
    "eps_controlled": ["dataset.nu=5", "dataset.n_train=300", "dataset.n_test=200"],
    "cifar10_vit": ["certify.sigma=0.25", "encoder.weights=random", "encoder.image_size=32"],
    "cifar10_resnet50": ["certify.sigma=0.5", "encoder.weights=random", "encoder.image_size=32"],
    "imagenet_vit": [
        "certify.sigma=0.5",
        "encoder.weights=random",
        "encoder.image_size=32",
        "dataset.skip=3",
        "dataset.train_per_class=4",
    ],
    "digits_lipschitz": ["encoder.epochs=3", "encoder.width=32"],
    "fashion_mnist": ["dataset.fallback_roots=[]", "certify.noise_batch=640"],
    "fashion_mnist_lipschitz": [
        "dataset.fallback_roots=[]",
        "encoder.epochs=2",
        "encoder.width=32",
        "encoder.latent_dim=8",
        "encoder.train_batch_size=50",
    ],
    "fashion_mnist_cnn": [
        "dataset.fallback_roots=[]",
        "encoder.epochs=1",
        "encoder.channels=[4,8]",
        "encoder.latent_dim=16",
    ],
    # Tiny random UNets stand in for the diffusion models (written by fake_data).
    "cifar10_vit_dds": ["certify.sigma=0.25", "encoder.weights=random", "encoder.image_size=32"],
    "imagenet_vit_dds": [
        "certify.sigma=0.5",
        "encoder.weights=random",
        "encoder.image_size=32",
        "dataset.skip=3",
        "dataset.train_per_class=4",
        "denoiser.image_size=32",  # the tiny UNet runs at 32 px, not on 224 px crops
    ],
}


def test_every_experiment_config_is_covered():
    assert set(PER_EXPERIMENT) == {p.stem for p in (CONFIGS / "experiment").glob("*.yaml")}


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root / "cifar10")
    write_imagenet(root / "imagenet")
    write_idx(root / "fashion_mnist")
    diffusers = pytest.importorskip("diffusers")
    for name in ("ddpm-cifar10-32", "imagenet-256-uncond"):
        torch.manual_seed(0)
        diffusers.UNet2DModel(
            sample_size=32,
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        ).save_pretrained(root / "denoisers" / name)
    return root


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("experiment", sorted(PER_EXPERIMENT))
def test_experiment_runs_as_a_sweep_on_tiny_data(experiment, tmp_path, fake_data):
    sweep = tmp_path / "sweep"
    gmcert_run(
        "-m",
        f"experiment={experiment}",
        f"hydra.sweep.dir={sweep}",
        f"paths.data_dir={fake_data}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *TINY,
        *PER_EXPERIMENT[experiment],
        cwd=tmp_path,
        timeout=900,
    )
    jobs = [p.parent for p in sweep.rglob("certified_accuracy.csv")]
    failed = list(sweep.rglob("failed.json"))
    assert jobs and not failed, [f.read_text() for f in failed]
    table = pd.read_csv(jobs[0] / "certified_accuracy.csv")
    assert "closed_form" in set(table["method"])
    if experiment.startswith(("cifar10", "imagenet")):
        expected = {"smoothing_gmm_clean", "smoothing_probe_clean"}
        if experiment != "imagenet_vit_dds":  # Carlini et al.'s off-the-shelf heads only
            expected = {"smoothing_gmm", "smoothing_probe"}
        assert expected <= set(table["method"])
        # No honest Lipschitz bound for a random deep encoder: latent units, and labelled so.
        assert table.loc[table["method"] == "closed_form", "space"].eq("latent").all()
        assert table.loc[table["method"].str.startswith("smoothing"), "space"].eq("input").all()
    if experiment.startswith("cifar10"):
        assert "cohen2019_published" in set(table["method"])
    result = report([sweep], tmp_path / "report")
    assert {r.status for r in result["runs"]} == {"complete"}


# The experiments on embedded data, in-process: the fast suite still runs each config's job.
# The attack stage has its own tests (test_attack.py, test_input_attack.py).
IN_PROCESS = {
    "digits": [
        "certify.methods=[closed_form,smoothing_gmm]",
        "divergence.enabled=false",
        "attack.enabled=false",
    ],
    "synthetic_exact": ["attack.enabled=false"],
    "eps_controlled": ["attack.enabled=false"],
}


@pytest.mark.e2e
@pytest.mark.parametrize("experiment", sorted(IN_PROCESS))
def test_embedded_experiment_runs_in_process(experiment, make_cfg):
    cfg = make_cfg(
        f"experiment={experiment}",
        *TINY,
        *PER_EXPERIMENT[experiment],
        *IN_PROCESS[experiment],
    )
    metrics = run(cfg)
    table = pd.read_csv(f"{cfg.paths.output_dir}/certified_accuracy.csv")
    closed = table[table["method"] == "closed_form"]
    assert closed["radius"].tolist() == list(cfg.certify.radii)
    assert closed["certified_accuracy"].is_monotonic_decreasing
    assert metrics["methods"]["closed_form"]["clean_accuracy"] > 0.5
    if cfg.divergence.enabled:
        assert "verdict" in metrics["divergence"]
