"""Tests of `GaussianMixtureClassifier` against independent references.

Every expected value comes from scikit-learn (LDA, QDA, GaussianNB, PCA, ledoit_wolf, oas) or
from scipy / numpy written out here, never from an earlier run of the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp
from sklearn.covariance import OAS, LedoitWolf, ledoit_wolf, oas
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import (
    LinearDiscriminantAnalysis,
    QuadraticDiscriminantAnalysis,
)
from sklearn.naive_bayes import GaussianNB
from sklearn.utils.estimator_checks import parametrize_with_checks

from gmcert.models.mixture import COVARIANCE_FAMILIES, SHRINKAGE_RULES, GaussianMixtureClassifier

G = GaussianMixtureClassifier


def relative(ridge: float, X) -> float:
    """The reg_covar (relative to the data's mean per-coordinate variance) that adds ``ridge``."""
    return ridge / np.var(X, axis=0).mean()


TIGHT = dict(rtol=1e-10, atol=1e-10)


def gaussian_classes(counts, d, *, seed, labels=None, spread=3.0):
    """X, y with class k ~ N(mu_k, A_k A_k^T): distinct random means and covariances."""
    rng = np.random.default_rng(seed)
    labels = np.arange(len(counts)) if labels is None else np.asarray(labels)
    X, y = [], []
    for label, n_k in zip(labels, counts, strict=True):
        mu = spread * rng.standard_normal(d)
        A = rng.standard_normal((d, d)) / np.sqrt(d) + 0.5 * np.eye(d)
        X.append(mu + rng.standard_normal((n_k, d)) @ A.T)
        y.append(np.full(n_k, label))
    X, y = np.concatenate(X), np.concatenate(y)
    order = rng.permutation(len(y))  # interleave classes, so chunks mix them
    return X[order], y[order]


def class_stats(X, y):
    """Per-class (label, rows, mean, MLE covariance), by plain numpy."""
    out = []
    for label in np.unique(y):
        Xk = X[y == label]
        out.append((label, Xk, Xk.mean(0), np.cov(Xk, rowvar=False, bias=True)))
    return out


def within_class_residuals(X, y):
    R = np.empty_like(X)
    for label in np.unique(y):
        R[y == label] = X[y == label] - X[y == label].mean(0)
    return R


def scipy_joint_log_likelihood(X, priors, means, covs):
    return np.column_stack(
        [
            np.log(p) + stats.multivariate_normal(mu, cov).logpdf(X)
            for p, mu, cov in zip(priors, means, covs, strict=True)
        ]
    )


@pytest.fixture(scope="module")
def data():
    """Unbalanced, 3 classes, d = 5, enough samples per class for every family."""
    return gaussian_classes([60, 90, 150], 5, seed=0)


@pytest.fixture(scope="module")
def test_points():
    return np.random.default_rng(1).normal(scale=4.0, size=(200, 5))


# ---------------------------------------------------------------- scikit-learn contract
@parametrize_with_checks(
    [
        G(),
        G(shrinkage="none"),
        G(shrinkage="oas", tau=0.05),
        G(covariance="full"),
        G(covariance="full", shrinkage="oas"),
        G(covariance="diag"),
        G(covariance="isotropic", priors="uniform"),
        G(covariance="lowrank", rank=1),
    ]
)
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


# ------------------------------------------------------------------- shared vs LDA
@pytest.mark.parametrize("solver", ["lsqr", "eigen"])
@pytest.mark.parametrize("shrinkage", ["none", 0.3])
def test_shared_matches_lda(data, test_points, solver, shrinkage):
    X, y = data
    ours = G(covariance="shared", shrinkage=shrinkage, reg_covar=0.0).fit(X, y)
    lda = LinearDiscriminantAnalysis(
        solver=solver, shrinkage=None if shrinkage == "none" else shrinkage, store_covariance=True
    ).fit(X, y)
    np.testing.assert_allclose(ours.priors_, lda.priors_, **TIGHT)
    np.testing.assert_allclose(ours.means_, lda.means_, **TIGHT)
    np.testing.assert_allclose(ours.covariances_, lda.covariance_, **TIGHT)
    M, c = ours.linear_head()
    np.testing.assert_allclose(M, lda.coef_, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(c, lda.intercept_, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(
        ours.predict_proba(test_points), lda.predict_proba(test_points), rtol=1e-7, atol=1e-10
    )
    np.testing.assert_array_equal(ours.predict(test_points), lda.predict(test_points))
    assert ours.is_linear_


def test_shared_custom_priors_shift_only_the_intercept(data, test_points):
    # LDA weights its class covariances by the priors it is given, so it is not a reference
    # for a pooled covariance with non-empirical priors; Bayes' rule is: the posterior log-odds
    # move by log(p / p_empirical).
    X, y = data
    priors = np.array([0.5, 0.2, 0.3])
    ours = G(covariance="shared", shrinkage="none", reg_covar=0.0, priors=priors).fit(X, y)
    lda = LinearDiscriminantAnalysis(solver="lsqr").fit(X, y)
    M, c = ours.linear_head()
    np.testing.assert_allclose(M, lda.coef_, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(c, lda.intercept_ - np.log(lda.priors_) + np.log(priors), rtol=1e-8)
    logits = lda.decision_function(test_points) - np.log(lda.priors_) + np.log(priors)
    expected = logits - logsumexp(logits, axis=1, keepdims=True)
    np.testing.assert_allclose(ours.predict_log_proba(test_points), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("rule, reference", [("ledoit_wolf", ledoit_wolf), ("oas", oas)])
def test_shared_shrinkage_equals_sklearn_on_pooled_residuals(rule, reference):
    X, y = gaussian_classes([12, 20, 9], 15, seed=3)  # n_k ~ d: shrinkage matters
    ours = G(covariance="shared", shrinkage=rule, reg_covar=0.0).fit(X, y)
    cov, alpha = reference(within_class_residuals(X, y))
    assert 0 < alpha < 1
    assert ours.shrinkage_ == pytest.approx(alpha, abs=1e-10)
    np.testing.assert_allclose(ours.covariances_, cov, **TIGHT)


def test_tau_shifts_the_rule_not_the_fitted_q(data):
    """The robust rule uses Sigma + tau I; Q itself (covariances_, sample) keeps Sigma."""
    X, y = data
    plain = G(shrinkage="oas", reg_covar=1e-3).fit(X, y)
    robust = G(shrinkage="oas", reg_covar=1e-3, tau=0.7).fit(X, y)
    np.testing.assert_allclose(robust.covariances_, plain.covariances_, **TIGHT)
    np.testing.assert_allclose(
        np.linalg.inv(robust.precisions_),
        plain.covariances_ + 0.7 * np.eye(5),
        rtol=1e-9,
        atol=1e-9,
    )
    M, _ = robust.linear_head()
    np.testing.assert_allclose(
        M, robust.means_ @ np.linalg.inv(plain.covariances_ + 0.7 * np.eye(5)), rtol=1e-9, atol=1e-9
    )


# --------------------------------------------------------------------- full vs QDA
@pytest.mark.parametrize(
    "shrinkage, qda_kwargs",
    [
        ("none", {}),
        (0.25, {"shrinkage": 0.25}),
        ("ledoit_wolf", {"covariance_estimator": LedoitWolf()}),
        ("oas", {"covariance_estimator": OAS()}),
    ],
)
def test_full_matches_qda(data, test_points, shrinkage, qda_kwargs):
    X, y = data
    priors = np.array([0.2, 0.5, 0.3])
    ours = G(covariance="full", shrinkage=shrinkage, reg_covar=0.0, priors=priors).fit(X, y)
    qda = QuadraticDiscriminantAnalysis(
        solver="eigen", store_covariance=True, priors=priors, **qda_kwargs
    ).fit(X, y)
    np.testing.assert_allclose(ours.means_, qda.means_, **TIGHT)
    np.testing.assert_allclose(ours.covariances_, np.stack(qda.covariance_), **TIGHT)
    np.testing.assert_allclose(
        ours.predict_log_proba(test_points),
        qda.predict_log_proba(test_points),
        rtol=1e-8,
        atol=1e-8,
    )
    np.testing.assert_array_equal(ours.predict(test_points), qda.predict(test_points))
    assert not ours.is_linear_
    with pytest.raises(ValueError, match="quadratic"):
        ours.linear_head()


def test_full_unshrunk_log_likelihood_equals_scipy(data, test_points):
    X, y = data
    ours = G(covariance="full", shrinkage="none", reg_covar=0.0).fit(X, y)
    per_class = class_stats(X, y)
    priors = [len(Xk) / len(X) for _, Xk, _, _ in per_class]
    expected = scipy_joint_log_likelihood(
        test_points, priors, [m for *_, m, _ in per_class], [c for *_, c in per_class]
    )
    np.testing.assert_allclose(ours.predict_joint_log_proba(test_points), expected, rtol=1e-10)


@pytest.mark.parametrize("rule, reference", [("ledoit_wolf", ledoit_wolf), ("oas", oas)])
def test_full_shrinkage_equals_sklearn_per_class(rule, reference):
    X, y = gaussian_classes([12, 20, 9], 15, seed=4)
    reg = 1e-4
    ours = G(covariance="full", shrinkage=rule, reg_covar=relative(reg, X)).fit(X, y)
    for k, (_, Xk, _, _) in enumerate(class_stats(X, y)):
        cov, alpha = reference(Xk)
        assert ours.shrinkage_[k] == pytest.approx(alpha, abs=1e-10)
        np.testing.assert_allclose(ours.covariances_[k], cov + reg * np.eye(15), **TIGHT)


# ---------------------------------------------------------------- diag vs GaussianNB
@pytest.mark.parametrize("priors", [None, [0.6, 0.1, 0.3]])
def test_diag_matches_gaussian_nb(data, test_points, priors):
    X, y = data
    var_smoothing = 1e-3
    # GaussianNB adds var_smoothing * (largest feature variance) to every variance.
    reg = var_smoothing * np.var(X, axis=0).max()
    priors_option = "empirical" if priors is None else priors
    ours = G(covariance="diag", reg_covar=relative(reg, X), priors=priors_option)
    ours.fit(X, y)
    nb = GaussianNB(var_smoothing=var_smoothing, priors=priors).fit(X, y)
    np.testing.assert_allclose(ours.means_, nb.theta_, **TIGHT)
    np.testing.assert_allclose(np.diagonal(ours.covariances_, axis1=1, axis2=2), nb.var_, **TIGHT)
    np.testing.assert_allclose(ours.covariances_, [np.diag(v) for v in nb.var_], **TIGHT)
    np.testing.assert_allclose(
        ours.predict_joint_log_proba(test_points),
        nb.predict_joint_log_proba(test_points),
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        ours.predict_proba(test_points), nb.predict_proba(test_points), rtol=1e-8, atol=1e-12
    )


# ------------------------------------------------------------------------ isotropic
def test_isotropic_is_a_pooled_scalar_variance(data, test_points):
    X, y = data
    reg = 1e-2
    ours = G(covariance="isotropic", reg_covar=relative(reg, X)).fit(X, y)
    n, d = X.shape
    sigma2 = np.sum(within_class_residuals(X, y) ** 2) / (n * d) + reg
    np.testing.assert_allclose(ours.covariances_, sigma2 * np.eye(d), **TIGHT)
    per_class = class_stats(X, y)
    priors = [len(Xk) / n for _, Xk, _, _ in per_class]
    means = [m for *_, m, _ in per_class]
    expected = scipy_joint_log_likelihood(test_points, priors, means, [sigma2 * np.eye(d)] * 3)
    np.testing.assert_allclose(ours.predict_joint_log_proba(test_points), expected, rtol=1e-10)
    # Nearest mean, offset by sigma^2 log prior: the textbook form of the same rule.
    dist2 = ((test_points[:, None, :] - np.array(means)[None]) ** 2).sum(-1)
    nearest = np.argmax(np.log(priors) - dist2 / (2 * sigma2), axis=1)
    np.testing.assert_array_equal(ours.predict(test_points), nearest)
    assert ours.is_linear_


# ---------------------------------------------------------------- lowrank vs PPCA
def ppca_covariance(cov, rank):
    """Tipping-Bishop maximum-likelihood PPCA covariance from an MLE covariance, via eigh."""
    lam, V = np.linalg.eigh(cov)
    lam, V = lam[::-1], V[:, ::-1]
    sigma2 = lam[rank:].mean()
    W = V[:, :rank] * np.sqrt(lam[:rank] - sigma2)
    return W @ W.T + sigma2 * np.eye(len(cov))


@pytest.mark.parametrize("rank", [1, 3])
def test_lowrank_is_probabilistic_pca(data, test_points, rank):
    X, y = data
    reg = 1e-3
    ours = G(covariance="lowrank", rank=rank, reg_covar=relative(reg, X)).fit(X, y)
    d = X.shape[1]
    for k, (_, Xk, mean, cov) in enumerate(class_stats(X, y)):
        np.testing.assert_allclose(ours.means_[k], mean, **TIGHT)
        expected = ppca_covariance(cov, rank) + reg * np.eye(d)
        np.testing.assert_allclose(ours.covariances_[k], expected, **TIGHT)
        # scikit-learn's PCA gives the same model with the unbiased (n - 1) normalisation.
        pca = PCA(n_components=rank, svd_solver="full").fit(Xk)
        n_k = len(Xk)
        np.testing.assert_allclose(
            ours.covariances_[k], pca.get_covariance() * (n_k - 1) / n_k + reg * np.eye(d), **TIGHT
        )
        # rank leading eigenvalues kept (+ reg), the rest replaced by their mean (+ reg).
        lam = np.sort(np.linalg.eigvalsh(cov))[::-1]
        got = np.sort(np.linalg.eigvalsh(ours.covariances_[k]))[::-1]
        np.testing.assert_allclose(got[:rank], lam[:rank] + reg, rtol=1e-9)
        np.testing.assert_allclose(got[rank:], lam[rank:].mean() + reg, rtol=1e-9)


def test_lowrank_with_fewer_samples_than_features():
    # PCA's noise variance averages only min(n, d) - rank eigenvalues; the PPCA MLE averages
    # all d - rank of them (zeros included), which is what the eigh reference computes.
    X, y = gaussian_classes([8, 11], 20, seed=5)
    ours = G(covariance="lowrank", rank=4, reg_covar=0.0).fit(X, y)
    for k, (_, _, _, cov) in enumerate(class_stats(X, y)):
        np.testing.assert_allclose(ours.covariances_[k], ppca_covariance(cov, 4), **TIGHT)


# ----------------------------------------------------------------- streamed fit
FIT_ATTRIBUTES = ("priors_", "means_", "covariances_", "precisions_", "log_weights_", "shrinkage_")

FAMILY_SETTINGS = [
    dict(covariance="shared"),
    dict(covariance="shared", shrinkage="oas"),
    dict(covariance="full"),
    dict(covariance="full", shrinkage="oas"),
    dict(covariance="diag"),
    dict(covariance="isotropic"),
    dict(covariance="lowrank", rank=2),
]


@pytest.mark.parametrize("params", FAMILY_SETTINGS, ids=lambda p: "-".join(map(str, p.values())))
def test_chunked_fit_equals_one_pass(data, test_points, params):
    X, y = data
    small = G(**params, chunk_size=7).fit(X, y)
    whole = G(**params, chunk_size=10**6).fit(X, y)
    for name in FIT_ATTRIBUTES:
        np.testing.assert_allclose(getattr(small, name), getattr(whole, name), **TIGHT)
    np.testing.assert_allclose(
        small.predict_joint_log_proba(test_points),
        whole.predict_joint_log_proba(test_points),
        rtol=1e-10,
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fit_from_read_only_memmap(tmp_path, data, test_points, dtype):
    X, y = data
    X = X.astype(dtype)
    path = tmp_path / "latents.dat"
    writer = np.memmap(path, dtype=dtype, mode="w+", shape=X.shape)
    writer[:] = X
    writer.flush()
    del writer
    Z = np.memmap(path, dtype=dtype, mode="r", shape=X.shape)  # read-only: fit must not write
    for params in FAMILY_SETTINGS:
        from_disk = G(**params, chunk_size=50).fit(Z, y)
        in_memory = G(**params).fit(np.array(X), y)
        for name in FIT_ATTRIBUTES:
            value = getattr(from_disk, name)
            assert np.asarray(value).dtype == np.float64, name
            np.testing.assert_allclose(value, getattr(in_memory, name), **TIGHT)
        np.testing.assert_array_equal(from_disk.predict(Z[:40]), in_memory.predict(X[:40]))


# ------------------------------------------------------------------------ queries
@pytest.mark.parametrize("params", FAMILY_SETTINGS, ids=lambda p: "-".join(map(str, p.values())))
def test_score_samples_is_the_mixture_log_density(data, test_points, params):
    X, y = data
    model = G(**params, priors=[0.3, 0.3, 0.4]).fit(X, y)
    expected = logsumexp(
        scipy_joint_log_likelihood(
            test_points, model.priors_, model.means_, model.class_covariances()
        ),
        axis=1,
    )
    np.testing.assert_allclose(model.score_samples(test_points), expected, rtol=1e-10)
    proba = model.predict_proba(test_points)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(model.predict_log_proba(test_points)), proba, rtol=1e-12)
    np.testing.assert_allclose(
        model.class_precisions() @ model.class_covariances(),
        np.broadcast_to(np.eye(5), (3, 5, 5)),
        atol=1e-9,
    )


@pytest.mark.parametrize("covariance", ["shared", "isotropic"])
def test_decision_function_agrees_with_linear_head(data, test_points, covariance):
    X, y = data
    labels = np.array(["a", "b", "c"])[y]
    model = G(covariance=covariance).fit(X, labels)
    M, c = model.linear_head()
    head_scores = test_points @ M.T + c
    scores = model.decision_function(test_points)
    assert scores.shape == (len(test_points), 3)
    np.testing.assert_array_equal(scores.argmax(1), head_scores.argmax(1))
    # The head drops only a term common to all classes (-1/2 z' P z and the normaliser).
    gap = scores - head_scores
    np.testing.assert_allclose(gap - gap[:, :1], 0.0, atol=1e-8)
    np.testing.assert_array_equal(model.predict(test_points), model.classes_[head_scores.argmax(1)])

    two = y < 2
    binary = G(covariance=covariance).fit(X[two], labels[two])
    M, c = binary.linear_head()
    log_odds = test_points @ (M[1] - M[0]) + (c[1] - c[0])
    np.testing.assert_allclose(binary.decision_function(test_points), log_odds, rtol=1e-8)


def test_sample_frequencies_moments_and_seed(data):
    X, y = data
    priors = np.array([0.2, 0.3, 0.5])
    model = G(covariance="full", priors=priors, random_state=7).fit(X, np.array([4, 9, 2])[y])
    n = 40_000
    Z, labels = model.sample(n, random_state=0)
    assert Z.shape == (n, 5) and Z.dtype == np.float64
    assert set(np.unique(labels)) <= set(model.classes_)
    for k, label in enumerate(model.classes_):
        Zk = Z[labels == label]
        n_k = len(Zk)
        # binomial count, 5 standard deviations
        assert abs(n_k - n * priors[k]) < 5 * np.sqrt(n * priors[k] * (1 - priors[k]))
        cov = model.covariances_[k]
        sd = np.sqrt(np.diag(cov))
        assert np.all(np.abs(Zk.mean(0) - model.means_[k]) < 5 * sd / np.sqrt(n_k))
        # Var of a sample covariance entry: (S_ii S_jj + S_ij^2) / n
        se = np.sqrt((np.outer(sd**2, sd**2) + cov**2) / n_k)
        assert np.all(np.abs(np.cov(Zk, rowvar=False) - cov) < 5 * se)

    again_Z, again_labels = model.sample(n, random_state=0)
    np.testing.assert_array_equal(again_Z, Z)
    np.testing.assert_array_equal(again_labels, labels)
    assert not np.array_equal(model.sample(50, random_state=1)[0], Z[:50])
    # without an argument, the estimator's own random_state decides
    np.testing.assert_array_equal(model.sample(50)[0], model.sample(50)[0])
    np.testing.assert_array_equal(model.sample(50)[0], model.sample(50, random_state=7)[0])
    with pytest.raises(ValueError, match="n_samples"):
        model.sample(0)


# ---------------------------------------------------------------------- bad input
def test_full_without_shrinkage_needs_d_plus_one_samples_per_class():
    X, y = gaussian_classes([30, 5], 6, seed=8)
    for shrinkage in ("none", None, 0.0):
        with pytest.raises(ValueError, match=r"covariance='shared'.*'full' with shrinkage") as e:
            G(covariance="full", shrinkage=shrinkage).fit(X, y)
        assert "{'1': 5}" in str(e.value)  # names the offending class
    G(covariance="full", shrinkage="ledoit_wolf").fit(X, y)  # the suggested fix works
    G(covariance="shared", shrinkage="none").fit(X, y)


def test_lowrank_rank_too_large():
    X, y = gaussian_classes([30, 5], 6, seed=8)
    with pytest.raises(ValueError, match=r"'shared', or 'lowrank' with a smaller rank"):
        G(covariance="lowrank", rank=4).fit(X, y)
    G(covariance="lowrank", rank=3).fit(X, y)  # n_k = rank + 2 suffices
    with pytest.raises(ValueError, match=r"rank < n_features = 6.*'full'"):
        G(covariance="lowrank", rank=6).fit(X, y)


def test_diag_with_singleton_class_names_pooled_families():
    X, y = gaussian_classes([30, 1], 4, seed=9)
    with pytest.raises(ValueError, match=r"'isotropic' or 'shared'"):
        G(covariance="diag").fit(X, y)
    G(covariance="isotropic").fit(X, y)
    G(covariance="shared").fit(X, y)


def test_unshrunk_shared_needs_degrees_of_freedom():
    X, y = gaussian_classes([4, 5], 10, seed=10)
    with pytest.raises(ValueError, match="ledoit_wolf"):
        G(covariance="shared", shrinkage="none").fit(X, y)
    G(covariance="shared").fit(X, y)


def test_unknown_family_and_shrinkage_list_the_options(data):
    X, y = data
    with pytest.raises(ValueError, match="unknown covariance family 'spherical'") as e:
        G(covariance="spherical").fit(X, y)
    assert all(family in str(e.value) for family in COVARIANCE_FAMILIES)
    for bad in ("auto", 1.5, -0.1, True, [0.1]):
        with pytest.raises(ValueError, match="unknown shrinkage|a fixed shrinkage must be") as e:
            G(shrinkage=bad).fit(X, y)
        assert all(rule in str(e.value) for rule in SHRINKAGE_RULES), bad


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(reg_covar=-1.0), "reg_covar must be a number >= 0, got -1.0"),
        (dict(tau=-0.1), "tau must be a number >= 0, got -0.1"),
        (dict(covariance="full", tau=0.1), r"tau \(the robust linear rule\) needs a shared"),
        (dict(chunk_size=0), "chunk_size must be an integer >= 1, got 0"),
        (dict(covariance="lowrank", rank=0), "rank must be an integer >= 1, got 0"),
    ],
)
def test_bad_parameters(data, params, match):
    with pytest.raises(ValueError, match=match):
        G(**params).fit(*data)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_x_is_refused(data, bad):
    X, y = data
    X = X.copy()
    X[3, 2] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        G().fit(X, y)
    model = G().fit(*data)
    with pytest.raises(ValueError, match="NaN|infinity"):
        model.predict(X)


def test_single_class_is_refused(data):
    X, _ = data
    with pytest.raises(ValueError, match="at least 2 classes.*1 class"):
        G().fit(X, np.zeros(len(X)))


@pytest.mark.parametrize(
    "priors, match",
    [
        ([0.5, 0.5], "3 positive weights"),
        ([0.2, 0.3, 0.4, 0.1], "3 positive weights"),
        ([0.5, 0.6, -0.1], "3 positive weights"),
        ([0.5, np.nan, 0.5], "3 positive weights"),
        ("balanced", "'empirical', 'uniform'"),
    ],
)
def test_bad_priors(data, priors, match):
    with pytest.raises(ValueError, match=match):
        G(priors=priors).fit(*data)


def test_priors_are_normalised_and_uniform_works(data):
    X, y = data
    np.testing.assert_allclose(G(priors=[2, 2, 4]).fit(X, y).priors_, [0.25, 0.25, 0.5])
    np.testing.assert_allclose(G(priors="uniform").fit(X, y).priors_, np.full(3, 1 / 3))
    np.testing.assert_allclose(G().fit(X, y).priors_, np.bincount(y) / len(y))
