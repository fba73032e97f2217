"""The input-space radius through a PCA encoder, attacked in input space (l2, digits).

These tests rebuild a run's encoder and mixture, check they reproduce its predictions and
latent radii, and attack the composed torch model ``x -> head(encoder(x))`` in float64 with a
minimum-norm attack that never reads the certificate: DeepFool steps towards each rival
class's boundary (input gradients from autograd), then a bisection on the length of that
perturbation for the smallest flipping scale.

- No flip may lie strictly inside ``radius_input`` (1e-6 relative).
- The attack is strong enough for that to mean something: it reaches the composed rule's
  exact boundary distance, and against radii inflated by 10% it finds a flip inside for every
  point (PCA is linear, so the run certifies the composed linear rule: the radius is exact).

Plain and whitened PCA: whitening makes the map far from an isometry, so a radius carried
from latent space by a Lipschitz bound would be loose, and one computed without the encoder's
geometry would be wrong; both show up here. l2 only.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import QUICK, compose_config, linear_radius, rebuild_run

from gmcert.pipeline import run

DEEPFOOL_STEPS = 4
OVERSHOOT = 1.02
BISECTIONS = 50


class LatentLinearHead(torch.nn.Module):
    """The mixture's linear rule ``M z + c`` in float64 (the torch MixtureHead is float32)."""

    def __init__(self, mixture):
        super().__init__()
        M, c = mixture.linear_head()
        self.register_buffer("weight", torch.as_tensor(M, dtype=torch.float64))
        self.register_buffer("bias", torch.as_tensor(c, dtype=torch.float64))

    def forward(self, z):
        return z @ self.weight.T + self.bias


def smallest_flip(model, x, label, direction, hi):
    """Smallest t in (0, hi] with argmax model(x + t direction) != label, by bisection; inf
    when even t = hi keeps the label. Along a ray the region of one class of a linear rule is
    an interval, so the flip set is [t*, inf) and bisection finds t*."""

    def flips(t):
        return model((x + t * direction)[None]).argmax(1).item() != label

    if not flips(hi):
        return np.inf
    lo = 0.0
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if flips(mid) else (mid, hi)
    return hi


def minimum_flip_distance(model, x, num_classes):
    """Input l2 distance of the closest flip found: for each rival class j, DeepFool steps
    towards the boundary between the current class and j, then a bisection on the length of
    the accumulated perturbation."""
    label = model(x[None]).argmax(1).item()
    best = np.inf
    for j in range(num_classes):
        if j == label:
            continue
        delta = torch.zeros_like(x)
        for _ in range(DEEPFOOL_STEPS):
            point = (x + delta).detach().requires_grad_(True)
            scores = model(point[None])[0]
            gap = scores[label] - scores[j]
            (grad,) = torch.autograd.grad(gap, point)
            if gap.item() <= 0:
                break
            delta = delta - (gap.item() / grad.square().sum()) * grad * OVERSHOOT
        norm = delta.norm().item()
        if norm > 0:
            best = min(best, smallest_flip(model, x, label, delta / norm, 4 * norm))
    return best


def attack_run(tmp_path_factory, whiten: bool) -> dict:
    """One run and, for a sample of its test points (a spread of radii, every class): the
    run's input radius, the attack's distance, the exact distance of the composed linear rule
    (written out from the rebuilt pieces), and the condition number of the encoder's map."""
    cfg = compose_config(
        tmp_path_factory.mktemp("attack"),
        [
            *QUICK,  # no attack stage: the attack here is this file's own
            "certify.norm=l2",
            "encoder=pca",
            "encoder.n_components=16",
            f"encoder.whiten={str(whiten).lower()}",
            "certify.population_samples=0",
        ],
    )
    metrics = run(cfg)
    preds = pd.read_csv(f"{cfg.paths.output_dir}/predictions.csv")
    rebuilt = rebuild_run(cfg)
    data, encoder, mixture, Z_test = rebuilt.data, rebuilt.encoder, rebuilt.mixture, rebuilt.Z_test
    # float64 throughout: the torch MixtureHead is float32.
    model = torch.nn.Sequential(copy.deepcopy(encoder), LatentLinearHead(mixture)).double().eval()
    assert metrics["lipschitz"] == pytest.approx(encoder.lipschitz, rel=1e-12)
    position = {int(index): p for p, index in enumerate(data.test.indices)}
    preds = preds.assign(position=preds["index"].map(position)).sort_values("position")
    sample = preds.iloc[:: max(1, len(preds) // 50)]
    at = sample["position"].to_numpy().copy()
    X = torch.as_tensor(np.array(data.test.inputs, np.float64)).flatten(1)[at]
    with torch.no_grad():
        codes = model(X).argmax(1).numpy()
    # The rebuilt model is the run's model: the same predictions and latent radii.
    np.testing.assert_array_equal(mixture.classes_[codes], sample["predict"].to_numpy())
    M, c = mixture.linear_head()
    latent = linear_radius(M, c, Z_test[at].astype(np.float64))
    np.testing.assert_allclose(latent, sample["radius_latent"].to_numpy(), rtol=1e-9)
    W = model[0].weight.numpy()
    exact = linear_radius(M @ W, c - M @ W @ model[0].mean.numpy(), X.numpy())
    distance = np.array([minimum_flip_distance(model, x, len(mixture.classes_)) for x in X])
    return {
        "radius": sample["radius_input"].to_numpy(),
        "distance": distance,
        "exact": exact,
        "condition": float(np.linalg.cond(W)),
    }


@pytest.fixture(scope="module")
def pca(tmp_path_factory):
    return attack_run(tmp_path_factory, whiten=False)


@pytest.fixture(scope="module")
def whitened(tmp_path_factory):
    return attack_run(tmp_path_factory, whiten=True)


@pytest.fixture(params=["pca", "whitened"])
def attacked(request):
    return request.getfixturevalue(request.param)


@pytest.mark.e2e
def test_no_flip_inside_the_input_radius(attacked):
    radius, distance = attacked["radius"], attacked["distance"]
    assert np.all(radius > 0) and np.all(np.isfinite(distance))
    inside = distance < radius * (1 - 1e-6)
    assert not inside.any(), list(zip(radius[inside], distance[inside], strict=True))


@pytest.mark.e2e
def test_the_attack_reaches_the_exact_boundary(attacked):
    """The attack is as strong as any: it finds the composed rule's exact l2 distance."""
    np.testing.assert_allclose(attacked["distance"], attacked["exact"], rtol=1e-9)


@pytest.mark.e2e
def test_the_attack_finds_flips_inside_radii_inflated_by_ten_percent(attacked):
    radius, distance = attacked["radius"], attacked["distance"]
    assert np.all(distance < 1.1 * radius)
    np.testing.assert_allclose(distance, radius, rtol=1e-6)


@pytest.mark.e2e
def test_whitening_is_far_from_an_isometry(whitened, pca):
    """What makes the whitened case a test: the map stretches some directions far more than
    others, so latent distances are not input distances."""
    assert whitened["condition"] > 3 and pca["condition"] == pytest.approx(1.0, abs=1e-4)
