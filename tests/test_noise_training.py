"""Heads trained under the smoothing noise: the exact noisy mixture of a linear encoder against
Monte Carlo encodings of noisy copies, its accuracy on noisy inputs, `noisy_latents`, and the
float64 `MixtureHead`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from gmcert.data.digits import build_digits
from gmcert.encoders.linear import IdentityEncoder, PCAEncoder
from gmcert.models.heads import MixtureHead, fit_linear_probe
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.models.noise_training import noise_covariance, noisy_latents, noisy_mixture

G = GaussianMixtureClassifier
SIGMA = 0.5


class AffineEncoder(nn.Module):
    """z = W (x - m) in float64: a PCA-like map with non-orthogonal rows."""

    def __init__(self, weight, offset):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float64))
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float64))

    def linear_map(self):
        return SimpleNamespace(weight=self.weight.numpy(), offset=self.offset.numpy())

    def forward(self, x):
        return (x.flatten(1) - self.offset) @ self.weight.T


def small_problem(seed=0, n_per_class=50, dim=6):
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k in range(3):
        A = rng.standard_normal((dim, dim)) * 0.1
        X.append(0.5 + 0.3 * rng.standard_normal(dim) + rng.standard_normal((n_per_class, dim)) @ A)
        y.append(np.full(n_per_class, k))
    return np.concatenate(X), np.concatenate(y)


@pytest.fixture(scope="module")
def digits():
    return build_digits()


@pytest.fixture(scope="module")
def noisy_digits_test(digits):
    """20 noisy copies (sigma = 0.5) of every digits test input, as pixels (identity)."""
    return noisy_latents(
        IdentityEncoder(), digits.test.inputs, digits.test.labels, sigma=SIGMA, copies=20, seed=99
    )


# ------------------------------------------------------------------ exact noisy covariances


@pytest.mark.parametrize("covariance", ["shared", "full"])
@pytest.mark.parametrize("encoder_kind", ["identity", "affine"])
def test_noisy_covariances_equal_those_of_noisy_encodings(covariance, encoder_kind):
    X, y = small_problem()
    if encoder_kind == "identity":
        encoder, linear_map = IdentityEncoder().double(), "identity"
    else:
        rng = np.random.default_rng(1)
        encoder = AffineEncoder(rng.standard_normal((4, X.shape[1])), rng.uniform(size=X.shape[1]))
        linear_map = encoder  # its linear_map() gives W
    params = dict(covariance=covariance, shrinkage="none", reg_covar=0.0)
    with torch.no_grad():
        Z = encoder(torch.from_numpy(X)).numpy()
    clean = G(**params).fit(Z, y)
    before = clean.covariances_.copy()
    noisy = noisy_mixture(clean, sigma=SIGMA, linear_map=linear_map)
    np.testing.assert_array_equal(clean.covariances_, before)  # the input is unchanged
    assert noisy is not clean and noisy.covariance == covariance

    copies = 400
    Zn, yn = noisy_latents(encoder, X, y, sigma=SIGMA, copies=copies, seed=0)
    empirical = G(**params).fit(Zn, yn)
    expected = noisy.class_covariances()
    got = empirical.class_covariances()
    # Monte Carlo: each entry has std about sqrt(S_ii S_jj / N), N samples per covariance.
    n_eff = copies * (len(y) if covariance == "shared" else 50)
    diag = np.diagonal(expected, axis1=1, axis2=2)
    tolerance = 5 * np.sqrt(diag[:, :, None] * diag[:, None, :] / n_eff)
    assert np.all(np.abs(got - expected) <= tolerance)
    # The added part is sigma^2 W W^T, well above the tolerance: the test can tell.
    added = expected - clean.class_covariances()
    assert np.abs(added).max() > 20 * tolerance.max()
    np.testing.assert_allclose(empirical.means_, noisy.means_, atol=5 * np.sqrt(diag.max() / 50))


def test_noisy_rule_is_the_refitted_rule():
    """precisions_ and log_weights_ are those of Sigma + sigma^2 W W^T (+ tau I for the rule)."""
    X, y = small_problem(seed=3)
    W = np.random.default_rng(4).standard_normal((X.shape[1], X.shape[1]))
    clean = G(covariance="shared", tau=0.05).fit(X, y)
    noisy = noisy_mixture(clean, sigma=0.3, linear_map=W)
    cov = clean.covariances_ + 0.09 * W @ W.T
    np.testing.assert_allclose(noisy.covariances_, cov, rtol=1e-12)
    np.testing.assert_allclose(noisy.precisions_, np.linalg.inv(cov + 0.05 * np.eye(6)), rtol=1e-8)
    logdet = np.linalg.slogdet(cov + 0.05 * np.eye(6))[1]
    np.testing.assert_allclose(noisy.log_weights_, np.log(noisy.priors_) - 0.5 * logdet)
    np.testing.assert_array_equal(noisy.means_, clean.means_)
    np.testing.assert_array_equal(noisy.get_params()["tau"], 0.05)


def test_families_of_the_noisy_mixture():
    X, y = small_problem(seed=5)
    W = np.random.default_rng(6).standard_normal((3, X.shape[1]))
    Z = (X - 0.5) @ W.T
    identity = {
        f: noisy_mixture(G(covariance=f, rank=2).fit(X, y), sigma=0.2, linear_map="identity")
        for f in ("isotropic", "diag", "lowrank")
    }
    # The identity adds sigma^2 I exactly: every family holds the result.
    assert {f: m.covariance for f, m in identity.items()} == {f: f for f in identity}
    np.testing.assert_allclose(
        np.diagonal(identity["diag"].class_covariances(), axis1=1, axis2=2),
        np.diagonal(G(covariance="diag").fit(X, y).class_covariances(), axis1=1, axis2=2) + 0.04,
    )
    # A general W: W W^T is not diagonal, so the exact noisy law needs a bigger family.
    promoted = {
        f: noisy_mixture(G(covariance=f, rank=1).fit(Z, y), sigma=0.2, linear_map=W).covariance
        for f in ("isotropic", "shared", "diag", "full", "lowrank")
    }
    assert promoted == {
        "isotropic": "shared",
        "shared": "shared",
        "diag": "full",
        "full": "full",
        "lowrank": "full",
    }
    diag = G(covariance="diag").fit(Z, y)
    full_noisy = noisy_mixture(diag, sigma=0.2, linear_map=W)
    np.testing.assert_allclose(full_noisy.covariances_, diag.covariances_ + 0.04 * W @ W.T)
    assert (
        not full_noisy.is_linear_
        and noisy_mixture(G(covariance="isotropic").fit(Z, y), sigma=0.2, linear_map=W).is_linear_
    )


def test_pca_encoder_weight_is_a_linear_map(digits):
    encoder = PCAEncoder(n_components=10, whiten=True).fit(digits.train.inputs)
    W = encoder.weight.double().numpy()
    by_tensor = noise_covariance(sigma=SIGMA, linear_map=encoder.weight, dim=10)
    np.testing.assert_allclose(by_tensor, SIGMA**2 * W @ W.T, rtol=1e-12)
    # Whitened PCA: W W^T = diag(1 / explained variance), up to the rounding of W.
    off = by_tensor - np.diag(np.diag(by_tensor))
    assert np.abs(off).max() <= 1e-5 * np.diag(by_tensor).max()
    with pytest.raises(ValueError, match="maps to 10 latent dimensions but the mixture has 64"):
        noisy_mixture(G().fit(digits.train.inputs, digits.train.labels), sigma=SIGMA, linear_map=W)


# ------------------------------------------------------------------ accuracy under noise


@pytest.mark.parametrize(
    ("covariance", "margin"), [("shared", 0.1), ("full", 0.5), ("lowrank", 0.4)]
)
def test_noise_trained_mixture_beats_the_clean_one_on_noisy_inputs(
    digits, noisy_digits_test, covariance, margin
):
    """Digits, identity encoder, sigma = 0.5 (measured: shared 0.550 -> 0.732, full 0.150 ->
    0.793, lowrank 0.270 -> 0.789 on 20 noisy copies of each test input)."""
    Zt, yt = noisy_digits_test
    clean = G(covariance=covariance).fit(digits.train.inputs, digits.train.labels)
    noisy = noisy_mixture(clean, sigma=SIGMA, linear_map="identity")
    clean_acc = (clean.predict(Zt) == yt).mean()
    noisy_acc = (noisy.predict(Zt) == yt).mean()
    assert noisy_acc > clean_acc + margin
    assert noisy_acc > 0.7
    # The torch head of the noisy mixture is the same rule (what smoothing evaluates).
    head = MixtureHead(noisy, dtype=torch.float64)
    head_pred = head(torch.from_numpy(Zt)).argmax(1).numpy()
    np.testing.assert_array_equal(noisy.classes_[head_pred], noisy.predict(Zt))


def test_noise_trained_pca_mixture_and_probe(digits):
    """PCA (20 components): noisy_mixture through the encoder's W, against the clean fit; the
    probe fitted on noisy_latents against the clean probe."""
    encoder = PCAEncoder(n_components=20).fit(digits.train.inputs)
    with torch.no_grad():
        Z = encoder(torch.from_numpy(digits.train.inputs)).double().numpy()
    Zt, yt = noisy_latents(
        encoder, digits.test.inputs, digits.test.labels, sigma=SIGMA, copies=10, seed=1
    )
    clean = G(covariance="full").fit(Z, digits.train.labels)
    noisy = noisy_mixture(clean, sigma=SIGMA, linear_map=encoder.weight)
    clean_acc, noisy_acc = (clean.predict(Zt) == yt).mean(), (noisy.predict(Zt) == yt).mean()
    assert noisy_acc > clean_acc + 0.1

    probe = fit_linear_probe(Z, digits.train.labels, seed=0)
    Zn, yn = noisy_latents(
        encoder, digits.train.inputs, digits.train.labels, sigma=SIGMA, copies=5, seed=2
    )
    noisy_probe = fit_linear_probe(Zn, yn, seed=0)

    def probe_acc(p):
        return (p.logistic.predict((Zt - p.mean) / p.scale) == yt).mean()

    assert probe_acc(noisy_probe) > probe_acc(probe)


# ------------------------------------------------------------------ noisy_latents


def test_noisy_latents_is_deterministic_and_copy_major(digits):
    x, y = digits.test.inputs[:30], digits.test.labels[:30]
    encoder = IdentityEncoder()
    Z1, y1 = noisy_latents(encoder, x, y, sigma=SIGMA, copies=3, seed=7, batch_size=8)
    Z2, y2 = noisy_latents(encoder, x, y, sigma=SIGMA, copies=3, seed=7, batch_size=8)
    np.testing.assert_array_equal(Z1, Z2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1, np.tile(y, 3))
    assert Z1.shape == (90, 64) and Z1.dtype == np.float32
    Z3, _ = noisy_latents(encoder, x, y, sigma=SIGMA, copies=3, seed=8, batch_size=8)
    assert not np.array_equal(Z1, Z3)
    # Row c * n + i is copy c of input i: x_i plus N(0, sigma^2) noise, fresh for each copy.
    noise = Z1.reshape(3, 30, 64) - x[None].astype(np.float32)
    assert abs(noise.std() - SIGMA) < 0.02 and abs(noise.mean()) < 0.02
    assert not np.allclose(noise[0], noise[1])
    # Not clipped to [0, 1], as in the smoothing theorem.
    assert Z1.min() < 0 and Z1.max() > 1


def test_noisy_latents_runs_in_the_encoder_dtype():
    X, y = small_problem()
    encoder = AffineEncoder(np.eye(6)[:2], np.zeros(6))
    Z, _ = noisy_latents(encoder, X, y, sigma=0.1, copies=2, seed=0, batch_size=64)
    assert Z.dtype == np.float64 and Z.shape == (300, 2)


@pytest.mark.parametrize("sigma", [0, -0.5, float("nan"), float("inf"), True])
def test_bad_sigma(sigma):
    X, y = small_problem()
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        noisy_latents(IdentityEncoder(), X, y, sigma=sigma, copies=1, seed=0)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        noisy_mixture(G().fit(X, y), sigma=sigma, linear_map="identity")


@pytest.mark.parametrize("copies", [0, -1, 1.5])
def test_bad_copies(copies):
    X, y = small_problem()
    with pytest.raises(ValueError, match="copies must be an integer >= 1"):
        noisy_latents(IdentityEncoder(), X, y, sigma=0.1, copies=copies, seed=0)


def test_bad_inputs_and_maps():
    X, y = small_problem()
    with pytest.raises(ValueError, match=r"labels must have shape \(150,\)"):
        noisy_latents(IdentityEncoder(), X, y[:-1], sigma=0.1, copies=1, seed=0)
    mixture = G().fit(X, y)
    nonlinear = SimpleNamespace(linear_map=lambda: None)
    with pytest.raises(ValueError, match="not linear in its input.*noisy_latents"):
        noisy_mixture(mixture, sigma=0.1, linear_map=nonlinear)
    with pytest.raises(ValueError, match="not linear in its input"):
        noisy_mixture(mixture, sigma=0.1, linear_map=None)
    with pytest.raises(ValueError, match="linear_map must be 'identity' or a matrix"):
        noisy_mixture(mixture, sigma=0.1, linear_map="pca")
    with pytest.raises(ValueError, match="fitted GaussianMixtureClassifier"):
        noisy_mixture(object(), sigma=0.1, linear_map="identity")
    with pytest.raises(ValueError, match="symmetric"):
        mixture.with_added_covariance(np.triu(np.ones((6, 6))))
    with pytest.raises(ValueError, match="positive semi-definite"):
        mixture.with_added_covariance(-np.eye(6))
    with pytest.raises(ValueError, match="shares one covariance across classes"):
        mixture.with_added_covariance(np.stack([np.eye(6) * k for k in range(3)]))


# ------------------------------------------------------------------ float64 MixtureHead


@pytest.mark.parametrize("covariance", ["shared", "full"])
def test_float64_mixture_head(digits, covariance):
    mixture = G(covariance=covariance).fit(digits.train.inputs, digits.train.labels)
    head = MixtureHead(mixture, dtype=torch.float64)
    assert head.dtype == torch.float64 and MixtureHead(mixture).dtype == torch.float32
    scores = head(torch.from_numpy(digits.test.inputs.astype(np.float32)))
    assert scores.dtype == torch.float64
    z = torch.from_numpy(digits.test.inputs)
    np.testing.assert_allclose(
        head(z).numpy(), mixture.class_scores(digits.test.inputs), rtol=1e-10, atol=1e-9
    )
    np.testing.assert_array_equal(
        mixture.classes_[head(z).argmax(1).numpy()], mixture.predict(digits.test.inputs)
    )
    # Deterministic: the same input gives bitwise the same scores.
    torch.testing.assert_close(head(z), head(z), rtol=0, atol=0)
    with pytest.raises(ValueError, match="dtype must be torch.float32"):
        MixtureHead(mixture, dtype=torch.float16)
