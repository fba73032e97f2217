"""The optimal robust linear rule and the K-class ceiling (docs/theory.md sections 2 and 5).

Independent references: a direct numerical minimisation of the robust error of linear rules
(direction and offset), closed forms in the isotropic case, Monte Carlo with exact worst-case
perturbations of linear rules, and enumeration of all matchings.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import optimize, special, stats

from gmcert.population.accuracy import two_class_certified_accuracy
from gmcert.population.ceiling import (
    _exact_matching,
    _greedy_matching,
    impossibility_radius,
    optimal_robust_error,
    pairwise_robust_accuracy_ceiling,
    pairwise_robust_error_lower_bound,
    robust_tau,
)


def random_cov(dim, rng, condition=10.0):
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spectrum = np.exp(rng.uniform(0, np.log(condition), dim))
    return q @ np.diag(spectrum) @ q.T


def robust_direction(cov, mu, rho):
    """h = (Sigma + tau I)^-1 mu, the optimal robust rule's normal (docs/theory.md section 2)."""
    return np.linalg.solve(cov + robust_tau(cov, mu, rho) * np.eye(len(mu)), mu)


def optimal_robust_accuracy(mu0, mu1, cov, radii):
    return 1.0 - optimal_robust_error(cov, 0.5 * (np.asarray(mu1) - np.asarray(mu0)), radii)


def linear_robust_error(w, b, cov, mu, rho, prior_plus=0.5):
    """Robust error of sign(w^T z + b) for N(+mu, cov) (label +) and N(-mu, cov) (label -):
    the worst l2 perturbation of radius rho lowers the margin w^T z + b by rho ||w||."""
    norm_w = np.linalg.norm(w)
    sd = math.sqrt(w @ cov @ w)
    plus = special.ndtr((rho * norm_w - w @ mu - b) / sd)
    minus = special.ndtr((rho * norm_w - w @ mu + b) / sd)
    return prior_plus * plus + (1 - prior_plus) * minus


def unit_vector(angles):
    """(d,) unit vector from d - 1 spherical angles (d = 2 or 3)."""
    if len(angles) == 1:
        return np.array([math.cos(angles[0]), math.sin(angles[0])])
    theta, phi = angles
    return np.array(
        [math.sin(phi) * math.cos(theta), math.sin(phi) * math.sin(theta), math.cos(phi)]
    )


def best_linear_robust_error(cov, mu, rho, rng, prior_plus=0.5, n_starts=12):
    """Minimum over unit directions (spherical angles) and offsets, by Nelder-Mead from
    random starts."""
    dim = len(mu)

    def objective(x):
        return linear_robust_error(unit_vector(x[:-1]), x[-1], cov, mu, rho, prior_plus)

    best = np.inf
    for _ in range(n_starts):
        x0 = np.concatenate([rng.uniform(0, 2 * np.pi, dim - 1), rng.normal(scale=0.3, size=1)])
        res = optimize.minimize(
            objective,
            x0,
            method="Nelder-Mead",
            options={"xatol": 1e-11, "fatol": 1e-16, "maxiter": 3000},
        )
        best = min(best, res.fun)
    return best


# ---------------------------------------------------------------------------------------------
# Two classes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 5, 20])
def test_isotropic_closed_form(dim):
    rng = np.random.default_rng(dim)
    mu = rng.standard_normal(dim)
    sigma = 0.7
    norm_mu = np.linalg.norm(mu)
    rhos = np.linspace(0, 1.5 * norm_mu, 31)
    got = optimal_robust_error(sigma**2 * np.eye(dim), mu, rhos)
    expected = np.where(rhos < norm_mu, stats.norm.cdf(-(norm_mu - rhos) / sigma), 0.5)
    assert np.allclose(got, expected, rtol=1e-12, atol=1e-15)
    # tau has the closed form rho sigma^2 / (||mu|| - rho).
    rho = 0.4 * norm_mu
    assert math.isclose(
        robust_tau(sigma**2 * np.eye(dim), mu, rho), rho * sigma**2 / (norm_mu - rho), rel_tol=1e-12
    )


@pytest.mark.parametrize("dim", [2, 4, 10])
def test_tau_solves_its_equation(dim):
    rng = np.random.default_rng(10 + dim)
    cov = random_cov(dim, rng, condition=100.0)
    mu = rng.standard_normal(dim)
    norm_mu = np.linalg.norm(mu)
    assert robust_tau(cov, mu, 0.0) == 0.0
    for frac in [1e-6, 0.1, 0.5, 0.9, 0.999]:
        rho = frac * norm_mu
        tau = robust_tau(cov, mu, rho)
        lhs = tau * np.linalg.norm(np.linalg.solve(cov + tau * np.eye(dim), mu))
        assert tau > 0 and math.isclose(lhs, rho, rel_tol=1e-10)
    # At rho = ||mu|| rounding decides between inf and a huge tau; beyond it, inf.
    assert robust_tau(cov, mu, norm_mu) > 1e12
    assert robust_tau(cov, mu, norm_mu * (1 + 1e-12)) == math.inf
    assert robust_tau(cov, mu, 2 * norm_mu) == math.inf
    assert impossibility_radius(mu) == pytest.approx(norm_mu)


def check_against_numerical_optimum(dim, seed, n_models):
    rng = np.random.default_rng(seed)
    for _ in range(n_models):
        cov = random_cov(dim, rng, condition=8.0)
        mu = rng.standard_normal(dim) * 1.2
        for frac in [0.0, 0.3, 0.7]:
            rho = frac * np.linalg.norm(mu)
            formula = optimal_robust_error(cov, mu, rho)
            numeric = best_linear_robust_error(cov, mu, rho, rng)
            # The formula is the optimum over ALL rules, so no linear rule may beat it, and the
            # optimum is linear, so the search must reach it.
            assert formula <= numeric + 1e-10
            assert numeric - formula < 1e-7, (formula, numeric)
            if frac > 0:
                h = robust_direction(cov, mu, rho)
                assert math.isclose(
                    linear_robust_error(h, 0.0, cov, mu, rho), formula, rel_tol=1e-9
                )


@pytest.mark.parametrize("dim", [2, 3])
def test_matches_numerical_optimum_over_linear_rules(dim):
    check_against_numerical_optimum(dim, seed=20 + dim, n_models=2 if dim == 2 else 1)


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 3])
def test_matches_numerical_optimum_over_linear_rules_exhaustive(dim):
    check_against_numerical_optimum(dim, seed=500 + dim, n_models=10)


def test_monotone_in_rho_and_reaches_one_half():
    rng = np.random.default_rng(3)
    cov = random_cov(4, rng, condition=50.0)
    mu = rng.standard_normal(4)
    rhos = np.linspace(0, 1.2 * np.linalg.norm(mu), 200)
    errors = optimal_robust_error(cov, mu, rhos)
    assert np.all(np.diff(errors) >= -1e-15)
    assert errors[0] == pytest.approx(stats.norm.cdf(-math.sqrt(mu @ np.linalg.solve(cov, mu))))
    assert np.all(errors[rhos >= np.linalg.norm(mu)] == 0.5)
    near = optimal_robust_error(cov, mu, np.linalg.norm(mu) * (1 - 1e-9))
    assert 0.49 < near < 0.5


def test_monte_carlo_robust_error_of_the_rule():
    rng = np.random.default_rng(4)
    dim, n = 3, 200_000
    cov = random_cov(dim, rng, condition=20.0)
    centre = rng.standard_normal(dim) * 3  # the rule is about the midpoint, not the origin
    mu = rng.standard_normal(dim)
    rho = 0.35 * np.linalg.norm(mu)
    h = robust_direction(cov, mu, rho)
    chol = np.linalg.cholesky(cov)
    plus = centre + mu + rng.standard_normal((n, dim)) @ chol.T
    minus = centre - mu + rng.standard_normal((n, dim)) @ chol.T
    # For a linear rule the worst l2 perturbation moves the margin by exactly rho ||h||.
    margin_plus = (plus - centre) @ h / np.linalg.norm(h)
    margin_minus = -(minus - centre) @ h / np.linalg.norm(h)
    empirical = 0.5 * np.mean(margin_plus < rho) + 0.5 * np.mean(margin_minus < rho)
    formula = optimal_robust_error(cov, mu, rho)
    se = math.sqrt(formula * (1 - formula) / (2 * n))
    assert abs(empirical - formula) < 5 * se
    # The plain LDA direction is not robust-optimal: its robust error is visibly higher.
    lda = np.linalg.solve(cov, mu)
    assert linear_robust_error(lda, 0.0, cov, mu, rho) >= formula


def test_rejects_bad_input():
    cov, mu = np.eye(2), np.array([1.0, 0.0])
    with pytest.raises(ValueError, match="for the l2 threat model only, got norm='linf'"):
        optimal_robust_error(cov, mu, 0.1, norm="linf")
    with pytest.raises(ValueError, match="cov must be positive definite"):
        optimal_robust_error(np.diag([1.0, 0.0]), mu, 0.1)
    with pytest.raises(ValueError, match="cov must be symmetric"):
        robust_tau(np.array([[1.0, 0.5], [0.0, 1.0]]), mu, 0.1)
    with pytest.raises(ValueError, match="rho must be a finite radius >= 0, got -0.1"):
        robust_tau(cov, mu, -0.1)
    with pytest.raises(ValueError, match=r"mu must have shape \(2,\), got \(3,\)"):
        robust_tau(cov, np.ones(3), 0.1)
    assert robust_tau(cov, mu, impossibility_radius(mu)) == math.inf
    with pytest.raises(ValueError, match="priors must be 2 non-negative numbers summing to 1"):
        pairwise_robust_accuracy_ceiling(np.eye(2), cov, [0.7, 0.7], 0.1)
    with pytest.raises(ValueError, match="for the l2 threat model only, got norm='l1'"):
        pairwise_robust_accuracy_ceiling(np.eye(2), cov, [0.5, 0.5], 0.1, norm="l1")


def test_population_wrapper_against_bayes_rule_certified_accuracy():
    rng = np.random.default_rng(6)
    dim = 4
    mu0, mu1 = rng.standard_normal(dim), rng.standard_normal(dim) + 1.0
    radii = np.linspace(0, 0.45 * np.linalg.norm(mu1 - mu0), 20)
    # Isotropic: the Bayes rule is already the optimal robust rule.
    iso = 0.6 * np.eye(dim)
    assert np.allclose(
        optimal_robust_accuracy(mu0, mu1, iso, radii),
        two_class_certified_accuracy(mu0, mu1, iso, radii),
        atol=1e-12,
    )
    # Anisotropic: equal at 0 (Bayes accuracy), a ceiling above the Bayes rule elsewhere.
    cov = random_cov(dim, rng, condition=30.0)
    best = optimal_robust_accuracy(mu0, mu1, cov, radii)
    bayes = two_class_certified_accuracy(mu0, mu1, cov, radii)
    assert best[0] == pytest.approx(bayes[0], abs=1e-12)
    assert np.all(best >= bayes - 1e-12) and np.any(best > bayes + 1e-4)


# ---------------------------------------------------------------------------------------------
# K classes
# ---------------------------------------------------------------------------------------------


def all_matchings(items):
    if len(items) < 2:
        yield []
        return
    first, rest = items[0], items[1:]
    yield from all_matchings(rest)  # first left unmatched
    for i, other in enumerate(rest):
        for m in all_matchings(rest[:i] + rest[i + 1 :]):
            yield [(first, other)] + m


@pytest.mark.parametrize("K", [2, 3, 5, 6])
def test_matching_is_the_best_over_all_matchings(K):
    rng = np.random.default_rng(K)
    dim = 3
    means = rng.standard_normal((K, dim)) * 1.5
    cov = random_cov(dim, rng)
    priors = rng.dirichlet(np.ones(K))
    rho = 0.3
    bound, pairs = pairwise_robust_error_lower_bound(means, cov, priors, rho)
    flat = [c for p in pairs for c in p]
    assert len(flat) == len(set(flat))

    def weight(k, j):
        return (
            2
            * min(priors[k], priors[j])
            * optimal_robust_error(cov, (means[k] - means[j]) / 2, rho)
        )

    best = max(sum(weight(k, j) for k, j in m) for m in all_matchings(list(range(K))))
    assert bound == pytest.approx(best, rel=1e-9)


def test_greedy_matching_is_valid_and_below_exact():
    rng = np.random.default_rng(8)
    K = 12
    w = rng.uniform(size=(K, K))
    w = np.triu(w, 1) + np.triu(w, 1).T
    exact, greedy = _exact_matching(w), _greedy_matching(w)
    for pairs in (exact, greedy):
        flat = [c for p in pairs for c in p]
        assert len(flat) == len(set(flat))
    assert sum(w[p] for p in greedy) <= sum(w[p] for p in exact) + 1e-12


def test_two_class_ceiling_is_the_optimum():
    rng = np.random.default_rng(9)
    cov = random_cov(3, rng)
    means = rng.standard_normal((2, 3))
    for rho in [0.0, 0.2, 0.5]:
        ceiling = pairwise_robust_accuracy_ceiling(means, cov, [0.5, 0.5], rho)
        optimum = 1 - optimal_robust_error(cov, (means[0] - means[1]) / 2, rho)
        assert ceiling == pytest.approx(optimum)


@pytest.mark.parametrize("prior", [0.2, 0.35])
def test_unequal_prior_relaxation_is_below_every_linear_rule(prior):
    # 2 min(p, 1-p) e*_equal must not exceed the best robust error of any (here: linear) rule
    # under the unequal priors.
    rng = np.random.default_rng(int(prior * 100))
    cov = random_cov(2, rng, condition=5.0)
    mu = rng.standard_normal(2)
    rho = 0.3 * np.linalg.norm(mu)
    bound, _ = pairwise_robust_error_lower_bound(np.stack([mu, -mu]), cov, [prior, 1 - prior], rho)
    assert bound == pytest.approx(2 * prior * optimal_robust_error(cov, mu, rho))
    assert bound <= best_linear_robust_error(cov, mu, rho, rng, prior_plus=prior) + 1e-10


def lda_robust_radius(means, cov, priors, Z, y, shrink=0.0):
    """For the linear rule argmax m_k^T z + c_k with m_k = (cov + shrink I)^-1 mu_k: whether
    each sample is correct, and its exact robust radius min_j margin_kj / ||m_k - m_j||."""
    P = np.linalg.inv(cov + shrink * np.eye(len(cov)))
    M = means @ P
    c = np.log(priors) - 0.5 * np.einsum("kd,kd->k", M, means)
    scores = Z @ M.T + c
    pred = scores.argmax(1)
    radius = np.full(len(Z), np.inf)
    for j in range(len(means)):
        gap = np.linalg.norm(M[pred] - M[j], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (scores[np.arange(len(Z)), pred] - scores[:, j]) / gap
        radius = np.minimum(radius, np.where(pred == j, np.inf, r))
    return pred == y, radius


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_three_class_ceiling_above_achieved_robust_accuracy(seed):
    rng = np.random.default_rng(100 + seed)
    K, dim, n = 3, 3, 60_000
    means = rng.standard_normal((K, dim)) * 1.3
    cov = random_cov(dim, rng, condition=6.0)
    priors = rng.dirichlet(np.ones(K) * 4)
    y = rng.choice(K, size=n, p=priors)
    Z = means[y] + rng.standard_normal((n, dim)) @ np.linalg.cholesky(cov).T
    scale = min(np.linalg.norm(means[k] - means[j]) for k, j in itertools.combinations(range(K), 2))
    rhos = np.linspace(0, 0.6 * scale, 7)
    ceilings = np.array([pairwise_robust_accuracy_ceiling(means, cov, priors, r) for r in rhos])
    assert np.all(np.diff(ceilings) <= 1e-12)
    for shrink in (0.0, 0.5, 2.0):
        correct, radius = lda_robust_radius(means, cov, priors, Z, y, shrink)
        hits = np.array([int(np.sum(correct & (radius >= r))) for r in rhos])
        # One-sided Clopper-Pearson lower bound at level 1e-4 on the achieved accuracy.
        lower = np.where(hits > 0, stats.beta.ppf(1e-4, np.maximum(hits, 1), n - hits + 1), 0.0)
        assert np.all(lower <= ceilings), (shrink, hits / n, ceilings)


def test_three_collinear_classes_ceiling_uses_one_pair():
    # Means -a, 0, a: any matching has one pair; the best pairs a neighbour couple.
    cov = np.eye(2)
    means = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    priors = np.full(3, 1 / 3)
    bound, pairs = pairwise_robust_error_lower_bound(means, cov, priors, 0.1)
    assert len(pairs) == 1 and abs(pairs[0][0] - pairs[0][1]) == 1
    assert bound == pytest.approx(2 / 3 * stats.norm.cdf(-(0.5 - 0.1)))
