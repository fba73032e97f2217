"""The attack library: exact linear projections, and the minimum-norm attack's radii checked
against the exact minimum adversarial distance of linear models (random, and digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gmcert.attack import linear_boundary_projection, minimum_norm_attack
from gmcert.attack.projection import box_hyperplane_step
from gmcert.data.digits import build_digits
from gmcert.models.mixture import GaussianMixtureClassifier

NORMS = ["l2", "linf", "l1"]
DUAL = {"l2": 2, "linf": 1, "l1": np.inf}
PRIMAL = {"l2": 2, "linf": np.inf, "l1": 1}
# A flip found in float64 may lie a few ulps inside the exact (real-arithmetic) radius.
ROUNDING = 1e-9


def exact_radius(A, b, x, norm):
    """min_{j != k} (s_k - s_j) / ||a_k - a_j||_q, written out directly."""
    s = x @ A.T + b
    k = s.argmax(1)
    out = np.full(len(x), np.inf)
    for j in range(len(b)):
        dual = np.linalg.norm(A[k] - A[j], ord=DUAL[norm], axis=1)
        r = (s[np.arange(len(x)), k] - s[:, j]) / np.where(dual > 0, dual, 1)
        out = np.where((k != j) & (dual > 0), np.minimum(out, r), out)
    return out


def linear(A, b):
    model = nn.Linear(A.shape[1], A.shape[0]).double()
    model.weight.data = torch.as_tensor(A, dtype=torch.float64)
    model.bias.data = torch.as_tensor(b, dtype=torch.float64)
    return model.eval()


def predictions(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float64)).argmax(1).numpy()


def mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).to(dtype).eval()


@pytest.fixture(scope="module")
def digits_linear():
    data = build_digits()
    mixture = GaussianMixtureClassifier(covariance="shared").fit(
        data.train.inputs, data.train.labels
    )
    A, b = mixture.linear_head()
    return A, b, np.asarray(data.test.inputs[:60], np.float64)


# ------------------------------------------------------------------ linear projection


@pytest.mark.parametrize("norm", NORMS)
def test_projection_matches_brute_force_on_2d_rays(norm):
    """In 2-d, the smallest flip along every ray of a fine angular grid (directions scaled to
    unit lp norm, so the corners and axes that the linf and l1 optima use are on the grid)
    approaches the projection's radius from above."""
    rng = np.random.default_rng(1)
    A, b, x = rng.normal(size=(3, 2)), rng.normal(size=3), rng.normal(size=(5, 2))
    proj = linear_boundary_projection(A, b, x, norm=norm)
    theta = np.linspace(0, 2 * np.pi, 8 * 2000 + 1)
    u = np.stack([np.cos(theta), np.sin(theta)], 1)
    u /= np.linalg.norm(u, ord=PRIMAL[norm], axis=1, keepdims=True)
    s = x @ A.T + b
    k = s.argmax(1)
    for i in range(len(x)):
        # Along x + t u the margin to j falls at rate -(a_k - a_j) . u; it reaches 0 at t_j.
        rate = -(A[k[i]] - A) @ u.T  # (K, rays)
        margin = (s[i, k[i]] - s[i])[:, None]
        t = np.where(rate < 0, margin / np.where(rate < 0, -rate, 1), np.inf)
        t[k[i]] = np.inf
        brute = t.min()
        assert proj.radius[i] <= brute * (1 + 1e-12)
        assert brute <= proj.radius[i] * (1 + 1e-3)
    assert proj.verified.all()
    np.testing.assert_allclose(
        np.linalg.norm(proj.delta, ord=PRIMAL[norm], axis=1), proj.radius, rtol=1e-12
    )


@pytest.mark.parametrize("norm", NORMS)
def test_projection_is_exact_and_minimal(norm):
    rng = np.random.default_rng(2)
    A, b, x = rng.normal(size=(6, 20)), rng.normal(size=6), rng.normal(size=(30, 20))
    proj = linear_boundary_projection(A, b, x, norm=norm)
    np.testing.assert_allclose(proj.radius, exact_radius(A, b, x, norm), rtol=1e-12)
    assert proj.verified.all()
    assert (proj.target != proj.original).all()
    # Just short of the boundary the class is unchanged.
    inside = (x + proj.delta * (1 - 1e-6)) @ A.T + b
    np.testing.assert_array_equal(inside.argmax(1), proj.original)


def test_projection_constant_model_is_infinite():
    A = np.ones((3, 4))
    proj = linear_boundary_projection(A, np.array([1.0, 0.0, 0.0]), np.zeros((2, 4)), norm="l2")
    assert np.isinf(proj.radius).all() and not proj.verified.any()
    np.testing.assert_array_equal(proj.delta, 0)


# ------------------------------------------------------------------ minimum-norm attack


def check_flips(model, result, x, norm):
    """Every found adversarial changes the class; its radius is its distance from x."""
    pred = predictions(model, x)
    np.testing.assert_array_equal(result.original, pred)
    adv_pred = predictions(model, result.adversarial)
    assert (adv_pred[result.found] != pred[result.found]).all()
    np.testing.assert_array_equal(result.adversarial_class, adv_pred)
    dist = np.linalg.norm((result.adversarial - x).reshape(len(x), -1), ord=PRIMAL[norm], axis=1)
    np.testing.assert_allclose(result.radius[result.found], dist[result.found], rtol=1e-12)
    assert np.isinf(result.radius[~result.found]).all()


@pytest.mark.parametrize("norm", NORMS)
def test_attack_on_random_linear_models_is_exact(norm):
    rng = np.random.default_rng(3)
    A, b, x = rng.normal(size=(4, 10)), rng.normal(size=4), rng.normal(size=(40, 10))
    model = linear(A, b)
    result = minimum_norm_attack(model, x, norm=norm, steps=10, restarts=0)
    exact = exact_radius(A, b, x, norm)
    assert result.found.all()
    assert (result.radius >= exact * (1 - ROUNDING)).all()
    assert (result.radius <= exact * (1 + 1e-6)).all()
    check_flips(model, result, x, norm)


@pytest.mark.parametrize("norm", NORMS)
def test_attack_on_digits_mixture_within_stated_factor(norm, digits_linear):
    """The digits mixture's linear rule: median ratio <= 1.0001, every ratio <= 1.001."""
    A, b, x = digits_linear
    model = linear(A, b)
    result = minimum_norm_attack(model, x, norm=norm, steps=10, targeted=1, restarts=1)
    ratio = result.radius / exact_radius(A, b, x, norm)
    assert (ratio >= 1 - ROUNDING).all()
    assert np.median(ratio) <= 1.0001 and ratio.max() <= 1.001
    check_flips(model, result, x, norm)


@pytest.mark.parametrize("norm", NORMS)
def test_attack_on_mlp_flips_and_beats_deepfool_alone(norm):
    """Nonlinear: every adversarial flips, and the search improves on its own first
    (DeepFool) step."""
    model = mlp()
    x = np.random.default_rng(4).uniform(size=(20, 64))
    result = minimum_norm_attack(model, x, norm=norm, steps=20, targeted=1, restarts=1)
    assert result.found.all()
    check_flips(model, result, x, norm)
    one_step = minimum_norm_attack(model, x, norm=norm, steps=1, targeted=0, restarts=0)
    assert (result.radius <= one_step.radius * (1 + 1e-9)).all()


def test_attack_constant_model_is_infinite():
    model = linear(np.zeros((3, 5)), np.array([0.0, 1.0, 0.0]))
    x = np.random.default_rng(5).normal(size=(4, 5))
    result = minimum_norm_attack(model, x, norm="l2", steps=5)
    assert np.isinf(result.radius).all() and not result.found.any()
    np.testing.assert_array_equal(result.adversarial, x)
    np.testing.assert_array_equal(result.adversarial_class, 1)


def test_attack_edge_cases_empty_batch_and_single_class():
    empty = minimum_norm_attack(linear(np.eye(3), np.zeros(3)), np.zeros((0, 3)), norm="l2")
    assert empty.radius.shape == (0,) and empty.adversarial.shape == (0, 3)
    single = minimum_norm_attack(linear(np.ones((1, 3)), np.zeros(1)), np.ones((2, 3)), norm="l1")
    assert np.isinf(single.radius).all() and not single.found.any()


def test_attack_is_deterministic():
    model = mlp(1)
    x = np.random.default_rng(6).uniform(size=(20, 64))
    runs = [minimum_norm_attack(model, x, norm="linf", steps=10, restarts=2, seed=7) for _ in "ab"]
    np.testing.assert_array_equal(runs[0].radius, runs[1].radius)
    np.testing.assert_array_equal(runs[0].adversarial, runs[1].adversarial)


def test_float32_model_is_attacked_in_float64_and_left_unchanged():
    model = mlp(2, torch.float32)
    x = np.random.default_rng(7).uniform(size=(10, 64)).astype(np.float32)
    result = minimum_norm_attack(model, x, norm="l2", steps=10, restarts=0)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.adversarial.dtype == np.float64 and result.radius.dtype == np.float64
    double = mlp(2, torch.float32).double()
    check_flips(double, result, x.astype(np.float64), "l2")


def test_image_shaped_inputs():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 5)).eval()
    x = np.random.default_rng(8).uniform(size=(6, 1, 4, 4))
    # ReLU units all off around some x: a zero gradient there, which the restarts get past.
    result = minimum_norm_attack(model, x, norm="linf", steps=10, restarts=2, batch_size=4)
    assert result.adversarial.shape == x.shape and result.found.all()
    check_flips(model.double(), result, x, "linf")


@pytest.mark.parametrize("norm", NORMS)
def test_bounds_keep_adversarials_in_the_box(norm):
    model = mlp(1)
    x = np.random.default_rng(6).uniform(size=(10, 64))
    result = minimum_norm_attack(
        model, x, norm=norm, steps=20, targeted=0, restarts=0, bounds=(0.0, 1.0)
    )
    assert result.found.all()
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    check_flips(model, result, x, norm)


@pytest.mark.parametrize("norm", NORMS)
def test_box_step_reaches_the_hyperplane_inside_the_box(norm):
    rng = np.random.default_rng(9)
    p = torch.as_tensor(rng.uniform(size=(50, 8)))
    w = torch.as_tensor(rng.normal(size=(50, 8)))
    f = torch.as_tensor(rng.uniform(0.05, 0.2, size=50))
    delta = box_hyperplane_step(p, f, w, norm, (0.0, 1.0))
    moved = p + delta
    assert moved.min() >= 0 and moved.max() <= 1
    residual = f + (w * delta).sum(1)
    # Where the box allows it, the hyperplane is reached (the margin is spent).
    reachable = f <= (w.abs() * torch.where(w > 0, p, 1 - p)).sum(1)
    assert reachable.sum() > 25
    assert (residual >= -1e-12).all()  # never past the hyperplane
    if norm == "l1":  # the l1 box step is exact: reached wherever the box allows
        assert (residual[reachable] <= 1e-12).all()
    else:  # l2 and linf freeze clamped coordinates for a few rounds: most are reached
        assert (residual[reachable] <= 1e-12).float().mean() > 0.9


@pytest.mark.parametrize("call", [minimum_norm_attack, None])
def test_bad_norm_is_rejected(call):
    with pytest.raises(ValueError, match="norm must be one of"):
        if call is None:
            linear_boundary_projection(np.eye(2), np.zeros(2), np.zeros((1, 2)), norm="l3")
        else:
            minimum_norm_attack(linear(np.eye(2), np.zeros(2)), np.zeros((1, 2)), norm="l3")
