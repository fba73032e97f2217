"""Randomized smoothing (gmcert.certify.smoothing) against closed forms and other libraries.

The linear base classifier h(x) = [w^T x + b > 0] is the reference: under N(0, sigma^2 I) noise
its top class has probability Phi(|w^T x + b| / (sigma ||w||)), so the exact smoothed radius is
sigma * Phi^-1(pA) = |w^T x + b| / ||w||, and every count and certificate has a closed form.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from gmcert.certify.smoothing import ABSTAIN, Certificate, SmoothedClassifier, radius_cap
from gmcert.confidence import clopper_pearson_lower

# ----------------------------------------------------------------------------- base classifiers


class LinearBase(torch.nn.Module):
    """Two classes: scores (-m, m) with m = w^T flatten(x) + b, so the prediction is [m > 0]."""

    def __init__(self, w: np.ndarray, b: float) -> None:
        super().__init__()
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float64))
        self.b = float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = x.flatten(1) @ self.w + self.b
        return torch.stack([-margin, margin], dim=1)


class ConstantBase(torch.nn.Module):
    """Always predicts ``label``, whatever the input."""

    def __init__(self, num_classes: int, label: int) -> None:
        super().__init__()
        self.num_classes, self.label = num_classes, label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype, device=x.device)
        scores[:, self.label] = 1.0
        return scores


class FirstPixelBase(torch.nn.Module):
    """Predicts round(x[0] * (K - 1)), the class encoded in the first pixel; records batch sizes."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        label = torch.round(x.flatten(1)[:, 0] * (self.num_classes - 1)).long()
        return torch.nn.functional.one_hot(label, self.num_classes).to(x.dtype)


def linear_problem(rng: np.random.Generator, dim: int, num_points: int):
    """Random hyperplane through the centre of [0, 1]^dim and uniform points in the cube."""
    w = rng.normal(size=dim)
    b = -0.5 * w.sum()
    xs = rng.uniform(size=(num_points, dim))
    margin = xs @ w + b
    return w, b, xs, margin


def seeded(first: int, count: int) -> list[int]:
    """One noise seed per input."""
    return list(range(1000 * first, 1000 * first + count))


def without_time(cert: Certificate) -> Certificate:
    return dataclasses.replace(cert, seconds=0.0)


# ----------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("alpha", [1e-3, 0.01, 0.05])
@pytest.mark.parametrize("trials", [1, 10, 100, 1000, 100_000])
def test_clopper_pearson_matches_statsmodels_and_scipy(trials, alpha):
    successes = np.unique(np.linspace(0, trials, 13).round().astype(int))
    ours = clopper_pearson_lower(successes, trials, alpha)
    # A one-sided bound at alpha is the lower end of a two-sided interval at 2 * alpha.
    sm_lower, _ = proportion_confint(successes, trials, alpha=2 * alpha, method="beta")
    scipy_lower = [
        stats.binomtest(int(k), trials).proportion_ci(1 - 2 * alpha, method="exact").low
        for k in successes
    ]
    np.testing.assert_allclose(ours, np.nan_to_num(sm_lower), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(ours, scipy_lower, rtol=1e-9, atol=1e-14)


def test_certificate_bound_and_radius_use_clopper_pearson():
    rng = np.random.default_rng(0)
    w, b, xs, _ = linear_problem(rng, dim=4, num_points=8)
    smoothed = SmoothedClassifier(LinearBase(w, b).eval(), 2, sigma=0.25)
    n, alpha = 2000, 0.01
    certs = smoothed.certify_batch(
        torch.as_tensor(xs), n0=50, n=n, alpha=alpha, seeds=seeded(1, len(xs))
    )
    for cert in certs:
        expected = proportion_confint(cert.n_a, n, alpha=2 * alpha, method="beta")[0]
        assert cert.p_a_lower == pytest.approx(np.nan_to_num(expected), rel=1e-9, abs=1e-14)
        if cert.prediction == ABSTAIN:
            assert cert.p_a_lower < 0.5 and cert.radius == 0.0
        else:
            assert cert.radius == pytest.approx(0.25 * stats.norm.ppf(cert.p_a_lower), rel=1e-12)
        assert (cert.sigma, cert.n, cert.alpha) == (0.25, n, alpha)


# ----------------------------------------------------------------------------- radius cap


def test_radius_cap_closed_form():
    assert radius_cap(1.0, 100_000, 1e-3) == pytest.approx(3.81, abs=0.005)
    for sigma, n, alpha in [(0.25, 100, 0.05), (0.5, 10_000, 1e-3), (1.0, 100_000, 1e-3)]:
        # The cap is the Clopper-Pearson bound at nA = n, pushed through the radius formula.
        at_full_count = proportion_confint(n, n, alpha=2 * alpha, method="beta")[0]
        assert radius_cap(sigma, n, alpha) == pytest.approx(
            sigma * stats.norm.ppf(at_full_count), rel=1e-6
        )
        assert radius_cap(sigma, n, alpha) == pytest.approx(
            sigma * stats.norm.ppf(alpha ** (1 / n)), rel=1e-6
        )


def test_unanimous_base_reaches_the_cap():
    smoothed = SmoothedClassifier(ConstantBase(5, label=3).eval(), 5, sigma=0.5, batch_size=300)
    cert = smoothed.certify(torch.rand(3, 4, 4), n0=10, n=1000, alpha=1e-3, seed=0)
    assert (cert.prediction, cert.n_a) == (3, 1000)
    assert cert.radius == pytest.approx(radius_cap(0.5, 1000, 1e-3), rel=1e-9)


# ----------------------------------------------------------------------------- abstention


def test_coin_flip_base_abstains():
    # Points on the hyperplane: each class has probability exactly 1/2 under the noise, so
    # CERTIFY may return a class for each point with probability at most alpha.
    rng = np.random.default_rng(1)
    w, b, xs, margin = linear_problem(rng, dim=6, num_points=40)
    xs = xs - np.outer(margin, w) / (w @ w)  # project every point onto the hyperplane
    assert np.abs(xs @ w + b).max() < 1e-12
    smoothed = SmoothedClassifier(LinearBase(w, b).eval(), 2, sigma=0.25)
    certs = smoothed.certify_batch(torch.as_tensor(xs), n0=100, n=5000, seeds=seeded(2, len(xs)))
    certified = sum(c.prediction != ABSTAIN for c in certs)
    assert certified <= stats.binom.isf(1e-6, len(certs), 1e-3)
    # Whichever class the selection picked, its count is Binomial(5000, 1/2).
    assert np.mean([c.n_a for c in certs]) == pytest.approx(2500, abs=30)
    predictions = [
        smoothed.predict(torch.as_tensor(x), n=2000, seed=i) for i, x in enumerate(xs[:10])
    ]
    assert predictions.count(ABSTAIN) >= 9


def test_predict_far_from_the_boundary():
    w, b = np.array([1.0, -1.0]), 0.0
    smoothed = SmoothedClassifier(LinearBase(w, b).eval(), 2, sigma=0.25)
    assert smoothed.predict(torch.tensor([0.9, 0.1], dtype=torch.float64), n=1000) == 1
    assert smoothed.predict(torch.tensor([0.1, 0.9], dtype=torch.float64), n=1000) == 0


# ----------------------------------------------------------------------------- linear closed form


def test_linear_smoothed_probability_matches_closed_form():
    rng = np.random.default_rng(3)
    sigma, n = 0.3, 20_000
    w, b, xs, margin = linear_problem(rng, dim=12, num_points=30)
    p_top = stats.norm.cdf(np.abs(margin) / (sigma * np.linalg.norm(w)))
    # Images of shape (3, 2, 2): the noise must be added per pixel of a multi-axis input.
    smoothed = SmoothedClassifier(LinearBase(w, b).eval(), 2, sigma=sigma, batch_size=4096)
    images = torch.as_tensor(xs).reshape(-1, 3, 2, 2)
    counts = smoothed.sample_counts(images, n, seeds=seeded(4, len(images))).numpy()
    assert counts.shape == (30, 2) and (counts.sum(axis=1) == n).all()
    p_hat = counts[np.arange(30), (margin > 0).astype(int)] / n
    z = (p_hat - p_top) / np.sqrt(np.maximum(p_top * (1 - p_top), 1e-12) / n)
    assert np.abs(z).max() < 4.5, z
    # Pooled: the sum of squares of 30 standard normals stays within chi2(30) bounds.
    assert stats.chi2.sf((z**2).sum(), df=30) > 1e-5


def test_certified_radius_never_exceeds_exact_radius():
    rng = np.random.default_rng(5)
    sigma, n0, n, alpha = 0.25, 100, 5000, 1e-3
    w, b, xs, margin = linear_problem(rng, dim=5, num_points=400)
    exact = np.abs(margin) / np.linalg.norm(w)  # = sigma * Phi^-1(pA)
    truth = (margin > 0).astype(int)
    smoothed = SmoothedClassifier(LinearBase(w, b).eval(), 2, sigma=sigma, batch_size=2048)
    certs = smoothed.certify_batch(
        torch.as_tensor(xs), n0=n0, n=n, alpha=alpha, seeds=seeded(6, len(xs))
    )
    pred = np.array([c.prediction for c in certs])
    radius = np.array([c.radius for c in certs])
    # Soundness: a certificate fails (wrong class or too large a radius) with probability at
    # most alpha per point.
    failed = (pred != ABSTAIN) & ((pred != truth) | (radius > exact + 1e-12))
    assert failed.sum() <= stats.binom.isf(1e-6, len(certs), alpha)
    assert radius.max() <= radius_cap(sigma, n, alpha) + 1e-12
    # Tightness: where the top class is clear, the radius is that of a count 5 standard
    # deviations below its mean, or more (nothing is lost beyond Clopper-Pearson's own slack).
    p_top = stats.norm.cdf(exact / sigma)
    clear = p_top > 0.75
    low_count = np.floor(n * p_top - 5 * np.sqrt(n * p_top * (1 - p_top)))
    floor = sigma * stats.norm.ppf(np.maximum(clopper_pearson_lower(low_count, n, alpha), 0.5))
    assert clear.sum() > 100
    assert (pred[clear] == truth[clear]).all()
    assert (radius[clear] >= floor[clear] - 1e-12).all()


@pytest.mark.slow
def test_certified_radius_sound_and_tight_at_default_n():
    rng = np.random.default_rng(7)
    sigma, alpha = 0.5, 1e-3
    w, b, xs, margin = linear_problem(rng, dim=20, num_points=120)
    exact = np.abs(margin) / np.linalg.norm(w)
    smoothed = SmoothedClassifier(LinearBase(w, b).eval(), 2, sigma=sigma, batch_size=10_000)
    certs = smoothed.certify_batch(torch.as_tensor(xs), seeds=seeded(8, len(xs)))  # n0=100, n=1e5
    pred = np.array([c.prediction for c in certs])
    radius = np.array([c.radius for c in certs])
    truth = (margin > 0).astype(int)
    failed = (pred != ABSTAIN) & ((pred != truth) | (radius > exact + 1e-12))
    assert failed.sum() <= stats.binom.isf(1e-6, len(certs), alpha)
    p_top = stats.norm.cdf(exact / sigma)
    clear = p_top > 0.75
    n = 100_000
    low_count = np.floor(n * p_top - 5 * np.sqrt(n * p_top * (1 - p_top)))
    floor = sigma * stats.norm.ppf(np.maximum(clopper_pearson_lower(low_count, n, alpha), 0.5))
    assert (radius[clear] >= floor[clear] - 1e-12).all()


# ----------------------------------------------------------------------------- sampling schedule


@pytest.mark.parametrize("batch_size", [1, 5, 7, 13, 1000])
def test_counts_per_input_exact_when_batches_mix_inputs(batch_size):
    # Noise far below the class spacing: each input's copies all land in its own class, so any
    # mix-up of which copy belongs to which input shows as a wrong count.
    num_classes, num = 6, 7
    xs = torch.zeros(num_classes, 2, 3)
    xs[:, 0, 0] = torch.arange(num_classes) / (num_classes - 1)
    labels = torch.tensor([2, 0, 5, 1, 4, 3])
    base = FirstPixelBase(num_classes).eval()
    smoothed = SmoothedClassifier(base, num_classes, sigma=1e-6, batch_size=batch_size)
    counts = smoothed.sample_counts(xs[labels], num, seeds=seeded(0, num_classes))
    expected = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    expected[torch.arange(num_classes), labels] = num
    assert torch.equal(counts, expected)
    assert sum(base.batch_sizes) == num_classes * num
    assert max(base.batch_sizes) <= batch_size


def test_selection_and_estimation_use_separate_samples():
    base = FirstPixelBase(3).eval()
    smoothed = SmoothedClassifier(base, 3, sigma=0.1, batch_size=64)
    smoothed.certify(torch.full((4,), 0.5), n0=30, n=100, seed=0)
    assert base.batch_sizes == [30, 64, 36]


# ----------------------------------------------------------------------------- reproducibility


def test_seeds_reproduce_certificates():
    rng = np.random.default_rng(9)
    w, b, xs, _ = linear_problem(rng, dim=8, num_points=5)
    smoothed = SmoothedClassifier(LinearBase(w, b).eval(), 2, sigma=0.5, batch_size=256)
    x = torch.as_tensor(xs)
    first = [without_time(c) for c in smoothed.certify_batch(x, n=3000, seeds=seeded(11, 5))]
    again = [without_time(c) for c in smoothed.certify_batch(x, n=3000, seeds=seeded(11, 5))]
    other = [without_time(c) for c in smoothed.certify_batch(x, n=3000, seeds=seeded(12, 5))]
    assert first == again
    assert [c.n_a for c in first] != [c.n_a for c in other]
    single = without_time(smoothed.certify(x[0], n=3000, seed=11000))
    alone = without_time(smoothed.certify_batch(x[:1], n=3000, seeds=seeded(11, 1))[0])
    assert single == alone


@pytest.mark.parametrize("n, batch_size", [(300, 1000), (1500, 1000), (1000, 1000), (7, 3)])
def test_a_points_noise_does_not_depend_on_the_other_points(n, batch_size):
    """Chunks, shards and resumes cut a run differently; each point must get the same noise."""
    rng = np.random.default_rng(3)
    w, b, xs, _ = linear_problem(rng, dim=6, num_points=7)
    smoothed = SmoothedClassifier(LinearBase(w, b).eval(), 2, sigma=2.0, batch_size=batch_size)
    x, seeds = torch.as_tensor(xs), seeded(5, 7)
    whole = [without_time(c) for c in smoothed.certify_batch(x, n0=10, n=n, seeds=seeds)]
    parts = [
        without_time(c)
        for cut in [(0, 1), (1, 4), (4, 7)]
        for c in smoothed.certify_batch(x[slice(*cut)], n0=10, n=n, seeds=seeds[slice(*cut)])
    ]
    assert whole == parts
    assert len({c.n_a for c in whole}) > 1  # a test that can fail: counts differ between points


def test_noise_blocks_pack_whole_and_in_order():
    from gmcert.certify.smoothing import _pack_blocks

    assert _pack_blocks(3, 4, 10) == [[(0, 0, 4), (1, 0, 4)], [(2, 0, 4)]]
    assert _pack_blocks(2, 5, 3) == [[(0, 0, 3)], [(0, 1, 2)], [(1, 0, 3)], [(1, 1, 2)]]


def test_one_seed_per_input_is_required():
    smoothed = SmoothedClassifier(ConstantBase(3, 0).eval(), 3, sigma=0.5)
    with pytest.raises(ValueError, match="got 1 seeds for 2 inputs: give one per input"):
        smoothed.sample_counts(torch.rand(2, 4), 10, seeds=[0])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("sigma", [0.0, -0.25, float("nan"), float("inf")])
def test_bad_sigma_raises(sigma):
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        SmoothedClassifier(ConstantBase(2, 0).eval(), 2, sigma=sigma)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        radius_cap(sigma, 1000, 1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n0": 0}, r"n0 must be an integer >= 1 .*got 0"),
        ({"n0": -3}, r"n0 must be an integer >= 1 .*got -3"),
        ({"n0": 2.5}, r"n0 must be an integer >= 1 .*got 2.5"),
        ({"n": 0}, r"n must be an integer >= 1 .*got 0"),
        ({"alpha": 0.0}, r"alpha must lie in \(0, 1\).*got 0.0"),
        ({"alpha": 1.0}, r"alpha must lie in \(0, 1\).*got 1.0"),
        ({"alpha": -0.1}, r"alpha must lie in \(0, 1\).*got -0.1"),
        ({"alpha": 1.5}, r"alpha must lie in \(0, 1\).*got 1.5"),
        ({"alpha": float("nan")}, r"alpha must lie in \(0, 1\).*got nan"),
    ],
)
def test_bad_sampling_parameters_raise(kwargs, match):
    smoothed = SmoothedClassifier(ConstantBase(2, 0).eval(), 2, sigma=0.25)
    with pytest.raises(ValueError, match=match):
        smoothed.certify(torch.rand(3), **kwargs)
    if "n0" not in kwargs:
        with pytest.raises(ValueError, match=match):
            smoothed.predict(torch.rand(3), **kwargs)


def test_bad_setup_raises():
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 2 .*got 1"):
        SmoothedClassifier(ConstantBase(2, 0).eval(), 1, sigma=0.25)
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1 .*got 0"):
        SmoothedClassifier(ConstantBase(2, 0).eval(), 2, sigma=0.25, batch_size=0)
    with pytest.raises(ValueError, match=r"base is in training mode.*call base.eval\(\)"):
        SmoothedClassifier(torch.nn.Linear(3, 2), 2, sigma=0.25).certify(torch.rand(3), n=10)
    with pytest.raises(ValueError, match=r"expected \(\d+, 2\): set num_classes"):
        SmoothedClassifier(ConstantBase(3, 0).eval(), 2, sigma=0.25).certify(torch.rand(3), n=10)
    smoothed = SmoothedClassifier(ConstantBase(2, 0).eval(), 2, sigma=0.25)
    with pytest.raises(ValueError, match="inputs must be a floating-point torch.Tensor"):
        smoothed.certify(torch.ones(3, dtype=torch.int64), n=10)
    with pytest.raises(ValueError, match="x must be one input as a torch.Tensor"):
        smoothed.certify(np.ones(3), n=10)


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(13)
    sigma, n = 0.25, 50_000
    w, b, xs, margin = linear_problem(rng, dim=16, num_points=20)
    x = torch.as_tensor(xs)
    results = {}
    for device in ["cpu", "cuda"]:
        base = LinearBase(w, b).to(device).eval()
        smoothed = SmoothedClassifier(base, 2, sigma=sigma, device=device, batch_size=4096)
        results[device] = smoothed.certify_batch(x, n=n, seeds=seeded(14, len(x)))
        again = smoothed.certify_batch(x, n=n, seeds=seeded(14, len(x)))
        assert [without_time(c) for c in again] == [without_time(c) for c in results[device]]
    # Different random streams: counts agree within two-sample binomial error.
    p_top = stats.norm.cdf(np.abs(margin) / (sigma * np.linalg.norm(w)))
    diff = np.array([c.n_a - g.n_a for c, g in zip(results["cpu"], results["cuda"], strict=True)])
    assert (np.abs(diff) <= 5 * np.sqrt(2 * n * p_top * (1 - p_top)) + 1).all()
    # A unanimous base gives identical certificates on both devices.
    certs = []
    for device in ["cpu", "cuda"]:
        smoothed = SmoothedClassifier(ConstantBase(4, 2).eval(), 4, sigma=0.5, device=device)
        certs.append(without_time(smoothed.certify(torch.rand(3, 8, 8), n=5000)))
    assert certs[0] == certs[1]
