"""The pruned quadratic certificate and its large-K path against the unpruned computation
(docs/theory.md section 3.2, "Pruning and many classes").

Unpruned: every point solved against all K - 1 rivals, the minimum taken over all of them. The
pruned certifier must give the same radii, nearest classes and minimisers; its lower bounds
must never exceed a pair's solved distance; the on-demand pair cache (forced here by a tiny
budget) must give the same answers as the table of all pairs.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from gmcert.certify.quadratic import QuadraticCertifier
from gmcert.memory import physical_memory

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


def many_class_mixture(K, dim, seed, n_points=60):
    """K well-spread classes with random well-conditioned precisions, and points drawn from
    them (so most points have a few near rivals and many far ones)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((K, dim)) * 2.0
    W = rng.standard_normal((K, dim, dim + 2))
    precisions = W @ W.transpose(0, 2, 1) / dim + 0.3 * np.eye(dim)
    log_weights = 0.5 * np.linalg.slogdet(precisions)[1] + np.log(rng.dirichlet(np.ones(K) * 5))
    labels = rng.integers(0, K, n_points)
    chol = np.linalg.cholesky(np.linalg.inv(precisions[labels]))
    Z = means[labels] + np.einsum("nde,ne->nd", chol, rng.standard_normal((len(labels), dim)))
    as_t = torch.from_numpy
    return as_t(means), as_t(precisions), as_t(log_weights), as_t(Z)


def solved_items(certifier, monkeypatch):
    """Count the (point, rival) pairs the certifier solves exactly."""
    counter = {"items": 0}
    original = certifier._solve_pairs

    def counting(point, *args):
        counter["items"] += len(point)
        return original(point, *args)

    monkeypatch.setattr(certifier, "_solve_pairs", counting)
    return counter


def assert_same_certificate(a, b):
    finite = torch.isfinite(b.radius)
    assert torch.equal(torch.isfinite(a.radius), finite)
    scale = b.radius[finite].abs().clamp(min=1.0)
    assert ((a.radius[finite] - b.radius[finite]).abs() <= 1e-12 * scale).all()
    assert torch.equal(a.nearest_class, b.nearest_class)
    assert torch.equal(a.witness_verified, b.witness_verified)
    # The search stops once the radius is known to ~(d + 2) eps; the minimiser, at a strict
    # minimum, is then known to about the square root of that.
    assert torch.allclose(a.delta[finite], b.delta[finite], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cache", ["all pairs", "on demand"])
def test_pruned_equals_unpruned_at_many_classes(cache, monkeypatch):
    means, precisions, log_weights, Z = many_class_mixture(200, 16, seed=0)
    # 300 pairs' worth of cache: far below the 19,900 pairs, so pairs are decomposed on demand
    # and evicted; the curvature bound then comes from the class spectra.
    budget = 300 * (16 * 16 + 16) * 8 if cache == "on demand" else 1 << 30
    pruned = QuadraticCertifier(means, precisions, log_weights, pair_cache_bytes=budget)
    full = QuadraticCertifier(means, precisions, log_weights, prune=False)
    assert pruned._pairs.complete == (cache == "all pairs")
    counted = solved_items(pruned, monkeypatch)
    pred, radius = pruned.certify(Z)
    out = pruned.certificate(Z)
    assert torch.equal(radius, out.radius)
    assert torch.equal(pred, full.predict(Z))
    assert_same_certificate(out, full.certificate(Z))
    # The point of pruning: far fewer than the 199 rivals per point are solved.
    assert counted["items"] < 0.1 * 2 * len(Z) * 199
    if cache == "on demand":
        assert len(pruned._pairs.cache) <= pruned._pairs.capacity


def test_given_labels_and_other_norms_match_unpruned():
    means, precisions, log_weights, Z = many_class_mixture(40, 6, seed=1)
    for norm in ("l2", "linf"):
        pruned = QuadraticCertifier(means, precisions, log_weights, norm=norm)
        full = QuadraticCertifier(means, precisions, log_weights, norm=norm, prune=False)
        labels = (pruned.predict(Z) + torch.arange(len(Z)) % 2) % 40  # half not predicted
        a, b = pruned.certificate(Z, labels), full.certificate(Z, labels)
        assert_same_certificate(a, b)
        assert (a.radius[labels != pruned.predict(Z)] == 0).all()


def test_lower_bounds_never_exceed_the_solved_distance():
    means, precisions, log_weights, Z = many_class_mixture(30, 5, seed=2)
    for budget in (1 << 30, 10 * (5 * 5 + 5) * 8):  # exact pair curvature, then class spectra
        cert = QuadraticCertifier(means, precisions, log_weights, pair_cache_bytes=budget)
        centred, pulled, scores = cert._scores(Z)
        pred = scores.argmax(0)
        points = torch.arange(len(Z))
        values = scores[pred, points][None] - scores
        gradients = pulled - pulled[pred, points][None]
        magnitudes = cert._magnitudes(centred)
        bound = cert._lower_bounds(values, gradients, magnitudes, pred)
        rival, point = (torch.arange(30)[:, None] != pred[None]).nonzero(as_tuple=True)
        k = pred[point]
        scale = [m[k, point] + m[rival, point] for m in magnitudes]
        radius, _, _ = cert._solve_pairs(
            point, k, rival, values[rival, point], gradients[rival, point], *scale
        )
        finite = torch.isfinite(radius)
        assert (bound[rival, point][finite] <= radius[finite]).all()
        # Not vacuous: most rivals' bounds exceed the point's radius, so they are pruned.
        best = torch.full((len(Z),), torch.inf, dtype=radius.dtype)
        best = best.scatter_reduce(0, point, radius, reduce="amin")
        assert (bound[rival, point] > best[point]).double().mean() > 0.5


def test_refuses_up_front_when_it_cannot_fit():
    total = physical_memory()
    if total is None:
        pytest.skip("this OS does not report its memory")
    means, precisions, log_weights, _ = many_class_mixture(3, 2, seed=3)
    with pytest.raises(ValueError, match=re.escape("the quadratic certificate of 3 classes")):
        QuadraticCertifier(means, precisions, log_weights, working_bytes=2 * total)
