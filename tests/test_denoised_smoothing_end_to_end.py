"""Denoised smoothing through whole runs: denoiser=none is untouched, an identity denoiser
changes nothing (byte for byte), the noise-trained heads see the denoiser, a tiny diffusion
model runs on fake CIFAR-10 through the real loading code, and the dds experiments stop with
one clear line when the denoiser's weights are missing."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import QUICK, gmcert_run, write_cifar10

from gmcert.pipeline import run

# Digits, a few points, small n: smoothing methods only, nothing else.
QUICK_DIGITS = [
    *QUICK,
    "certify.methods=[smoothing_probe,smoothing_gmm_clean]",
    "certify.stop=12",
    "certify.n=200",
    "certify.n0=20",
    "certify.noise_batch=400",
    "certify.noise_copies=1",
]

SEEN = {"images": 0}


def recording_identity():
    """An identity denoiser that counts the images it is given."""

    class Recording(torch.nn.Module):
        def forward(self, x):
            SEEN["images"] += len(x)
            return x

    return Recording()


def predictions(cfg) -> pd.DataFrame:
    table = pd.read_csv(f"{cfg.paths.output_dir}/predictions.csv")
    return table.drop(columns="seconds").sort_values(["method", "index"], ignore_index=True)


@pytest.mark.e2e
def test_identity_denoiser_leaves_every_certificate_unchanged(tmp_path, make_cfg):
    plain = make_cfg(*QUICK_DIGITS)
    run(plain)
    identity = make_cfg(*QUICK_DIGITS, "denoiser=custom", "denoiser.builder=torch.nn:Identity")
    identity.paths.output_dir = str(tmp_path / "identity")
    run(identity)
    pd.testing.assert_frame_equal(predictions(identity), predictions(plain))


@pytest.mark.e2e
def test_noise_trained_heads_are_fitted_through_the_denoiser(tmp_path, make_cfg):
    cfg = make_cfg(
        *QUICK_DIGITS,
        "certify.methods=[smoothing_probe]",
        "denoiser=custom",
        f"denoiser.builder={__name__}:recording_identity",
    )
    SEEN["images"] = 0
    run(cfg)
    n_train, n_certified = 1437, 12  # digits' train split; certify.stop
    assert SEEN["images"] == n_train * 1 + n_certified * (20 + 200)


@pytest.mark.slow
@pytest.mark.e2e
def test_tiny_diffusion_model_runs_end_to_end_on_fake_cifar10(tmp_path, make_cfg):
    diffusers = pytest.importorskip("diffusers")
    write_cifar10(tmp_path / "data" / "cifar10")
    torch.manual_seed(0)
    folder = tmp_path / "denoisers" / "tiny"
    diffusers.DDPMPipeline(
        unet=diffusers.UNet2DModel(
            sample_size=32,
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        ),
        scheduler=diffusers.DDPMScheduler(),
    ).save_pretrained(folder)
    cfg = make_cfg(
        *QUICK,
        "dataset=cifar10",
        "dataset.skip=4",
        "encoder=resnet18",
        "encoder.weights=random",
        "encoder.image_size=32",
        "certify.methods=[smoothing_gmm,smoothing_probe_clean]",
        "certify.sigma=0.5",
        "certify.n=32",
        "certify.n0=8",
        "certify.noise_batch=64",
        "certify.noise_copies=1",
        "attack=none",
        "denoiser=diffusion",
        f"denoiser.weights={folder}",
        "denoiser.max_batch=32",
    )
    metrics = run(cfg)
    table = predictions(cfg)
    assert set(table["method"]) == {"smoothing_gmm", "smoothing_probe_clean"}
    assert len(table) == 2 * 10 and (table["radius_input"] >= 0).all()
    assert metrics["methods"]["smoothing_gmm"]["sigma"] == 0.5


@pytest.mark.parametrize(
    "experiment, folder",
    [("cifar10_vit_dds", "ddpm-cifar10-32"), ("imagenet_vit_dds", "imagenet-256-uncond")],
)
def test_dds_experiments_compose(experiment, folder, make_cfg, tmp_path):
    cfg = make_cfg(f"experiment={experiment}")
    assert cfg.denoiser.name == "diffusion"
    assert cfg.denoiser.weights == str(tmp_path / "data" / "denoisers" / folder)
    assert (cfg.certify.n, cfg.certify.n0, cfg.certify.alpha) == (100000, 100, 0.001)
    assert cfg.dataset.skip == {"cifar10_vit_dds": 20, "imagenet_vit_dds": 100}[experiment]


@pytest.mark.slow
def test_missing_denoiser_weights_stop_the_run_with_one_line(tmp_path):
    pytest.importorskip("diffusers")
    data = tmp_path / "data"
    write_cifar10(data / "cifar10")
    proc = gmcert_run(
        "experiment=cifar10_vit_dds",
        f"paths.data_dir={data}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "encoder.weights=random",
        "encoder.image_size=32",
        cwd=tmp_path,
        status=2,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gmcert: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert str(data / "denoisers" / "ddpm-cifar10-32") in errors[0]
    assert "google/ddpm-cifar10-32" in errors[0]
