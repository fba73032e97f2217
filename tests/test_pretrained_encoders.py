"""Pretrained encoders and their registry, on random-init networks at small sizes (no downloads).

Covers: shapes and attributes, normalisation and resize inside the module, weight files
(round trip with weights_only=True, checkpoint wrappers, mismatches), the missing-default-
weights message, optional packages, and the spectral Lipschitz bound being a true upper bound
(dense exact norms per layer; random pairs and a gradient attack on whole networks).
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS
from torch import nn

from gmcert.encoders import ENCODERS, build_encoder, spectral
from gmcert.encoders.hub_models import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip, dinov2
from gmcert.encoders.torchvision_models import resnet, vit
from gmcert.encoders.wrapper import IMAGENET_MEAN, IMAGENET_STD, BuildOptions, PretrainedEncoder

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


@pytest.fixture(scope="module")
def resnet50_32():
    torch.manual_seed(0)
    return resnet("resnet50", BuildOptions(weights=None, image_size=32))


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial eval-mode BN statistics, so folding BN into convs is actually tested."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


# --------------------------------------------------------------------------------------------
# Shapes, attributes, normalisation
# --------------------------------------------------------------------------------------------


def test_resnet50_random_small(resnet50_32, caplog):
    enc = resnet50_32
    assert enc.name == "resnet50" and enc.latent_dim == 2048 and enc.input_size == (32, 32)
    assert enc.lipschitz is None and enc.weights_source == "random"
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert enc(x).shape == (2, 2048)
        assert enc(torch.rand(3, 3, 20, 24)).shape == (3, 2048)  # resized inside
    with caplog.at_level(logging.WARNING, logger="gmcert.encoders.weights"):
        resnet("resnet18", BuildOptions(weights="random", image_size=32))
    assert "NOT a real experiment" in caplog.text
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.rand(3, 32, 32))


def test_vit_random_small():
    torch.manual_seed(0)
    enc = vit(BuildOptions(weights=None, image_size=32))
    assert enc.name == "vit_b_16" and enc.latent_dim == 768 and enc.input_size == (32, 32)
    with torch.inference_mode():
        z = enc(torch.rand(2, 3, 64, 64))
    assert z.shape == (2, 768)
    # The class token after the final LayerNorm: per-sample mean ~ LN bias (zero at init).
    assert torch.allclose(z.mean(dim=1), torch.zeros(2), atol=1e-4)
    with pytest.raises(ValueError, match="multiple of the 16"):
        vit(BuildOptions(weights=None, image_size=30))


def test_normalisation_and_resize_are_inside(resnet50_32):
    enc = resnet50_32
    x = torch.rand(2, 3, 24, 24)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    resized = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=False)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc.backbone((resized - mean) / std))
    # normalise/resize constants are not weights: the wrapper's state dict is the backbone's.
    assert all(k.startswith("backbone.") for k in enc.state_dict())


def test_frozen_eval_and_speed_friendly():
    torch.manual_seed(0)
    enc = resnet("resnet18", BuildOptions(weights=None, image_size=32))
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = enc(x)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = enc(x.contiguous(memory_format=torch.channels_last))
    assert low.shape == ref.shape
    assert torch.allclose(low.float(), ref, rtol=0.1, atol=0.1 * float(ref.abs().max()))
    # Gradients w.r.t. the input still flow (attacks need them).
    xg = x.clone().requires_grad_(True)
    enc(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def test_state_dict_round_trip(tmp_path):
    """torchvision-format files (with head), wrapper state dicts and DDP checkpoints load."""
    from torchvision.models import resnet18 as tv_resnet18

    torch.manual_seed(1)
    reference = tv_resnet18(weights=None)
    _randomise_bn(reference)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    enc = resnet("resnet18", BuildOptions(weights=str(path), image_size=32))
    assert enc.weights_source == str(path)
    x = torch.rand(2, 3, 32, 32)
    reference.fc = nn.Identity()
    reference.eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference((x - mean) / std)
        torch.testing.assert_close(enc(x), expected)
        # The encoder's own state dict ("backbone." keys) under DDP's "module." prefix, in a
        # training-checkpoint dict.
        ddp = {f"module.{k}": v for k, v in enc.state_dict().items()}
        wrapped = {"epoch": 3, "state_dict": ddp}
        torch.save(wrapped, tmp_path / "ckpt.pth")
        again = resnet("resnet18", BuildOptions(weights=tmp_path / "ckpt.pth", image_size=32))
        torch.testing.assert_close(again(x), expected)


class OpaqueObject:
    """A pickled Python object: what weights_only=True loading must refuse."""


def test_weight_file_errors(tmp_path):
    from torchvision.models import resnet18 as tv_resnet18

    with pytest.raises(FileNotFoundError, match="encoder.weights="):
        resnet("resnet50", BuildOptions(weights=str(tmp_path / "missing.pth"), image_size=32))
    torch.save(tv_resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="do not fit") as err:
        resnet("resnet50", BuildOptions(weights=str(tmp_path / "r18.pth"), image_size=32))
    assert "missing: " in str(err.value) and "shape mismatch: " in str(err.value)

    torch.save({"obj": OpaqueObject()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        resnet("resnet18", BuildOptions(weights=str(tmp_path / "pickled.pth"), image_size=32))
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match="no tensor state dict"):
        resnet("resnet18", BuildOptions(weights=str(tmp_path / "meta.pth"), image_size=32))


def test_missing_default_weights_name_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    with pytest.raises(FileNotFoundError, match="gmcert never downloads") as err:
        resnet("resnet50", BuildOptions(image_size=32))
    message = str(err.value)
    assert str(expected) in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert "encoder.weights=/path/to/file.pth" in message
    with pytest.raises(FileNotFoundError, match="resnet50-0676ba61.pth"):
        resnet("resnet50", BuildOptions(weights="IMAGENET1K_V1", image_size=32))
    with pytest.raises(FileNotFoundError, match="vit_b_16-c867db91.pth"):
        vit(BuildOptions())
    assert not expected.exists()  # nothing was downloaded


def test_default_weights_load_from_the_hub_cache(tmp_path, monkeypatch):
    from torchvision.models import resnet18 as tv_resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(2)
    reference = tv_resnet18(weights=None)
    torch.save(reference.state_dict(), cached)
    enc = resnet("resnet18", BuildOptions(image_size=32))
    assert str(cached) in enc.weights_source
    torch.testing.assert_close(enc.backbone.conv1.weight, reference.conv1.weight)


def test_vit_weights_tied_to_image_size(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "vit_b_16-c867db91.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placeholder")  # the size check comes before reading the file
    with pytest.raises(ValueError, match="image_size=224"):
        vit(BuildOptions(image_size=32))


@pytest.mark.slow
def test_vit_state_dict_round_trip(tmp_path):
    torch.manual_seed(3)
    enc = vit(BuildOptions(weights=None, image_size=32))
    torch.save(enc.state_dict(), tmp_path / "vit.pth")
    again = vit(BuildOptions(weights=tmp_path / "vit.pth", image_size=32))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), enc(x))
    with pytest.raises(ValueError, match="shape mismatch"):
        vit(BuildOptions(weights=tmp_path / "vit.pth", image_size=48))


# --------------------------------------------------------------------------------------------
# Registry and optional packages
# --------------------------------------------------------------------------------------------


def test_registry():
    trained = {name for name, spec in ENCODERS.items() if spec.trained}
    pretrained = {name for name, spec in ENCODERS.items() if spec.pretrained}
    assert pretrained == set(ENCODERS) - {"identity", "pca", *trained}
    with pytest.raises(ValueError, match=r"unknown encoder 'resnet5O'; choose one of \[.*'vit'"):
        build_encoder("resnet5O")
    enc = build_encoder("resnet18", weights=None, image_size=32)
    assert isinstance(enc, PretrainedEncoder) and enc.latent_dim == 512


def test_every_registered_encoder_has_a_config():
    """One registry, nothing unreachable: each name is a configs/encoder/<name>.yaml option."""
    assert {p.stem for p in (CONFIGS / "encoder").glob("*.yaml")} == set(ENCODERS)


@pytest.mark.parametrize(
    ("name", "module", "pip_name"),
    [("clip", "open_clip", "open-clip-torch"), ("dinov2", "timm", "timm")],
)
def test_optional_encoders_say_how_to_install(monkeypatch, name, module, pip_name):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=f"pip install {pip_name}"):
        build_encoder(name, weights=None)


class _TinyTower(nn.Module):
    def __init__(self, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(3, out_dim)

    def forward(self, x):
        return self.proj(x.mean(dim=(2, 3)))


def test_optional_encoder_wiring_with_stand_in_packages(monkeypatch, tmp_path):
    """Exercise the clip/dinov2 builders against minimal stand-ins of the library calls."""
    created = []

    def create_model(name, pretrained=None, **kwargs):
        created.append((name, pretrained, kwargs))
        full = types.SimpleNamespace(visual=_TinyTower(16))
        full.visual.image_size = 32
        full.visual.output_dim = 16
        full.visual.image_mean, full.visual.image_std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        return full

    monkeypatch.setitem(sys.modules, "open_clip", types.SimpleNamespace(create_model=create_model))
    enc = clip(BuildOptions(weights=None))
    assert enc.latent_dim == 16 and enc.input_size == (32, 32)
    assert enc(torch.rand(2, 3, 40, 40)).shape == (2, 16)
    assert created[-1][1] is None
    with pytest.raises(ValueError, match="allow_download"):
        clip(BuildOptions())
    with pytest.raises(ValueError, match="attention"):
        clip(BuildOptions(weights=None, lipschitz="spectral"))
    weight_file = tmp_path / "open_clip_pytorch_model.bin"
    weight_file.write_bytes(b"x")
    clip(BuildOptions(weights=weight_file))
    assert created[-1][1] == str(weight_file)
    clip(BuildOptions(), allow_download=True)
    assert created[-1][1] == "openai"  # the pretrained tag, through open_clip's hub loader
    # build_encoder hands the builder's own keywords past the shared BuildOptions.
    enc = build_encoder("clip", weights=None, image_size=48, model="RN50", allow_download=True)
    assert enc.name == "clip:RN50" and created[-1][:2] == ("RN50", None)
    assert created[-1][2] == {"force_image_size": 48}

    def timm_create(name, pretrained=False, **kwargs):
        created.append((name, pretrained, kwargs))
        model = _TinyTower(24)
        model.num_features = 24
        model.pretrained_cfg = {
            "input_size": (3, 518, 518),
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        }
        return model

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=timm_create))
    enc = dinov2(BuildOptions(weights=None))
    assert enc.latent_dim == 24 and enc.input_size == (224, 224)
    assert created[-1][2]["img_size"] == 224 and created[-1][2]["num_classes"] == 0
    with pytest.raises(ValueError, match="multiple of 14"):
        dinov2(BuildOptions(weights=None, image_size=100))
    dinov2(BuildOptions(weights=weight_file))
    assert created[-1][1] is True
    assert created[-1][2]["pretrained_cfg_overlay"] == {"file": str(weight_file)}
    enc = build_encoder("dinov2", weights=None, model="vit_base_patch14_dinov2", image_size=28)
    assert enc.name == "dinov2:vit_base_patch14_dinov2" and enc.input_size == (28, 28)


# --------------------------------------------------------------------------------------------
# Lipschitz bounds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_max_singular_value_brackets_the_truth(dtype):
    gen = torch.Generator().manual_seed(0)
    for shape in [(50, 6, 9), (7, 40, 12), (3, 64, 64)]:
        mats = torch.randn(shape, generator=gen, dtype=dtype)
        mats[1] = 0  # zero matrices are allowed
        truth = float(torch.linalg.matrix_norm(mats, 2).max())
        upper, lower = spectral._max_singular_value(mats)
        assert lower <= truth * (1 + 1e-12) and truth <= upper <= truth * (1 + 1e-3)
    # Equal singular values (the worst case for power iteration) and the all-zero batch.
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    upper, _ = spectral._max_singular_value((3 * q)[None])
    assert 3 <= upper <= 3 * (1 + 1e-3)
    assert spectral._max_singular_value(torch.zeros(4, 3, 3, dtype=torch.float64)) == (0.0, 0.0)


def _dense_norm(fn, shape) -> float:
    """Exact l2 operator norm of a linear map on inputs of ``shape``, via its dense matrix."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
    matrix = fn(basis).reshape(n, -1)
    return float(torch.linalg.matrix_norm(matrix.detach().T, 2))


@pytest.mark.parametrize(
    ("c_in", "c_out", "k", "stride", "padding", "dilation", "groups", "hw", "max_ratio"),
    [
        (3, 4, 3, 1, 1, 1, 1, (6, 7), 1.2),
        (4, 6, 3, 2, 1, 1, 2, (8, 8), 1.2),
        (3, 8, 7, 2, 3, 1, 1, (12, 12), 1.3),
        (3, 5, 1, 2, 0, 1, 1, (5, 5), 1.01),
        (2, 2, 3, 1, "same", 1, 1, (5, 6), 1.3),
        (2, 4, 3, 3, 1, 2, 1, (11, 10), 1.3),
        (2, 3, 5, 1, 2, 2, 1, (9, 6), None),  # dilated on a tiny grid: valid but loose
    ],
)
def test_conv_bound_vs_dense_exact_norm(
    c_in, c_out, k, stride, padding, dilation, groups, hw, max_ratio
):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, k, stride, padding, dilation, groups, bias=False).double()
    scale = torch.rand(c_out, dtype=torch.float64) + 0.5
    exact = _dense_norm(lambda x: conv(x) * scale.view(1, -1, 1, 1), (c_in, *hw))
    bound = spectral.conv2d_norm_bound(
        conv.weight,
        hw,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        out_scale=scale,
    )
    assert bound >= exact
    if max_ratio is not None:
        assert bound <= exact * max_ratio


@pytest.mark.parametrize(
    "layer",
    [
        nn.AvgPool2d(3, 2, 1),
        nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        nn.AdaptiveAvgPool2d(1),
        nn.AdaptiveAvgPool2d((3, 2)),
    ],
)
def test_linear_pooling_bounds_are_exact(layer):
    exact = _dense_norm(layer, (1, 7, 6))
    bound, _ = spectral._module_bound(layer, (1, 7, 6), "cpu")
    assert exact <= bound <= exact * (1 + 1e-3)


@pytest.mark.parametrize(("src", "dst"), [((5, 7), (12, 9)), ((8, 8), (3, 5)), ((4, 4), (28, 28))])
def test_resize_norm_is_exact(src, dst):
    exact = _dense_norm(
        lambda x: F.interpolate(x, size=dst, mode="bilinear", align_corners=False, antialias=False),
        (1, *src),
    )
    assert exact <= spectral.bilinear_resize_norm(src, dst) <= exact * (1 + 1e-3)


def test_maxpool_bound_is_attained():
    """3x3/stride-2 max pooling: one pixel in 4 windows moves 4 outputs, ratio exactly 2."""
    pool = nn.MaxPool2d(3, 2, 1)
    bound, _ = spectral._module_bound(pool, (1, 8, 8), "cpu")
    x = torch.zeros(1, 1, 8, 8)
    x2 = x.clone()
    x2[0, 0, 3, 3] = 1.0
    ratio = float((pool(x2) - pool(x)).norm() / (x2 - x).norm())
    assert ratio == pytest.approx(2.0) and bound == pytest.approx(2.0)


def _tiny_resnet() -> nn.Module:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    def down(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 1, 2, bias=False), nn.BatchNorm2d(c_out))

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        BasicBlock(8, 8),
        BasicBlock(8, 12, stride=2, downsample=down(8, 12)),
        Bottleneck(12, 4, stride=2, downsample=down(12, 16), base_width=64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 6),
    )


def _tiny_plain() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, 1, 1),
        nn.BatchNorm2d(6),
        nn.LeakyReLU(0.1),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 8, 3, 2, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
        nn.BatchNorm1d(10),
        nn.ReLU(),
        nn.Linear(10, 5),
    )


def _wrap(backbone: nn.Module, latent_dim: int, source: tuple[int, int]) -> PretrainedEncoder:
    _randomise_bn(backbone)
    enc = PretrainedEncoder(
        backbone,
        name="tiny",
        latent_dim=latent_dim,
        input_size=(16, 16),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    return enc.double().set_lipschitz("spectral", source_size=source)


def _attack_ratio(enc: nn.Module, shape, steps: int = 100, starts: int = 3) -> float:
    """Gradient ascent on ||f(x + d) - f(x)|| / ||d|| over x and d: the best ratio found."""
    best = 0.0
    gen = torch.Generator().manual_seed(0)
    for s in range(starts):
        x = torch.rand(1, *shape, generator=gen, dtype=torch.float64).requires_grad_(True)
        scale = 10.0 ** -(s % 3)  # from large to infinitesimal perturbations
        d = torch.randn(1, *shape, generator=gen, dtype=torch.float64) * scale
        d.requires_grad_(True)
        opt = torch.optim.Adam([x, d], lr=0.02 * scale)
        for _ in range(steps):
            ratio = (enc(x + d) - enc(x)).norm() / d.norm()
            best = max(best, float(ratio.detach()))
            opt.zero_grad()
            (-ratio).backward()
            opt.step()
    return best


@pytest.mark.parametrize(("make", "latent_dim"), [(_tiny_resnet, 6), (_tiny_plain, 5)])
def test_spectral_bound_is_an_upper_bound(make, latent_dim):
    torch.manual_seed(0)
    source = (12, 12)  # resized to 16x16 inside: the resize's norm is part of the bound
    enc = _wrap(make(), latent_dim, source)
    lip = enc.lipschitz
    assert enc.lipschitz_source == "spectral" and enc.lipschitz_input_size == source
    assert math.isfinite(lip) and lip > 0
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        x = torch.rand(256, 3, *source, generator=gen, dtype=torch.float64)
        x2 = x + torch.randn(x.shape, generator=gen, dtype=torch.float64) * 0.05
        x3 = torch.rand(x.shape, generator=gen, dtype=torch.float64)
        for other in (x2, x3):
            ratios = (enc(x) - enc(other)).norm(dim=1) / (x - other).flatten(1).norm(dim=1)
            assert float(ratios.max()) <= lip
    attacked = _attack_ratio(enc, (3, *source))
    assert 0 < attacked <= lip
    # The bound must refuse inputs of another size: the resize factor would be wrong.
    with pytest.raises(ValueError, match="source_size"):
        enc(torch.rand(1, 3, 16, 16, dtype=torch.float64))


def test_grey_images_are_replicated_and_the_bound_grows_by_sqrt3():
    """Grey (B, 1, H, W) encodes as its RGB replication; the bound of the grey map is the
    RGB map's times sqrt(3) (declared or spectral) and holds against an attack on grey input;
    a bound made for one channel count refuses the other."""
    torch.manual_seed(0)
    source = (12, 12)
    rgb = _wrap(_tiny_plain(), 5, source)
    grey = copy.deepcopy(rgb).set_lipschitz("spectral", source_size=source, source_channels=1)
    assert grey.lipschitz == pytest.approx(math.sqrt(3) * rgb.lipschitz, rel=1e-12)
    x = torch.rand(4, 1, *source, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(grey(x), rgb(x.expand(-1, 3, -1, -1)))
    assert 0 < _attack_ratio(grey, (1, *source)) <= grey.lipschitz
    declared = copy.deepcopy(rgb).set_lipschitz(2.0, source_channels=1)
    assert declared.lipschitz == pytest.approx(2 * math.sqrt(3))
    with pytest.raises(ValueError, match="source_channels=3"):
        declared(torch.rand(1, 3, *source, dtype=torch.float64))
    with pytest.raises(ValueError, match="source_channels=1"):
        rgb(x)


def test_spectral_bound_refusals():
    enc = vit(BuildOptions(weights=None, image_size=32))
    with pytest.raises(ValueError, match="attention"):
        enc.set_lipschitz("spectral")
    with pytest.raises(ValueError, match="no honest Lipschitz bound"):
        spectral.spectral_lipschitz(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU()).eval(), (3, 8, 8))
    with pytest.raises(ValueError, match="training mode"):
        spectral.spectral_lipschitz(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), (3, 8, 8))
    with pytest.raises(ValueError, match="positive"):
        resnet("resnet18", BuildOptions(weights=None, image_size=32, lipschitz=-1.0))
    enc = vit(
        BuildOptions(weights=None, image_size=32, lipschitz="3.5")
    )  # as typed on a command line
    assert enc.lipschitz == 3.5 and enc.lipschitz_source == "declared"
    with pytest.raises(ValueError, match="'spectral'"):
        enc.set_lipschitz("spectal")
    assert enc(torch.rand(1, 3, 20, 20)).shape == (1, 768)  # no size lock for declared bounds


@pytest.mark.slow
def test_resnet50_spectral_bound_small(resnet50_32):
    """The full ResNet-50 path (bottlenecks, downsampling, stem) on 32 px inputs."""
    enc = resnet50_32
    _randomise_bn(enc.backbone)
    lip = enc.spectral_lipschitz(source_size=(24, 24))
    assert math.isfinite(lip) and lip > 0
    with torch.no_grad():
        x = torch.rand(64, 3, 24, 24)
        x2 = torch.rand(64, 3, 24, 24)
        ratios = (enc(x) - enc(x2)).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)
    assert float(ratios.max()) <= lip


def test_pipeline_registry_passes_config_options():
    """gmcert.encoders.build_encoder hands the config's options (weights, lipschitz,
    image_size) to these builders unchanged; allow_download only reaches the hub libraries
    (torchvision weights are never downloaded)."""
    enc = build_encoder(
        "resnet50", weights="random", lipschitz=None, image_size=32, allow_download=False
    )
    assert isinstance(enc, PretrainedEncoder) and enc.latent_dim == 2048
    enc = build_encoder("vit", weights="random", lipschitz=2.0, image_size=32, allow_download=True)
    assert enc.lipschitz == 2.0 and enc.lipschitz_source == "declared"
    # gmcert.features adds source_size and device for lipschitz="spectral".
    enc = build_encoder(
        "resnet18",
        weights="random",
        lipschitz="spectral",
        image_size=32,
        allow_download=False,
        source_size=(24, 24),
        device=torch.device("cpu"),
    )
    assert enc.lipschitz_source == "spectral" and enc.lipschitz_input_size == (24, 24)
    with pytest.raises(TypeError, match="n_components"):
        build_encoder("resnet18", weights="random", image_size=32, n_components=3)


@pytest.mark.parametrize(
    ("field", "value"), [("image_size", 0), ("image_size", (32,)), ("source_size", (24, 0))]
)
def test_build_options_check_sizes_up_front(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive int"):
        BuildOptions(**{field: value})
    assert BuildOptions(source_size=24).source_size == 24  # one side stands for a square
