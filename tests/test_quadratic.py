"""The exact quadratic (QDA) certificate against brute force (docs/theory.md section 3).

Brute force, independent of the eigen-decomposition/dual method under test:
- rays: for many unit directions u, the first t > 0 with g(z + t u) <= 0 is the smallest
  positive root of the scalar quadratic c + t (grad . u) + t^2 (u^T A u), solved in closed form
  (exact, so no bisection tolerance enters); every such t is the norm of a feasible point,
  hence an upper bound on the true distance;
- a general nonlinear solver: scipy SLSQP (trust-constr in the slow variant) on ||delta||^2
  s.t. g(z + delta) <= 0, from the best ray directions and random starts; its answer is turned
  into a feasible point by taking the first crossing along its direction.
The certificate R must satisfy R <= every such feasible norm (soundness) and come within 1e-6
of the best one (tightness).
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from gmcert.certify.quadratic import QuadraticCertifier, lower_bound_from_l2
from gmcert.certify.quadric_distance import as_real_tensor, distance_to_quadric, solve_local_quadric

TIGHT = 1e-6
# Relative rounding allowed to the brute force's own arithmetic (a closed-form root in float64).
ROUNDING = 1e-13


# ---------------------------------------------------------------------------------------------
# Independent brute force (numpy / scipy only)
# ---------------------------------------------------------------------------------------------


def first_crossing(value, slope, curvature):
    """Smallest t > 0 with value + slope t + curvature t^2 <= 0 (value > 0); inf if none."""
    value = np.broadcast_to(np.asarray(value, float), np.shape(slope))
    t = np.full(np.shape(slope), np.inf)
    flat = curvature == 0
    down = flat & (slope < 0)
    t[down] = -value[down] / slope[down]
    disc = slope**2 - 4 * curvature * value
    real = ~flat & (disc >= 0)
    root = np.sqrt(np.where(real, disc, 0.0))
    # Numerically stable pair of roots: qq / curvature and value / qq.
    qq = -0.5 * (slope + np.where(slope >= 0, root, -root))
    with np.errstate(divide="ignore", invalid="ignore"):
        roots = np.stack([qq / curvature, value / qq])
    roots = np.where(roots > 0, roots, np.inf).min(0)
    t[real] = roots[real]
    return t


def first_crossing_scalar(value, slope, curvature):
    """Scalar twin of :func:`first_crossing` (the polisher calls it thousands of times)."""
    if curvature == 0:
        return -value / slope if slope < 0 else math.inf
    disc = slope * slope - 4 * curvature * value
    if disc < 0:
        return math.inf
    qq = -0.5 * (slope + math.copysign(math.sqrt(disc), slope))
    roots = [r for r in (qq / curvature, value / qq if qq != 0 else math.inf) if r > 0]
    return min(roots, default=math.inf)


def unit_directions(dim, count, rng):
    if dim == 2:
        angle = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 2 * np.pi)
        return np.stack([np.cos(angle), np.sin(angle)], 1)
    u = rng.standard_normal((count, dim))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def ray_crossings(A, b, c, z, U):
    value = z @ A @ z + b @ z + c
    grad = 2 * A @ z + b
    return first_crossing(value, U @ grad, np.einsum("nd,de,ne->n", U, A, U))


def nonlinear_solver_bound(A, b, c, z, starts, method="SLSQP"):
    """Best feasible norm found by a general constrained solver from the starts, and its
    direction."""
    grad_z = 2 * A @ z + b
    value = z @ A @ z + b @ z + c

    def g_local(x):
        return value + grad_z @ x + x @ A @ x

    constraint = {
        "type": "ineq",
        "fun": lambda x: -g_local(x),
        "jac": lambda x: -(grad_z + 2 * A @ x),
    }
    best, best_x = np.inf, None
    for x0 in starts:
        if method == "SLSQP":
            res = optimize.minimize(
                lambda x: x @ x,
                x0,
                jac=lambda x: 2 * x,
                constraints=[constraint],
                method="SLSQP",
                options={"ftol": 1e-15, "maxiter": 500},
            )
        else:
            nlc = optimize.NonlinearConstraint(
                g_local,
                -np.inf,
                0.0,
                jac=lambda x: grad_z + 2 * A @ x,
                hess=lambda x, v: 2 * v[0] * A,
            )
            res = optimize.minimize(
                lambda x: x @ x,
                x0,
                jac=lambda x: 2 * x,
                hess=lambda x: 2 * np.eye(len(x)),
                constraints=[nlc],
                method="trust-constr",
                options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 3000},
            )
        norm = np.linalg.norm(res.x)
        if not np.isfinite(norm) or norm == 0:
            continue
        # Feasible point on the solver's direction: exact first crossing along it.
        u = res.x / norm
        t = first_crossing(value, np.array([grad_z @ u]), np.array([u @ A @ u]))[0]
        if t < best:
            best, best_x = t, u
    return best, best_x


def polish_direction(A, b, c, z, u0):
    """Local minimum of the exact ray crossing t(u) over unit directions, from u0 (Nelder-Mead
    on an unnormalised vector from a small simplex, so no constraint handling enters)."""
    value = z @ A @ z + b @ z + c
    grad = 2 * A @ z + b

    def crossing(v):
        u = v / np.linalg.norm(v)
        return first_crossing_scalar(value, float(grad @ u), float(u @ A @ u))

    simplex = np.vstack([u0, u0 + 1e-3 * np.eye(len(u0))])
    res = optimize.minimize(
        crossing,
        u0,
        method="Nelder-Mead",
        options={"xatol": 1e-13, "fatol": 1e-15, "maxiter": 1500, "initial_simplex": simplex},
    )
    return min(res.fun, crossing(u0))


def distinct_best_rays(U, t, count=4, min_angle=0.3):
    """Indices of the best rays, at most ``count``, pairwise more than ``min_angle`` apart, so
    that nearly tied local minima (near-hard cases) each get a solver start."""
    chosen = []
    for i in np.argsort(t):
        if not np.isfinite(t[i]) or len(chosen) == count:
            break
        if all(U[i] @ U[j] < np.cos(min_angle) for j in chosen):
            chosen.append(i)
    return chosen


def brute_force_distance(A, b, c, z, rng, *, n_dirs, n_random_starts=1, method="SLSQP"):
    """Upper bound on dist(z, {g <= 0}) by dense rays + a nonlinear solver; inf if none found.

    The solver starts from the best rays of distinct basins and from random points; when no
    ray hits the set (a small far ellipsoid), random starts at the scale of ||z|| + 1 are all
    it has. The best direction found is then polished by minimising the exact ray crossing.
    """
    dim = len(z)
    U = unit_directions(dim, n_dirs, rng)
    t = ray_crossings(A, b, c, z, U)
    best = t.min()
    scale = best if np.isfinite(best) else np.linalg.norm(z) + 1.0
    starts = [U[i] * t[i] for i in distinct_best_rays(U, t)]
    n_random = n_random_starts if np.isfinite(best) else n_random_starts + 4
    starts += [rng.standard_normal(dim) * scale for _ in range(n_random)]
    solver_best, solver_u = nonlinear_solver_bound(A, b, c, z, starts, method)
    if solver_best < best:
        best, direction = solver_best, solver_u
    elif np.isfinite(best):
        direction = U[np.argmin(t)]
    else:
        return best
    return min(best, polish_direction(A, b, c, z, direction))


# ---------------------------------------------------------------------------------------------
# Random constraint families
# ---------------------------------------------------------------------------------------------


def random_rotation(dim, rng):
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def from_spectrum(lam, rng):
    V = random_rotation(len(lam), rng)
    A = V @ np.diag(lam) @ V.T
    return 0.5 * (A + A.T), V


def random_precision(dim, rng):
    W = rng.standard_normal((dim, dim + 2))
    return W @ W.T / dim + 0.2 * np.eye(dim)


def outside_points(A, b, c, dim, rng, count=2, scale=2.0):
    Z = rng.standard_normal((400, dim)) * scale
    g = np.einsum("nd,de,ne->n", Z, A, Z) + Z @ b + c
    return Z[g > 1e-3][:count]


def family_qda(dim, rng):
    P0, P1 = random_precision(dim, rng), random_precision(dim, rng)
    m0, m1 = rng.standard_normal(dim), rng.standard_normal(dim)
    w0, w1 = rng.normal(size=2)
    A = 0.5 * (P1 - P0)
    b = P0 @ m0 - P1 @ m1
    c = w0 - w1 - 0.5 * m0 @ P0 @ m0 + 0.5 * m1 @ P1 @ m1
    return A, b, c


def family_indefinite(dim, rng):
    M = rng.standard_normal((dim, dim))
    return 0.5 * (M + M.T), rng.standard_normal(dim), rng.normal()


def family_rank_deficient(dim, rng):
    lam = rng.normal(size=dim) * 2
    lam[rng.permutation(dim)[: max(1, dim // 2)]] = 0.0
    lam[0], lam[-1] = -abs(lam[0]) - 0.1, abs(lam[-1]) + 0.1
    A, _ = from_spectrum(lam, rng)
    return A, rng.standard_normal(dim), rng.normal()


def family_psd_singular_nonempty(dim, rng):
    lam = np.abs(rng.normal(size=dim)) + 0.1
    lam[: max(1, dim // 2)] = 0.0
    A, _ = from_spectrum(lam, rng)
    return A, rng.standard_normal(dim) * 2, rng.normal()  # generic b reaches the null space


def family_pd_ellipsoid(dim, rng):
    lam = np.abs(rng.normal(size=dim)) + 0.2
    A, _ = from_spectrum(lam, rng)
    centre = rng.standard_normal(dim)
    # {(u - centre)^T A (u - centre) <= radius^2}: a solid ellipsoid.
    radius2 = rng.uniform(0.5, 2.0)
    return A, -2 * A @ centre, centre @ A @ centre - radius2


def family_near_linear(dim, rng):
    M = rng.standard_normal((dim, dim)) * 1e-9
    return 0.5 * (M + M.T), rng.standard_normal(dim), rng.normal()


def hard_case(dim, rng, *, multiplicity=1, leak=0.0):
    """g with the gradient at z orthogonal to the most negative eigenspace (times ``leak``)
    and g(z) large enough that the minimiser leaves along that eigenspace."""
    lam = np.sort(np.abs(rng.normal(size=dim)) + 0.3) * rng.choice([-1, 1], size=dim)
    lam[:multiplicity] = -abs(lam).max() - 0.5
    A, V = from_spectrum(lam, rng)
    lam_min = lam[0]
    bt = rng.standard_normal(dim)
    bt[:multiplicity] = leak
    z = rng.standard_normal(dim)
    grad = V @ bt
    l_max = -1 / lam_min
    rest = (
        bt[multiplicity:] ** 2
        * l_max
        * (2 + l_max * lam[multiplicity:])
        / (4 * (1 + l_max * lam[multiplicity:]) ** 2)
    )
    value = rest.sum() + rng.uniform(0.5, 3.0)
    b = grad - 2 * A @ z
    c = value - z @ A @ z - b @ z
    return A, b, c, z[None]


FAMILIES = {
    "qda": family_qda,
    "indefinite": family_indefinite,
    "rank_deficient": family_rank_deficient,
    "psd_singular_nonempty": family_psd_singular_nonempty,
    "pd_ellipsoid": family_pd_ellipsoid,
    "near_linear": family_near_linear,
}


def certify(A, b, c, Z):
    out = distance_to_quadric(
        torch.from_numpy(Z), torch.from_numpy(A), torch.from_numpy(b), float(c)
    )
    return out.radius.numpy(), out.delta.numpy(), out.witness_verified.numpy()


def check_against_brute_force(A, b, c, Z, rng, *, n_dirs, method="SLSQP", n_random_starts=1):
    R, delta, verified = certify(A, b, c, Z)
    for i, z in enumerate(Z):
        bf = brute_force_distance(
            A, b, c, z, rng, n_dirs=n_dirs, method=method, n_random_starts=n_random_starts
        )
        if np.isinf(bf):  # no feasible point found (a random A that came out definite)
            assert np.isinf(R[i]) or (R[i] > 1e5 and not verified[i]), R[i]
            continue
        assert R[i] <= bf * (1 + ROUNDING), f"radius {R[i]!r} exceeds a feasible norm {bf!r}"
        assert bf - R[i] <= TIGHT * max(1.0, R[i]), f"radius {R[i]!r} not tight vs {bf!r}"
        assert verified[i]
        # The solver checks g(z + delta) <= 0 in the local expansion around z; re-evaluated in
        # the expanded polynomial a boundary point may round either way, hence the tolerance.
        u = z + delta[i]
        scale = abs(u @ A @ u) + abs(b @ u) + abs(c)
        assert u @ A @ u + b @ u + c <= 1e-13 * scale, "reported minimiser is not in the set"
        assert np.linalg.norm(delta[i]) <= R[i] * (1 + 1e-9) + 1e-12


def run_family(name, dim, n_pairs, seed, **kw):
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_pairs:
        A, b, c = FAMILIES[name](dim, rng)
        Z = outside_points(A, b, c, dim, rng)
        if len(Z) == 0:
            continue
        check_against_brute_force(A, b, c, Z, rng, **kw)
        done += 1


# ---------------------------------------------------------------------------------------------
# Low-level solver vs brute force
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 3, 5])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_distance_matches_brute_force(name, dim):
    run_family(name, dim, n_pairs=8, seed=zlib.crc32(f"{name}-{dim}".encode()), n_dirs=3000)


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 3, 5])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_distance_matches_brute_force_exhaustive(name, dim):
    run_family(
        name,
        dim,
        n_pairs=60,
        seed=1000 + zlib.crc32(f"{name}-{dim}".encode()),
        n_dirs=20000,
        n_random_starts=3,
    )


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 3, 5])
def test_distance_matches_trust_constr(dim):
    run_family("qda", dim, n_pairs=15, seed=77 + dim, n_dirs=5000, method="trust-constr")


@pytest.mark.parametrize("dim,multiplicity", [(2, 1), (3, 1), (3, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("leak", [0.0, 1e-9, 1e-4])
def test_hard_case_matches_brute_force(dim, multiplicity, leak):
    rng = np.random.default_rng(dim * 100 + multiplicity * 10 + int(leak > 0) + int(leak > 1e-6))
    for _ in range(4):
        A, b, c, Z = hard_case(dim, rng, multiplicity=multiplicity, leak=leak)
        check_against_brute_force(A, b, c, Z, rng, n_dirs=4000)


def test_hard_case_minimiser_leaves_along_negative_eigenvector():
    # Closed form in d = 2: g = c - y1^2 + 2 y2^2 + beta y2 at z = 0, no gradient on e1.
    # Eliminating y1^2 = c + 2 y2^2 + beta y2 leaves min c + 3 y2^2 + beta y2: y2 = -beta / 6,
    # distance^2 = c - beta^2 / 12, y1^2 = c - beta^2 / 9 (> 0, so the minimiser leaves e2).
    beta, c = 1.0, 2.0
    A = np.diag([-1.0, 2.0])
    R, delta, _ = certify(A, np.array([0.0, beta]), c, np.zeros((1, 2)))
    expected = math.sqrt(c - beta**2 / 12)
    assert R[0] <= expected and expected - R[0] < 1e-12
    assert abs(delta[0, 1] + beta / 6) < 1e-9
    assert abs(abs(delta[0, 0]) - math.sqrt(c - beta**2 / 9)) < 1e-9


def test_center_of_saddle_has_symmetric_minimisers():
    # grad = 0 entirely: every direction in the negative eigenspace is optimal.
    A = np.diag([-2.0, -2.0, 1.0])
    R, delta, ok = certify(A, np.zeros(3), 3.0, np.zeros((1, 3)))
    assert R[0] <= math.sqrt(1.5) and math.sqrt(1.5) - R[0] < 1e-12
    assert ok[0] and abs(delta[0, 2]) < 1e-12


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_linear_case_closed_form(dim):
    rng = np.random.default_rng(dim)
    A = np.zeros((dim, dim))
    b, c = rng.standard_normal(dim), rng.normal()
    Z = outside_points(A, b, c, dim, rng, count=20)
    R, delta, ok = certify(A, b, c, Z)
    exact = (Z @ b + c) / np.linalg.norm(b)
    assert np.all(R <= exact) and np.all(exact - R < 1e-12 * np.maximum(1, exact))
    rounding = 1e-13 * (np.abs(Z + delta) @ np.abs(b) + abs(c))
    assert ok.all() and np.all((Z + delta) @ b + c <= rounding)
    # Zero gradient and positive constant: the set is empty.
    R0, _, _ = certify(A, np.zeros(dim), 1.0, Z[:2])
    assert np.all(np.isinf(R0))


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_definite_empty_set_is_infinite(dim):
    rng = np.random.default_rng(10 + dim)
    for _ in range(10):
        lam = np.abs(rng.normal(size=dim)) + 0.2
        A, _ = from_spectrum(lam, rng)
        b = rng.standard_normal(dim)
        c = b @ np.linalg.solve(A, b) / 4 + rng.uniform(0.1, 2.0)  # min g > 0
        Z = rng.standard_normal((5, dim))
        R, delta, ok = certify(A, b, c, Z)
        assert np.all(np.isinf(R)) and np.all(np.isnan(delta)) and not ok.any()
        U = unit_directions(dim, 2000, rng)
        assert np.all(np.isinf(ray_crossings(A, b, c, Z[0], U)))


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_singular_psd_empty_set_gives_huge_sound_radius(dim):
    # The set is empty, but a rounding-level negative eigenvalue could make it non-empty and far
    # away; the solver must stay sound, so it reports a huge finite radius (or inf).
    rng = np.random.default_rng(20 + dim)
    for _ in range(10):
        lam = np.abs(rng.normal(size=dim)) + 0.2
        lam[: max(1, dim // 2)] = 0.0
        A, _ = from_spectrum(lam, rng)
        b = A @ rng.standard_normal(dim)  # b in range(A): the null space sees no linear term
        c = b @ np.linalg.pinv(A) @ b / 4 + rng.uniform(0.5, 2.0)
        Z = rng.standard_normal((3, dim))
        R, _, _ = certify(A, b, c, Z)
        assert np.all(R > 1e5)
        for i, z in enumerate(Z):
            assert R[i] <= ray_crossings(A, b, c, z, unit_directions(dim, 2000, rng)).min()


def test_points_already_in_the_set_have_zero_radius():
    A = np.diag([1.0, -1.0])
    Z = np.array([[0.0, 2.0], [3.0, 0.0]])
    R, delta, ok = certify(A, np.zeros(2), -1.0, Z)  # g = x^2 - y^2 - 1
    assert R[0] == 0 and np.all(delta[0] == 0) and ok[0]
    assert R[1] > 0


def test_distance_rejects_bad_input():
    asymmetric = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=re.escape("A must be symmetric; pass 0.5 * (M + M.T)")):
        distance_to_quadric(torch.zeros(1, 2), asymmetric, torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match=re.escape("Z must have shape (n, d), got (2,)")):
        distance_to_quadric(torch.zeros(2), torch.eye(2), torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match=re.escape("A must be (3, 3), b (3,) and c a scalar")):
        distance_to_quadric(torch.zeros(1, 3), torch.eye(2), torch.zeros(2), 1.0)


def test_solve_local_quadric_rejects_mismatched_shapes():
    P, n, d = 2, 3, 4
    values, gradients = torch.ones(P, n), torch.ones(P, n, d)
    matrices = torch.eye(d).expand(P, d, d)
    eigenvalues, eigenvectors = torch.ones(P, d), torch.eye(d).expand(P, d, d)
    with pytest.raises(ValueError, match=re.escape("gradients must have shape (P, n, d)")):
        solve_local_quadric(values, gradients[0], matrices, eigenvalues, eigenvectors)
    with pytest.raises(ValueError, match=re.escape("eigenvalues must have shape (2, 4)")):
        solve_local_quadric(values, gradients, matrices, eigenvalues[:, :3], eigenvectors)


@pytest.mark.parametrize(
    "x,message",
    [
        (torch.ones(2, dtype=torch.complex128), "Z must be a real array, got dtype"),
        (torch.ones(2, dtype=torch.bool), "Z must be a real array, got dtype"),
        ("not a number", "Z must be a real array convertible to"),
    ],
)
def test_as_real_tensor_rejects_non_real_input(x, message):
    with pytest.raises(ValueError, match=message):
        as_real_tensor(x, "Z", torch.device("cpu"), torch.float64)


def test_python_float_constant_keeps_float64():
    # A python float must not be rounded through float32 on its way in.
    A, b, c = np.diag([-0.7, -0.05]), np.array([-0.8, 2.3]), -0.07734505972421603
    z = np.array([[0.1, 0.2]])
    R_float, _, _ = certify(A, b, c, z)
    out = distance_to_quadric(
        torch.from_numpy(z),
        torch.from_numpy(A),
        torch.from_numpy(b),
        torch.tensor(c, dtype=torch.float64),
    )
    assert R_float[0] == out.radius[0].item()


# ---------------------------------------------------------------------------------------------
# Mixture-level certifier
# ---------------------------------------------------------------------------------------------


def random_qda(K, dim, rng):
    means = rng.standard_normal((K, dim)) * 1.5
    precisions = np.stack([random_precision(dim, rng) for _ in range(K)])
    priors = rng.dirichlet(np.ones(K) * 3)
    log_weights = np.log(priors) + 0.5 * np.linalg.slogdet(precisions)[1]
    return means, precisions, priors, log_weights


def qda_sample(means, precisions, n, rng):
    K, dim = means.shape
    labels = rng.integers(0, K, n)
    covs = np.linalg.inv(precisions)
    return np.stack([rng.multivariate_normal(means[k], covs[k]) for k in labels])


def pair_constraint(means, precisions, log_weights, k, j):
    """g = s_k - s_j as (A, b, c), written out independently of the module."""
    Pk, Pj, mk, mj = precisions[k], precisions[j], means[k], means[j]
    A = 0.5 * (Pj - Pk)
    b = Pk @ mk - Pj @ mj
    c = log_weights[k] - log_weights[j] - 0.5 * mk @ Pk @ mk + 0.5 * mj @ Pj @ mj
    return A, b, c


def make_certifier(means, precisions, log_weights, **kw):
    return QuadraticCertifier(
        torch.from_numpy(means), torch.from_numpy(precisions), torch.from_numpy(log_weights), **kw
    )


@pytest.mark.parametrize("K,dim", [(3, 2), (4, 3), (5, 5), (3, 5)])
def test_predict_is_bayes_rule(K, dim):
    rng = np.random.default_rng(K * 10 + dim)
    means, precisions, priors, log_weights = random_qda(K, dim, rng)
    Z = qda_sample(means, precisions, 300, rng)
    covs = np.linalg.inv(precisions)
    logpost = np.stack(
        [
            np.log(priors[k]) + stats.multivariate_normal(means[k], covs[k]).logpdf(Z)
            for k in range(K)
        ],
        1,
    )
    cert = make_certifier(means, precisions, log_weights)
    assert np.array_equal(cert.predict(torch.from_numpy(Z)).numpy(), logpost.argmax(1))


def check_mixture(K, dim, seed, n_points, n_dirs, n_perturb):
    rng = np.random.default_rng(seed)
    means, precisions, _, log_weights = random_qda(K, dim, rng)
    cert = make_certifier(means, precisions, log_weights)
    Z = qda_sample(means, precisions, n_points, rng)
    Zt = torch.from_numpy(Z)
    pred = cert.predict(Zt).numpy()
    out = cert.certificate(Zt)
    R, delta, nearest = out.radius.numpy(), out.delta.numpy(), out.nearest_class.numpy()
    assert out.exact and out.norm == "l2"
    pred_t, radius_t = cert.certify(Zt)
    assert np.array_equal(pred_t.numpy(), pred)
    assert np.array_equal(radius_t.numpy(), out.radius.numpy())
    assert np.array_equal(cert.radii(Zt, torch.from_numpy(pred)).numpy(), R)

    for i, z in enumerate(Z):
        k = pred[i]
        bf = min(
            brute_force_distance(
                *pair_constraint(means, precisions, log_weights, k, j), z, rng, n_dirs=n_dirs
            )
            for j in range(K)
            if j != k
        )
        assert R[i] <= bf * (1 + ROUNDING), (R[i], bf)
        assert bf - R[i] <= TIGHT * max(1.0, R[i]), (R[i], bf)

    finite = np.isfinite(R)
    # Soundness: perturbations of norm < R never change the prediction.
    for i in np.flatnonzero(finite):
        U = unit_directions(dim, n_perturb, rng)
        scale = (
            R[i]
            * (1 - 1e-8)
            * np.concatenate(
                [np.ones(n_perturb // 2), rng.uniform(0, 1, n_perturb - n_perturb // 2)]
            )
        )
        along = delta[i] / np.linalg.norm(delta[i]) * R[i] * (1 - 1e-8)
        moved = np.concatenate([Z[i] + U * scale[:, None], (Z[i] + along)[None]])
        assert np.all(cert.predict(torch.from_numpy(moved)).numpy() == pred[i])
    # Tightness: the minimiser pushed to R (1 + 1e-6) changes the prediction, to a class whose
    # score now beats the predicted one.
    for i in np.flatnonzero(finite & (R > 0)):
        u = Z[i] + delta[i] / np.linalg.norm(delta[i]) * R[i] * (1 + 1e-6)
        scores = cert.scores(torch.from_numpy(u[None])).numpy()[0]
        assert cert.predict(torch.from_numpy(u[None])).item() != pred[i]
        assert scores[nearest[i]] > scores[pred[i]]


@pytest.mark.parametrize("K,dim", [(3, 2), (4, 3), (5, 5), (3, 4)])
def test_mixture_certifier_against_brute_force(K, dim):
    check_mixture(K, dim, seed=100 * K + dim, n_points=10, n_dirs=3000, n_perturb=1000)


@pytest.mark.slow
@pytest.mark.parametrize("K", [3, 4, 5])
@pytest.mark.parametrize("dim", [2, 3, 4, 5])
def test_mixture_certifier_against_brute_force_exhaustive(K, dim):
    check_mixture(K, dim, seed=7000 + 100 * K + dim, n_points=60, n_dirs=20000, n_perturb=5000)


def test_given_label_that_is_not_predicted_has_zero_radius():
    rng = np.random.default_rng(3)
    means, precisions, _, log_weights = random_qda(3, 2, rng)
    cert = make_certifier(means, precisions, log_weights)
    Z = torch.from_numpy(qda_sample(means, precisions, 50, rng))
    wrong = (cert.predict(Z) + 1) % 3
    assert torch.all(cert.radii(Z, wrong) == 0)


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_other_norms_are_sound_lower_bounds(norm):
    rng = np.random.default_rng(5)
    K, dim = 4, 3
    means, precisions, _, log_weights = random_qda(K, dim, rng)
    cert2 = make_certifier(means, precisions, log_weights)
    cert = make_certifier(means, precisions, log_weights, norm=norm)
    assert not cert.exact and cert2.exact
    Z = qda_sample(means, precisions, 40, rng)
    Zt = torch.from_numpy(Z)
    R2, R = cert2.radii(Zt).numpy(), cert.radii(Zt).numpy()
    expected = R2 / math.sqrt(dim) if norm == "linf" else R2
    assert np.all(R <= expected) and np.allclose(R, expected, rtol=1e-12)
    pred = cert.predict(Zt).numpy()
    for i in np.flatnonzero(np.isfinite(R)):
        if norm == "linf":  # every vertex of the cube, and random points of the cube
            corners = np.array(np.meshgrid(*[[-1, 1]] * dim)).reshape(dim, -1).T
            pts = np.concatenate([corners, rng.uniform(-1, 1, (500, dim))])
        else:  # vertices of the l1 ball and random points of its surface
            pts = np.concatenate([np.eye(dim), -np.eye(dim), rng.laplace(size=(500, dim))])
            pts /= np.abs(pts).sum(1, keepdims=True)
        moved = Z[i] + pts * R[i] * (1 - 1e-9)
        assert np.all(cert.predict(torch.from_numpy(moved)).numpy() == pred[i])


def test_lower_bound_from_l2_rejects_unknown_norm():
    with pytest.raises(ValueError, match=re.escape("norm must be one of ('l2', 'linf', 'l1')")):
        lower_bound_from_l2(torch.ones(2), 3, "l3")


def test_certifier_rejects_bad_input():
    means, precisions, lw = np.zeros((2, 2)), np.stack([np.eye(2)] * 2), np.zeros(2)
    with pytest.raises(ValueError, match=re.escape("norm must be one of ('l2', 'linf', 'l1')")):
        make_certifier(means, precisions, lw, norm="l7")
    with pytest.raises(ValueError, match="every precision matrix must be positive definite"):
        make_certifier(means, np.stack([np.eye(2), -np.eye(2)]), lw)
    with pytest.raises(ValueError, match=re.escape("precisions must have shape (K, d, d)")):
        make_certifier(means, precisions[:1], lw)
    with pytest.raises(ValueError, match=re.escape("log_weights must have shape (2,)")):
        make_certifier(means, precisions, lw[:1])
    with pytest.raises(ValueError, match=re.escape("precisions[1] must be symmetric")):
        make_certifier(means, np.stack([np.eye(2), np.array([[1.0, 0.5], [0.0, 1.0]])]), lw)
    with pytest.raises(ValueError, match="means contains NaN or inf"):
        make_certifier(means + np.nan, precisions, lw)
    cert = make_certifier(means + np.eye(2), precisions, lw)
    with pytest.raises(ValueError, match=re.escape("Z must have shape (n, 2), got (3, 5)")):
        cert.radii(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=re.escape("pred must have shape (3,) like Z's rows")):
        cert.radii(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=re.escape("pred must hold class indices in [0, 2)")):
        cert.radii(torch.zeros(3, 2), torch.tensor([0, 1, 2]))


@pytest.mark.gpu
def test_certifier_on_cuda_matches_cpu():
    rng = np.random.default_rng(11)
    means, precisions, _, log_weights = random_qda(4, 3, rng)
    Z = torch.from_numpy(qda_sample(means, precisions, 200, rng))
    cpu = make_certifier(means, precisions, log_weights).radii(Z)
    gpu = make_certifier(means, precisions, log_weights, device="cuda").radii(Z.cuda())
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12)
