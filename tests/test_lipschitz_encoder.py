"""encoder=lipschitz on tiny nets: the Lipschitz bound (against random pairs, an attack on the
stretch ratio and the Jacobian), bit-for-bit determinism, the weight cache, train-only
training, and clear errors for bad options."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from gmcert.data import LabelledData
from gmcert.encoders import build_encoder
from gmcert.encoders.gm_objective import (
    ObjectiveWeights,
    bisector_radius,
    gm_loss,
    margin_loss,
)
from gmcert.encoders.lipschitz import CACHE_STAGE, LipschitzEncoder
from gmcert.encoders.lipschitz_layers import GroupSort, lipschitz_bound, orthogonal_linear
from gmcert.encoders.weight_cache import weights_key
from gmcert.features import encode

TINY = dict(latent_dim=3, width=16, depth=2, epochs=3, train_batch_size=32, progress=False)


def _data(n: int = 90, dim: int = 12, classes: int = 3, seed: int = 0):
    """Pixels in [0, 1] around one random template per class."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0.2, 0.8, size=(classes, dim))
    y = np.arange(n) % classes
    x = np.clip(templates[y] + 0.1 * rng.standard_normal((n, dim)), 0, 1)
    return x.astype(np.float32), y.astype(np.int64)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


@pytest.fixture(scope="module")
def fitted() -> LipschitzEncoder:
    x, y = _data()
    return LipschitzEncoder(**TINY).fit(x, y).double()


def _ratio(f, x, x2):
    return (f(x) - f(x2)).norm(dim=1) / (x - x2).norm(dim=1)


# ------------------------------------------------------------------------- the bound


def test_bound_is_the_product_of_exact_spectral_norms_and_about_one(fitted):
    norms = [
        float(torch.linalg.svdvals(m.weight.double())[0])
        for m in fitted.network
        if isinstance(m, nn.Linear)
    ]
    assert len(norms) == TINY["depth"] + 1
    assert fitted.lipschitz == pytest.approx(float(np.prod(norms)), rel=1e-12)
    assert abs(fitted.lipschitz - 1) < 1e-5


def test_no_pair_is_stretched_beyond_the_bound(fitted):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 12, generator=gen, dtype=torch.float64)
    near = x + 1e-4 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    far = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        for other in (near, far):
            assert float(_ratio(fitted, x, other).max()) <= fitted.lipschitz * (1 + 1e-9)


def test_gradient_ascent_on_the_stretch_ratio_stays_below_the_bound(fitted):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(64, 12, generator=gen, dtype=torch.float64).requires_grad_(True)
    y = x.detach() + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    y.requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=1e-2)
    ratios = []
    for _ in range(150):
        ratio = _ratio(fitted, x, y)
        ratios.append(float(ratio.detach().max()))
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    assert max(ratios) <= fitted.lipschitz * (1 + 1e-9)
    assert max(ratios) > ratios[0]  # the search did climb


def test_power_iteration_on_the_jacobian_agrees_with_the_bound(fitted):
    # Almost everywhere the map is linear near x, with Jacobian J = W_3 P_2 W_2 P_1 W_1 (P_i the
    # GroupSort permutations): power iteration on J^T J must find sigma_max(J) <= the bound.
    gen = torch.Generator().manual_seed(2)
    for x in torch.rand(5, 12, generator=gen, dtype=torch.float64):
        exact = torch.autograd.functional.jacobian(fitted, x[None]).reshape(-1, 12)
        exact = float(torch.linalg.svdvals(exact)[0])
        v = torch.randn(12, generator=gen, dtype=torch.float64)
        for _ in range(200):
            _, jv = torch.autograd.functional.jvp(fitted, x[None], v[None] / v.norm())
            _, (v,) = torch.autograd.functional.vjp(fitted, x[None], jv)
        sigma = float(jv.norm())
        assert sigma == pytest.approx(exact, rel=1e-4)
        assert sigma <= fitted.lipschitz * (1 + 1e-9)
        assert exact <= fitted.lipschitz * (1 + 1e-9)


def test_the_product_bound_is_attained_when_the_latent_keeps_every_direction():
    # With the latent as wide as the hidden layers and the input, every layer is square
    # orthogonal, so J is orthogonal: sigma_max(J) = 1 = the bound (to rounding).
    x, y = _data(dim=16)
    square = LipschitzEncoder(**{**TINY, "latent_dim": 16}).fit(x, y).double()
    point = torch.rand(1, 16, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(square, point).reshape(16, 16)
    assert float(torch.linalg.svdvals(jac)[0]) == pytest.approx(square.lipschitz, abs=1e-5)


def test_group_sort_preserves_norms_and_is_one_lipschitz():
    gen = torch.Generator().manual_seed(3)
    x, x2 = torch.randn(2, 500, 12, generator=gen, dtype=torch.float64)
    for size in (2, 3, 4):
        g = GroupSort(size)
        torch.testing.assert_close(g(x).norm(dim=1), x.norm(dim=1))
        assert float(_ratio(g, x, x2).max()) <= 1 + 1e-12
    assert torch.equal(
        GroupSort(2)(torch.tensor([[1.0, 5.0, -2.0, -3.0]])), torch.tensor([[5.0, 1.0, -2.0, -3.0]])
    )


def test_bound_refuses_layers_it_cannot_bound():
    with pytest.raises(ValueError, match="Tanh"):
        lipschitz_bound(nn.Sequential(orthogonal_linear(4, 4), nn.Tanh()))
    assert lipschitz_bound(nn.Sequential(nn.Linear(3, 2, bias=False))) > 0


# --------------------------------------------------------------------- determinism


def test_two_trainings_give_identical_weights_and_leave_global_rng_alone():
    x, y = _data()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = LipschitzEncoder(**TINY).fit(x, y)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # the global state must not matter
    b = LipschitzEncoder(**TINY).fit(x, y)
    for (name, t), (_, u) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(t, u), name
    c = LipschitzEncoder(**{**TINY, "seed": 1}).fit(x, y)
    assert not torch.equal(a.network[1].weight, c.network[1].weight)
    assert not torch.are_deterministic_algorithms_enabled()


# --------------------------------------------------------------------- weight cache


class _Payload:
    """Any class: weights_only loading refuses to build it (it could run code)."""


def _entry(cache, encoder):
    return cache / CACHE_STAGE / encoder.weights_source.split(":", 1)[1]


def test_weight_cache_hit_and_misses(tmp_path):
    x, y = _data()
    first = LipschitzEncoder(**TINY, cache_dir=tmp_path).fit(x, y)
    assert first.training_seconds is not None
    entry = _entry(tmp_path, first)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["key"] == entry.name and len(meta["sha256"]["weights.pt"]) == 64
    hit = LipschitzEncoder(**TINY, cache_dir=tmp_path).fit(x, y)
    assert hit.training_seconds is None and hit.lipschitz == first.lipschitz
    assert torch.equal(hit.network[1].weight, first.network[1].weight)
    # Changed labels, inputs or any option: another key, trained afresh.
    for other_x, other_y, opts in (
        (x, y[::-1].copy(), TINY),
        (x + 0.01, y, TINY),
        (x, y, {**TINY, "lr": 0.02}),
    ):
        miss = LipschitzEncoder(**opts, cache_dir=tmp_path).fit(other_x, other_y)
        assert miss.training_seconds is not None and miss.weights_source != first.weights_source
    forced = LipschitzEncoder(**TINY, cache_dir=tmp_path, force=True).fit(x, y)
    assert forced.training_seconds is not None


def test_corrupt_or_unsafe_entries_are_rebuilt(tmp_path, caplog, monkeypatch):
    x, y = _data()
    first = LipschitzEncoder(**TINY, cache_dir=tmp_path).fit(x, y)
    weights = _entry(tmp_path, first) / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with caplog.at_level(logging.WARNING):
        again = LipschitzEncoder(**TINY, cache_dir=tmp_path).fit(x, y)
    assert again.training_seconds is not None and "digest mismatch" in caplog.text
    assert torch.equal(again.network[1].weight, first.network[1].weight)
    # An entry whose digest matches but holds pickled code: weights_only refuses, we retrain.
    torch.save({"payload": _Payload()}, weights)
    meta_path = _entry(tmp_path, first) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"]["weights.pt"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rebuilt = LipschitzEncoder(**TINY, cache_dir=tmp_path).fit(x, y)
    assert calls and all(k.get("weights_only") is True for k in calls)
    assert rebuilt.training_seconds is not None and "unusable" in caplog.text
    final = LipschitzEncoder(**TINY, cache_dir=tmp_path).fit(x, y)  # the rebuilt entry is good
    assert final.training_seconds is None


@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', "{"])
def test_malformed_metadata_is_rebuilt(tmp_path, meta):
    x, y = _data()
    first = LipschitzEncoder(**TINY, cache_dir=tmp_path).fit(x, y)
    (_entry(tmp_path, first) / "meta.json").write_text(meta)
    again = LipschitzEncoder(**TINY, cache_dir=tmp_path).fit(x, y)
    assert again.training_seconds is not None  # retrained, not a traceback
    assert LipschitzEncoder(**TINY, cache_dir=tmp_path).fit(x, y).training_seconds is None


def test_an_unwritable_cache_costs_the_cache_not_the_fit(tmp_path, caplog):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    x, y = _data()
    with caplog.at_level(logging.WARNING):
        encoder = LipschitzEncoder(**TINY, cache_dir=tmp_path / "cache").fit(x, y)
    assert encoder.lipschitz is not None and "cannot store trained weights" in caplog.text


def test_key_covers_data_labels_and_options():
    x, y = _data()
    base = weights_key(x, y, {"a": 1})
    assert base == weights_key(x.copy(), y.copy(), {"a": 1})
    assert base != weights_key(x, y, {"a": 2})
    assert base != weights_key(x[:-1], y[:-1], {"a": 1})
    assert base != weights_key(x, np.roll(y, 1), {"a": 1})


# ------------------------------------------------------------------ train split only


def test_encode_trains_on_the_train_split_only(tmp_path):
    x, y = _data(n=120)
    data = LabelledData.from_arrays("toy", x[:90], y[:90], x[90:], y[90:], 3)
    garbled = LabelledData.from_arrays("toy", x[:90], y[:90], 1 - x[90:], y[90:][::-1], 3)
    cfg = {"name": "lipschitz", **{k: v for k, v in TINY.items() if k != "progress"}}
    from omegaconf import OmegaConf

    cpu = torch.device("cpu")
    runs = [
        encode(d, OmegaConf.create(cfg), device=cpu, cache_dir=None, force=False, **_digests(d))
        for d in (data, garbled)
    ]
    alone = LipschitzEncoder(**TINY).fit(x[:90], y[:90])
    for run in runs:
        assert torch.equal(run.encoder.network[1].weight, alone.network[1].weight)
    np.testing.assert_array_equal(runs[0].train, runs[1].train)


def _digests(data) -> dict:
    """encode()'s data_digests argument, where this checkout's encode() takes one."""
    import inspect

    if "data_digests" not in inspect.signature(encode).parameters:
        return {}
    from gmcert.data.digest import data_digest

    return {"data_digests": data_digest(data)}


# ------------------------------------------------------------------ options and errors


def test_bad_options_give_clear_errors():
    with pytest.raises(ValueError, match="multiple of encoder.group_size"):
        LipschitzEncoder(width=15)
    with pytest.raises(ValueError, match="multiple of encoder.group_size"):
        LipschitzEncoder(width=6, group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        LipschitzEncoder(group_size=1)
    with pytest.raises(ValueError, match="latent_dim"):
        LipschitzEncoder(latent_dim=0)
    with pytest.raises(ValueError, match="epochs"):
        LipschitzEncoder(epochs=0)
    with pytest.raises(ValueError, match="target_std"):
        LipschitzEncoder(target_std=0.0)
    with pytest.raises(ValueError, match="lr"):
        LipschitzEncoder(lr=-1.0)
    with pytest.raises(ValueError, match="GroupSort"):
        GroupSort(2)(torch.zeros(1, 3))
    encoder = LipschitzEncoder(**TINY)
    with pytest.raises(RuntimeError, match="call fit"):
        encoder(torch.zeros(1, 12))
    x, y = _data()
    with pytest.raises(ValueError, match="train_labels"):
        encoder.fit(x)
    with pytest.raises(ValueError, match="in-memory"):
        encoder.fit(torch.as_tensor(x), y)


def test_registry_and_config(make_cfg):
    assert isinstance(build_encoder("lipschitz", **TINY), LipschitzEncoder)
    cfg = make_cfg("encoder=lipschitz", "seed=7")
    assert cfg.encoder.name == "lipschitz" and cfg.encoder.seed == 7
    cfg = make_cfg("experiment=digits_lipschitz")
    assert cfg.encoder.name == "lipschitz" and list(cfg.certify.methods) == ["closed_form"]
    assert cfg.divergence.enabled and cfg.mixture.covariance == "shared"
    with pytest.raises(Exception, match="widht"):
        make_cfg("encoder=lipschitz", "encoder.widht=3")


# ------------------------------------------------------------------------- objective


def test_bisector_radius_is_the_distance_to_the_nearest_bisector():
    means = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    z = torch.tensor([[0.5, 0.0], [1.5, 0.0], [0.0, 1.0]], dtype=torch.float64)
    r = bisector_radius(z, torch.tensor([0, 0, 0]), means)
    torch.testing.assert_close(r, torch.tensor([0.5, -0.5, 1.0], dtype=torch.float64))


def test_fit_term_is_zero_at_the_target_and_positive_off_it():
    gen = torch.Generator().manual_seed(4)
    weights = ObjectiveWeights(target_std=0.5, margin=1.0)
    means = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.arange(20000) % 2
    z = means[y] + 0.5 * torch.randn(20000, 3, generator=gen, dtype=torch.float64)
    assert float(gm_loss(z, y, means, weights)["fit"]) < 1e-3
    for scale in (0.1, 2.0):  # collapsed or spread classes both cost
        squeezed = means[y] + scale * (z - means[y])
        assert float(gm_loss(squeezed, y, means, weights)["fit"]) > 0.1


def test_centre_term_is_the_mean_squared_distance_to_the_class_mean():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    y = torch.tensor([0, 0, 1])
    means = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    off = ObjectiveWeights(target_std=0.5, margin=1.0)
    assert "centre" not in gm_loss(z, y, means, off)
    on = ObjectiveWeights(target_std=0.5, margin=1.0, centre=2.0)
    terms = gm_loss(z, y, means, on)
    assert float(terms["centre"]) == pytest.approx((1 + 4 + 1) / 3 / 0.25)
    extra = float(terms["total"]) - float(gm_loss(z, y, means, off)["total"])
    assert extra == pytest.approx(2.0 * float(terms["centre"]))
    # Only a set centre weight enters the cache key: keys of earlier weights stay valid.
    assert "centre_weight" not in LipschitzEncoder(**TINY).options
    assert LipschitzEncoder(**TINY, centre_weight=0.1).options["centre_weight"] == 0.1


def test_smooth_margin_tends_to_the_hinge_and_keeps_pushing_past_the_margin():
    means = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0])
    z = torch.tensor([[0.5, 0.0], [-0.4, 0.0], [-3.0, -3.0]], dtype=torch.float64)
    hinge = float(margin_loss(z, y, means, 1.5, 0.0))
    assert hinge == pytest.approx(((1.5 - 0.5) + (1.5 - 1.4) + 0.0) / 3 / 1.5)
    # Smooth: an upper bound on the hinge (log-sum-exp >= max), within t log K of it.
    for t in (0.5, 0.1, 1e-3):
        smooth = float(margin_loss(z, y, means, 1.5, t))
        assert hinge <= smooth <= hinge + t * np.log(3) / 1.5 + 1e-12
    # Past the margin the hinge has no gradient; the smooth form still pushes outwards.
    far = z[2:].clone().requires_grad_(True)
    margin_loss(far, y[2:], means, 1.5, 0.0).backward()
    assert float(far.grad.abs().sum()) == 0
    far.grad = None
    margin_loss(far, y[2:], means, 1.5, 0.5).backward()
    assert float((far.grad * far.detach()).sum()) < 0  # descent moves z away from the rivals
    # Only a set temperature enters the cache key: keys of earlier weights stay valid.
    assert "margin_temperature" not in LipschitzEncoder(**TINY).options
    with pytest.raises(ValueError, match="margin_temperature"):
        ObjectiveWeights(target_std=0.5, margin=1.0, margin_temperature=-1.0)
