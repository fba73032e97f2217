"""Denoisers for denoised smoothing (gmcert.denoisers): the timestep rule against its closed
form, the one-shot reconstruction against an oracle network, the builders' contract, safe and
explained weight loading. CPU, offline; the diffusers-backed tests skip without diffusers."""

from __future__ import annotations

import dataclasses
import json
import pickle
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gmcert.certify.smoothing import SmoothedClassifier, radius_cap
from gmcert.config import DenoiserConfig
from gmcert.denoisers import build_denoiser, check_denoiser_options
from gmcert.denoisers.batched import BatchedDenoiser
from gmcert.denoisers.diffusion import (
    OneShotDiffusionDenoiser,
    matching_timestep,
    removed_noise_std,
)
from gmcert.denoisers.weights import load_unet_folder, read_weight_file

CPU = torch.device("cpu")


def options(**fields):
    return {**dataclasses.asdict(DenoiserConfig()), **fields}


def ddpm_alphas_cumprod() -> np.ndarray:
    """Ho et al.'s schedule in float64: betas linear from 1e-4 to 0.02 over 1000 steps."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))


def tiny_unet(*, out_channels: int = 3, sample_size: int = 32):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


@pytest.fixture
def unet_folder(tmp_path):
    folder = tmp_path / "unet"
    tiny_unet().save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- timestep


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_matching_timestep_is_the_closest_step_of_the_ddpm_schedule(sigma):
    abar = ddpm_alphas_cumprod()
    target = 1.0 / (1.0 + 4.0 * sigma**2)  # (1 - abar) / abar = (2 sigma)^2
    t = matching_timestep(abar, sigma)
    # abar decreases; the crossing step and the one before it are the only candidates.
    crossing = int(np.searchsorted(-abar, -target))
    candidates = [s for s in (crossing - 1, crossing) if 0 <= s < len(abar)]
    assert t == min(candidates, key=lambda s: abs(abar[s] - target))
    assert abs(abar[t] - target) == np.abs(abar - target).min()
    assert removed_noise_std(abar[t]) == pytest.approx(sigma, rel=0.02)


def test_matching_timestep_known_values_and_the_ends_of_the_schedule():
    abar = ddpm_alphas_cumprod()
    assert matching_timestep(abar, 0.5) == 258  # abar = 0.5 (the run's log says 0.500245)
    assert matching_timestep(abar, 1e-4) == 0
    assert matching_timestep(abar, 1e3) == len(abar) - 1


def test_built_denoiser_uses_the_folder_schedule_or_ddpm(tmp_path, unet_folder):
    pytest.importorskip("diffusers")
    denoiser = build_denoiser(
        options(name="diffusion", weights=str(unet_folder)), sigma=0.25, device=CPU
    )
    inner = denoiser.inner
    assert inner.timestep == matching_timestep(ddpm_alphas_cumprod(), 0.25)
    assert inner.abar == pytest.approx(ddpm_alphas_cumprod()[inner.timestep], rel=1e-5)
    # A scheduler config beside the model wins over DDPM's defaults; options win over both.
    (unet_folder / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2"})
    )
    diffusers = pytest.importorskip("diffusers")
    cosine = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    built = build_denoiser(
        options(name="diffusion", weights=str(unet_folder)), sigma=0.25, device=CPU
    )
    assert built.inner.timestep == matching_timestep(cosine.numpy(), 0.25)
    forced = build_denoiser(
        options(name="diffusion", weights=str(unet_folder), timestep=7), sigma=0.25, device=CPU
    )
    assert forced.inner.timestep == 7
    with pytest.raises(ValueError, match="past the schedule"):
        build_denoiser(
            options(name="diffusion", weights=str(unet_folder), timestep=1000),
            sigma=0.25,
            device=CPU,
        )


class ZeroNoise(torch.nn.Module):
    """A noise-prediction network that always predicts no noise (learned-variance shaped)."""

    def forward(self, x_t, t):
        return torch.zeros(len(x_t), 2 * x_t.shape[1], *x_t.shape[2:])


def test_diffusion_network_from_a_builder_with_its_own_schedule():
    pytest.importorskip("diffusers")
    fields = {"beta_start": 0.001, "beta_end": 0.05, "num_train_timesteps": 200}
    built = build_denoiser(
        options(name="diffusion", builder=f"{__name__}:ZeroNoise", **fields), sigma=1.0, device=CPU
    )
    betas = np.linspace(0.001, 0.05, 200, dtype=np.float64)
    assert built.inner.timestep == matching_timestep(np.cumprod(1.0 - betas), 1.0)
    noisy = torch.rand(2, 3, 8, 8)
    # No predicted noise: x0_hat = x_t / sqrt(abar) = 2 noisy - 1, back to noisy itself.
    torch.testing.assert_close(built(noisy), noisy)


# ----------------------------------------------------------------------------- reconstruction


class OracleNetwork(torch.nn.Module):
    """Knows the clean images (in [-1, 1]) and returns exactly what a perfect network would
    predict at (x_t, t): the noise, the clean image, or v; optionally with learned-variance
    channels appended."""

    def __init__(self, clean, abar, prediction_type, learned_variance=False):
        super().__init__()
        self.clean, self.abar = clean, abar
        self.prediction_type, self.learned_variance = prediction_type, learned_variance
        self.timesteps = []

    def forward(self, x_t, t):
        self.timesteps.append(t)
        a = torch.tensor(self.abar, dtype=torch.float64)
        noise = (x_t.double() - a.sqrt() * self.clean) / (1 - a).sqrt()
        out = {
            "epsilon": noise,
            "sample": self.clean.expand_as(x_t),
            "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * self.clean,
        }[self.prediction_type].float()
        if self.learned_variance:
            out = torch.cat([out, torch.full_like(out, 123.0)], dim=1)
        return out


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("learned_variance", [False, True])
def test_oracle_network_recovers_the_clean_image(prediction_type, learned_variance):
    torch.manual_seed(0)
    sigma, abar = 0.5, 0.5
    clean = torch.rand(1, 3, 8, 8).clamp(0.05, 0.95)
    noisy = clean + sigma * torch.randn(6, 3, 8, 8)
    network = OracleNetwork(2.0 * clean.double() - 1.0, abar, prediction_type, learned_variance)
    denoiser = OneShotDiffusionDenoiser(
        network, abar=abar, timestep=11, prediction_type=prediction_type
    )
    out = denoiser(noisy)
    torch.testing.assert_close(out, clean.expand_as(out), atol=1e-5, rtol=0)
    assert network.timesteps[0].tolist() == [11] * 6


def test_reconstruction_is_clipped_to_pixel_range_and_resized_back():
    torch.manual_seed(0)

    class Zero(torch.nn.Module):
        def forward(self, x_t, t):
            return torch.zeros_like(x_t)

    denoiser = OneShotDiffusionDenoiser(Zero(), abar=0.2, timestep=3, image_size=4)
    noisy = 3.0 * torch.randn(2, 3, 16, 16)  # far outside [0, 1]
    out = denoiser(noisy)
    assert out.shape == noisy.shape
    assert out.min() >= 0.0 and out.max() <= 1.0


# ----------------------------------------------------------------------------- certificates


class Probe(torch.nn.Module):
    def __init__(self, dim, classes=3):
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(dim, classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


def smoothed(*stages, sigma=0.25):
    base = torch.nn.Sequential(*stages).eval()
    return SmoothedClassifier(base, 3, sigma, device=CPU, batch_size=64)


def test_identity_denoiser_gives_byte_identical_certificates():
    # The custom route with torch's own Identity module: exactly the none denoiser.
    identity = build_denoiser(
        options(name="custom", builder="torch.nn:Identity"), sigma=0.25, device=CPU
    )
    head = Probe(3 * 8 * 8)
    xs = torch.rand(5, 3, 8, 8)
    seeds = list(range(100, 105))
    plain = smoothed(head).certify_batch(xs, n0=20, n=300, alpha=0.01, seeds=seeds)
    denoised = smoothed(identity, head).certify_batch(xs, n0=20, n=300, alpha=0.01, seeds=seeds)
    strip = [dataclasses.replace(c, seconds=0.0) for c in plain]
    assert [dataclasses.replace(c, seconds=0.0) for c in denoised] == strip


class CleanOracle(torch.nn.Module):
    """Returns the one clean image it knows, whatever the noise: a perfect denoiser."""

    def __init__(self, clean):
        super().__init__()
        self.clean = clean

    def forward(self, x):
        return self.clean.expand_as(x).clone()


def test_perfect_denoiser_certifies_the_clean_prediction_at_the_radius_cap():
    torch.manual_seed(0)
    x = torch.rand(3, 8, 8)
    head = Probe(3 * 8 * 8)
    oracle = BatchedDenoiser(CleanOracle(x.unsqueeze(0)), name="oracle")
    cert = smoothed(oracle, head, sigma=0.5).certify(x, n0=20, n=500, alpha=0.001, seed=3)
    assert cert.prediction == int(head(x.unsqueeze(0)).argmax())
    assert cert.n_a == 500
    assert cert.radius == pytest.approx(radius_cap(0.5, 500, 0.001))


# ----------------------------------------------------------------------------- builders


def sigma_recorder(sigma):
    module = torch.nn.Identity()
    module.sigma = sigma
    return module


def wrong_shape():
    return torch.nn.Flatten()


def not_a_module():
    return 42


def test_custom_builder_gets_sigma_and_runs_in_eval_mode():
    built = build_denoiser(
        options(name="custom", builder=f"{__name__}:sigma_recorder"), sigma=0.75, device=CPU
    )
    assert isinstance(built, BatchedDenoiser) and built.inner.sigma == 0.75
    assert not any(m.training for m in built.modules())


@pytest.mark.parametrize(
    "builder, error, match",
    [
        (None, ValueError, "needs denoiser.builder"),
        ("no_colon", ValueError, "package.module:function"),
        ("no_such_package_xyz:f", ImportError, "cannot import"),
        ("torch.nn:NoSuchThing", ValueError, "no attribute"),
        (f"{__name__}:not_a_module", ValueError, "not a torch.nn.Module"),
    ],
)
def test_custom_builder_errors_name_the_fix(builder, error, match):
    with pytest.raises(error, match=match):
        build_denoiser(options(name="custom", builder=builder), sigma=0.25, device=CPU)


def test_denoiser_that_changes_the_shape_is_refused_when_called():
    built = build_denoiser(
        options(name="custom", builder=f"{__name__}:wrong_shape"), sigma=0.25, device=CPU
    )
    with pytest.raises(ValueError, match="same shape"):
        built(torch.rand(2, 3, 4, 4))


def test_custom_weights_are_loaded_strictly(tmp_path):
    source = torch.nn.Conv2d(3, 3, 1)
    torch.save(source.state_dict(), tmp_path / "conv.pt")
    built = build_denoiser(
        options(
            name="custom", builder=f"{__name__}:one_by_one_conv", weights=str(tmp_path / "conv.pt")
        ),
        sigma=0.25,
        device=CPU,
    )
    torch.testing.assert_close(built.inner.weight, source.weight)
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not fit"):
        build_denoiser(
            options(
                name="custom",
                builder=f"{__name__}:one_by_one_conv",
                weights=str(tmp_path / "bad.pt"),
            ),
            sigma=0.25,
            device=CPU,
        )


def one_by_one_conv():
    return torch.nn.Conv2d(3, 3, 1)


def test_micro_batches_give_the_same_images():
    torch.manual_seed(0)
    conv = one_by_one_conv().eval()
    x = torch.rand(10, 3, 4, 4)
    whole = BatchedDenoiser(conv, name="conv")(x)
    parts = BatchedDenoiser(conv, name="conv", max_batch=3)(x)
    torch.testing.assert_close(parts, whole)


# ----------------------------------------------------------------------------- options


def test_none_builds_nothing():
    assert build_denoiser(DenoiserConfig(), sigma=0.25, device=CPU) is None
    assert build_denoiser({"name": "none"}, sigma=0.25, device=CPU) is None


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"name": "bm3d"}, "unknown denoiser"),
        ({"name": "diffusion", "timestep": -1}, "timestep"),
        ({"name": "diffusion", "beta_start": 0.0}, "beta_start"),
        ({"name": "diffusion", "beta_start": 0.1, "beta_end": 0.01}, "must not exceed"),
        ({"name": "diffusion", "beta_schedule": "cosine"}, "beta_schedule"),
        ({"name": "diffusion", "prediction_type": "score"}, "prediction_type"),
        ({"name": "diffusion", "max_batch": 0}, "max_batch"),
        ({"name": "diffusion", "image_size": True}, "image_size"),
        ({"name": "diffusion", "bf16": "yes"}, "bf16"),
    ],
)
def test_bad_options_are_refused_before_anything_loads(fields, match):
    with pytest.raises(ValueError, match=match):
        check_denoiser_options(options(**fields))


def test_options_from_a_namespace_and_a_bad_sigma():
    with pytest.raises(ValueError, match="sigma"):
        build_denoiser(SimpleNamespace(name="none"), sigma=0.0, device=CPU)


# ----------------------------------------------------------------------------- weights


def test_diffusion_without_weights_says_what_to_put_where(tmp_path):
    pytest.importorskip("diffusers")
    with pytest.raises(ValueError, match="denoiser.weights=DIR.*google/ddpm-cifar10-32"):
        build_denoiser(options(name="diffusion"), sigma=0.25, device=CPU)
    missing = tmp_path / "ddpm-cifar10-32"
    with pytest.raises(
        FileNotFoundError, match="no such folder.*config.json.*google/ddpm-cifar10-32"
    ):
        build_denoiser(options(name="diffusion", weights=str(missing)), sigma=0.25, device=CPU)
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_unet_folder(missing)
    (missing / "config.json").write_text(json.dumps(dict(tiny_unet().config)))
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        load_unet_folder(missing)


def test_pipeline_layout_bin_weights_and_a_weight_file_path(tmp_path, unet_folder):
    diffusers = pytest.importorskip("diffusers")
    unet = tiny_unet()
    pipeline = tmp_path / "pipeline"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(pipeline)
    network, scheduler = load_unet_folder(pipeline)
    assert scheduler is not None and scheduler["num_train_timesteps"] == 1000
    for key, value in unet.state_dict().items():
        torch.testing.assert_close(network.state_dict()[key], value)
    # A .bin state dict (torch.save), named directly.
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((unet_folder / "config.json").read_text())
    torch.save(unet.state_dict(), binary / "diffusion_pytorch_model.bin")
    network, scheduler = load_unet_folder(binary / "diffusion_pytorch_model.bin")
    assert scheduler is None
    torch.testing.assert_close(network.conv_in.weight, unet.conv_in.weight)


class Payload:
    """Unpickling this creates ``path``: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pickled_code_in_weights_is_refused_and_never_runs(tmp_path, unet_folder):
    marker = tmp_path / "marker"
    crafted = tmp_path / "crafted.bin"
    with open(crafted, "wb") as f:
        pickle.dump({"conv_in.weight": Payload(marker)}, f, protocol=2)
    for load in (
        lambda: read_weight_file(crafted),
        lambda: build_denoiser(
            options(name="custom", builder=f"{__name__}:one_by_one_conv", weights=str(crafted)),
            sigma=0.25,
            device=CPU,
        ),
    ):
        with pytest.raises(ValueError, match=r"refused .*Unsupported global: GLOBAL \S*open\)"):
            load()
        assert not marker.exists()
    # The same file in a diffusers folder, in torch.save's zip format this time.
    torch.save({"conv_in.weight": Payload(marker)}, unet_folder / "diffusion_pytorch_model.bin")
    (unet_folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"Unsupported global: GLOBAL \S*open\)"):
        load_unet_folder(unet_folder)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    with open(crafted, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_missing_diffusers_names_the_extra(monkeypatch, unet_folder):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[diffusion\]"'):
        build_denoiser(options(name="diffusion", weights=str(unet_folder)), sigma=0.25, device=CPU)


def test_score_models_are_refused(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    folder = tmp_path / "ncsn"
    diffusers.UNet2DModel(
        sample_size=8,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        time_embedding_type="fourier",
    ).save_pretrained(folder)
    with pytest.raises(ValueError, match="fourier"):
        build_denoiser(options(name="diffusion", weights=str(folder)), sigma=0.25, device=CPU)


# ----------------------------------------------------------------------------- running


def test_tiny_unet_denoises_a_noise_batch_in_pixel_range(unet_folder):
    pytest.importorskip("diffusers")
    built = build_denoiser(
        options(name="diffusion", weights=str(unet_folder), max_batch=4), sigma=0.5, device=CPU
    )
    noisy = torch.rand(10, 3, 32, 32) + 0.5 * torch.randn(10, 3, 32, 32)
    out = built(noisy)
    assert out.shape == noisy.shape and out.dtype == noisy.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not out.requires_grad and not any(m.training for m in built.modules())
    # Deterministic: the only randomness in denoised smoothing is smoothing's own noise.
    torch.testing.assert_close(built(noisy), out)
    # Learned variance: a network with twice the output channels keeps the first half.
    twice = tiny_unet(out_channels=6)
    one_shot = OneShotDiffusionDenoiser(twice.eval(), abar=0.5, timestep=258)
    assert one_shot(noisy[:2]).shape == noisy[:2].shape


@pytest.mark.gpu
def test_bf16_on_cuda_matches_float32_on_cpu(unet_folder):
    pytest.importorskip("diffusers")
    cuda = torch.device("cuda")
    noisy = torch.rand(16, 3, 32, 32) + 0.25 * torch.randn(16, 3, 32, 32)
    reference = build_denoiser(
        options(name="diffusion", weights=str(unet_folder)), sigma=0.25, device=CPU
    )(noisy)
    fast = build_denoiser(
        options(name="diffusion", weights=str(unet_folder), bf16=True), sigma=0.25, device=cuda
    )(noisy.to(cuda))
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.cpu(), reference, atol=0.05, rtol=0)
