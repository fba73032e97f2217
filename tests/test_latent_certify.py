"""The closed-form linear certificate: sound, tight, and equal to the naive pairwise form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmcert.certify.linear import LinearCertifier, gram_pairwise_l2


def random_linear_model(rng, num_classes, dim):
    M = rng.standard_normal((num_classes, dim))
    c = rng.standard_normal(num_classes)
    Z = rng.standard_normal((400, dim)) * 2
    return M, c, Z


def predict(M, c, Z):
    return np.argmax(np.atleast_2d(Z) @ M.T + c, axis=1)


def worst_direction(M, k, j, norm):
    """The unit-norm direction that lowers s_k - s_j fastest, in the given perturbation norm."""
    w = M[k] - M[j]
    if norm == "l2":
        return -w / np.linalg.norm(w)
    if norm == "linf":
        return -np.sign(w)
    e = np.zeros_like(w)  # l1: all mass on the largest coordinate of w
    i = np.argmax(np.abs(w))
    e[i] = -np.sign(w[i])
    return e


def naive_radius(M, c, z, norm):
    q = {"l2": 2, "linf": 1, "l1": np.inf}[norm]
    s = M @ z + c
    k = int(np.argmax(s))
    ratios = [(s[k] - s[j]) / np.linalg.norm(M[k] - M[j], ord=q) for j in range(len(c)) if j != k]
    return k, min(ratios)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
@pytest.mark.parametrize("num_classes,dim", [(2, 3), (5, 4), (10, 16)])
def test_sound_and_tight(norm, num_classes, dim):
    rng = np.random.default_rng(num_classes * 100 + dim)
    M, c, Z = random_linear_model(rng, num_classes, dim)
    pred, radius = LinearCertifier(M, c, norm=norm).certify(Z)
    pred, radius = pred.numpy(), radius.numpy()
    assert np.array_equal(pred, predict(M, c, Z))
    for z, k, r in zip(Z[:150], pred, radius, strict=False):
        assert r > 0
        # Tightness: the exact minimiser, pushed out by 1e-6 relative, flips the prediction.
        margins = (M[k] - M) @ z + (c[k] - c)
        q = {"l2": 2, "linf": 1, "l1": np.inf}[norm]
        dual = np.array(
            [np.linalg.norm(M[k] - M[j], ord=q) if j != k else np.inf for j in range(num_classes)]
        )
        j = int(np.argmin(np.where(np.arange(num_classes) == k, np.inf, margins / dual)))
        d = worst_direction(M, k, j, norm)
        assert predict(M, c, z + d * r * (1 + 1e-6))[0] != k
        # Soundness: just inside R along the worst direction, and in many random directions.
        assert predict(M, c, z + d * r * (1 - 1e-9))[0] == k
        dirs = rng.standard_normal((500, dim))
        dirs /= np.linalg.norm(dirs, ord={"l2": 2, "linf": np.inf, "l1": 1}[norm], axis=1)[:, None]
        scales = rng.uniform(0, 1, (500, 1)) * r * (1 - 1e-9)
        assert np.all(predict(M, c, z + dirs * scales) == k)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_matches_naive_pairwise_loop(norm):
    rng = np.random.default_rng(7)
    M, c, Z = random_linear_model(rng, 12, 20)
    pred, radius = LinearCertifier(M, c, norm=norm).certify(Z)
    for z, k, r in zip(Z, pred.numpy(), radius.numpy(), strict=True):
        k_naive, r_naive = naive_radius(M, c, z, norm)
        assert k == k_naive
        np.testing.assert_allclose(r, r_naive, rtol=1e-9, atol=1e-12)


def test_gram_form_equals_pairwise_loop():
    rng = np.random.default_rng(3)
    M = torch.as_tensor(rng.standard_normal((30, 50)))
    loop = torch.stack([torch.stack([(M[k] - M[j]).norm() for j in range(30)]) for k in range(30)])
    torch.testing.assert_close(gram_pairwise_l2(M), loop, rtol=1e-9, atol=1e-9)


def test_float32_is_sound_against_float64_truth():
    """The rounding slack must make float32 radii never exceed the exact (float64) ones."""
    rng = np.random.default_rng(11)
    M, c, Z = random_linear_model(rng, 10, 256)
    _, r64 = LinearCertifier(M, c).certify(Z)
    p32, r32 = LinearCertifier(M, c, dtype=torch.float32).certify(Z.astype(np.float32))
    ok = p32.numpy() == predict(M, c, Z)
    assert ok.all()
    assert np.all(r32.double().numpy() <= r64.numpy() * (1 + 1e-12))


def test_identical_classes_never_flip():
    M = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    c = np.array([0.5, 0.0, 0.0])  # class 1 is class 0 shifted down: it can never win
    pred, radius = LinearCertifier(M, c).certify(np.array([[3.0, 1.0]]))
    assert pred.item() == 0
    np.testing.assert_allclose(radius.item(), (3.0 * 2 + 0.5) / 2.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm must be one of"):
        LinearCertifier(np.eye(2), np.zeros(2), norm="l3")
    with pytest.raises(ValueError, match="M must be"):
        LinearCertifier(np.eye(2), np.zeros(3))
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu' or 'cuda\[:i\]'"):
        LinearCertifier(np.eye(2), np.zeros(2), device="tpu")


def test_cuda_without_a_visible_device_is_a_clear_error(monkeypatch):
    """Whatever the machine has: with no CUDA device visible, ``cuda`` is refused by name and
    ``auto`` falls back to the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cuda' was asked for but no CUDA device"):
        LinearCertifier(np.eye(2), np.zeros(2), device="cuda")
    auto = LinearCertifier(np.eye(2), np.zeros(2), device="auto")
    assert auto.device == torch.device("cpu")
    pred, radius = auto.certify(np.array([[2.0, 1.0]]))
    assert pred.device.type == "cpu" and pred.item() == 0
    np.testing.assert_allclose(radius.item(), 1.0 / np.sqrt(2.0), rtol=1e-12)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    rng = np.random.default_rng(5)
    M, c, Z = random_linear_model(rng, 10, 64)
    p_cpu, r_cpu = LinearCertifier(M, c).certify(Z)
    p_gpu, r_gpu = LinearCertifier(M, c, device="cuda").certify(Z)
    assert torch.equal(p_cpu, p_gpu.cpu())
    torch.testing.assert_close(r_cpu, r_gpu.cpu(), rtol=1e-9, atol=1e-12)
