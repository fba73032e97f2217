"""The two discriminators T of the Donsker-Varadhan bound, both with an exact partition term.

Both work in Q-whitened coordinates u (u ~ N(0, I) under Q); see :mod:`gmcert.eps.dv` for why
the partition term log E_Q[exp T] must be exact.

* generative: the Bayes logit of a generative classifier, T = log p_hat - log q, with p_hat a
  normalised density (Student t or Gaussian, shrunk towards Q). E_Q[exp T] = 1.
* logistic: logistic-regression logit on features [v, v^2] in Q-whitened, P-rotated
  coordinates (v ~ N(0, I) under Q), whose Gaussian integral is closed form.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import linalg, special

__all__ = [
    "ShrunkStudentT",
    "QuadraticLogit",
    "generative_logit",
    "logistic_logit",
    "principal_axes",
    "std_normal_logpdf",
]

# T's curvature per coordinate is capped below 1/2 so that E_Q[exp T] is finite; the cap
# corresponds to P being 1000x wider than Q along that axis. A capped T is still a valid T.
_B_CAP = 0.5 * (1.0 - 1e-3)

# Model grid of the generative discriminator: shrinkage towards Q (0 = Q itself, T = 0) and
# Student-t degrees of freedom (inf = Gaussian). Chosen on a validation part of the fit split.
_SHRINK_GRID = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95, 1.0)
_NU_GRID = (math.inf, 100.0, 30.0, 10.0, 5.0, 3.0)


def std_normal_logpdf(u: np.ndarray) -> np.ndarray:
    """log N(u; 0, I) for each row of u (n, d): Q's log-density in Q-whitened coordinates."""
    return -0.5 * (np.einsum("ij,ij->i", u, u) + u.shape[1] * math.log(2.0 * math.pi))


def principal_axes(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the sample covariance of u (n, d): (eigvec (d, r), eigval (r,)).

    r = d when n > d (eigh of the d x d covariance). Otherwise only the non-zero axes exist;
    they come from the n x n Gram matrix of the centred data (O(n^2 d), about 4x faster than
    a thin SVD here), dropping directions with eigenvalue below 1e-9 of the largest, whose
    eigenvectors the Gram route cannot resolve accurately (they are treated as part of the
    complement, where p_hat has Q's variance). Matters for per-class fits with n_k < d.
    """
    n, d = u.shape
    uc = u - u.mean(axis=0)
    if n > d:
        eigval, eigvec = linalg.eigh(uc.T @ uc / (n - 1))
        return eigvec, np.maximum(eigval, 0.0)
    lam, vecs = linalg.eigh(uc @ uc.T)
    keep = lam > 1e-9 * max(lam.max(), 1e-300)
    eigvec = uc.T @ (vecs[:, keep] / np.sqrt(lam[keep]))
    return eigvec, lam[keep] / (n - 1)


@dataclass(frozen=True)
class ShrunkStudentT:
    """p_hat = t_nu(lam m, C_lam) in Q-whitened coordinates, C_lam = (1 - lam) I + lam C_hat.

    C_hat = V diag(e) V^T with V (d, r), r <= d; off span(V) C_lam is (1 - lam) I. For
    nu < inf the scale matrix is C_lam (nu - 2) / nu, so C_lam stays the covariance. After one
    projection (:meth:`project`) every (lam, nu) costs O(n r).
    """

    mean: np.ndarray
    eigvec: np.ndarray
    eigval: np.ndarray
    lam: float
    nu: float

    def project(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u @ V, |u|^2, u . m): what :meth:`logpdf_projected` needs for any lam."""
        return u @ self.eigvec, np.einsum("ij,ij->i", u, u), u @ self.mean

    def logpdf_projected(self, proj) -> np.ndarray:
        w0, uu, um = proj
        lam, d, r = self.lam, self.eigvec.shape[0], self.eigvec.shape[1]
        var = (1.0 - lam) + lam * self.eigval
        w = w0 - lam * (self.mean @ self.eigvec)
        in_span = np.einsum("ij,ij->i", w, w / var)
        maha = in_span
        logdet = np.log(var).sum()
        if r < d:
            # |u - lam m|^2 minus its part in span(V): the complement, variance 1 - lam.
            resid = uu - 2.0 * lam * um + lam**2 * (self.mean @ self.mean)
            resid = np.maximum(resid - np.einsum("ij,ij->i", w, w), 0.0)
            maha = maha + resid / (1.0 - lam)
            logdet += (d - r) * math.log(1.0 - lam)
        if math.isinf(self.nu):
            return -0.5 * (maha + logdet + d * math.log(2.0 * math.pi))
        nu = self.nu
        ratio = (nu - 2.0) / nu  # scale = covariance * ratio
        log_norm = (
            special.gammaln(0.5 * (nu + d))
            - special.gammaln(0.5 * nu)
            - 0.5 * d * math.log(nu * math.pi)
            - 0.5 * (logdet + d * math.log(ratio))
        )
        return log_norm - 0.5 * (nu + d) * np.log1p(maha / (ratio * nu))

    def logpdf(self, u: np.ndarray) -> np.ndarray:
        return self.logpdf_projected(self.project(u))

    def log_ratio(self, u: np.ndarray) -> np.ndarray:
        return self.logpdf(u) - std_normal_logpdf(u)


def _singular(eigvec: np.ndarray, eigval: np.ndarray) -> bool:
    return eigvec.shape[1] < eigvec.shape[0] or eigval.min() <= 1e-10 * max(eigval.max(), 1e-300)


def generative_logit(u_fit: np.ndarray, rng: np.random.Generator) -> tuple[ShrunkStudentT, dict]:
    """Choose (shrinkage, nu) by validation log-ratio on a quarter of the fit split, refit."""
    perm = rng.permutation(len(u_fit))
    n_in = int(0.75 * len(u_fit))
    inner, val = u_fit[perm[:n_in]], u_fit[perm[n_in:]]
    eigvec, eigval = principal_axes(inner)
    mean = inner.mean(axis=0)
    singular = _singular(eigvec, eigval)
    proj = ShrunkStudentT(mean, eigvec, eigval, 0.0, math.inf).project(val)
    log_q_val = std_normal_logpdf(val)
    best, best_score = (0.0, math.inf), -math.inf
    for lam in _SHRINK_GRID:
        if lam >= 1.0 and singular:
            continue  # unshrunk covariance singular (n <= d): not a density
        for nu in _NU_GRID:
            if lam == 0.0 and not math.isinf(nu):
                continue  # lam = 0 is Q itself only for the Gaussian member
            model = ShrunkStudentT(mean, eigvec, eigval, lam, nu)
            score = float((model.logpdf_projected(proj) - log_q_val).mean())
            if score > best_score:
                best, best_score = (lam, nu), score
    lam, nu = best
    eigvec, eigval = principal_axes(u_fit)
    if lam >= 1.0 and _singular(eigvec, eigval):
        lam = _SHRINK_GRID[-2]  # full-data covariance singular where the inner one was not
    model = ShrunkStudentT(u_fit.mean(axis=0), eigvec, eigval, lam, nu)
    gaussian = math.isinf(model.nu)
    return model, {
        "shrinkage": float(model.lam),
        "family": "gaussian" if gaussian else "student_t",
        "nu": None if gaussian else float(model.nu),
    }


@dataclass(frozen=True)
class QuadraticLogit:
    """T(v) = c + a.v + b.(v*v) with v = u @ rot, u Q-whitened (so v ~ N(0, I) under Q)."""

    rot: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: float

    def log_ratio(self, u: np.ndarray) -> np.ndarray:
        v = u @ self.rot
        return self.c + v @ self.a + (v * v) @ self.b

    def log_partition(self) -> float:
        """log E[exp T(v)], v ~ N(0, I): per axis (1-2b)^(-1/2) exp(a^2 / (2 (1-2b)))."""
        s = 1.0 - 2.0 * self.b
        return float(self.c + np.sum(-0.5 * np.log(s) + self.a**2 / (2.0 * s)))


def _fit_logistic(
    vp: np.ndarray, vq: np.ndarray, C: float, random_state: int, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Logistic regression P (label 1) vs Q (label 0) on standardised [v, v^2].

    Returns (a, b, c) on raw v with the class-balance offset log(n_p / n_q) removed, so that
    T estimates log(p/q) itself (DV is shift invariant; the offset matters for reading T, not
    for the bound).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    d = vp.shape[1]
    F = np.concatenate([np.hstack([vp, vp * vp]), np.hstack([vq, vq * vq])])
    labels = np.concatenate([np.ones(len(vp)), np.zeros(len(vq))])
    f_mean = F.mean(axis=0)
    f_std = F.std(axis=0)
    f_std[f_std == 0] = 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf = LogisticRegression(C=C, max_iter=1000, tol=1e-6, random_state=random_state)
        clf.fit((F - f_mean) / f_std, labels)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.append("dv: logistic regression stopped before convergence (T is still valid)")
    w = clf.coef_[0] / f_std
    a, b = w[:d], w[d:]
    c = float(clf.intercept_[0] - w @ f_mean - math.log(len(vp) / len(vq)))
    if np.any(b > _B_CAP):
        notes.append("dv: curvature coefficients capped below 1/2 (T is still valid)")
        b = np.minimum(b, _B_CAP)
    return a, b, c


def logistic_logit(
    u_fit: np.ndarray,
    uq_fit: np.ndarray,
    C_grid: Sequence[float],
    rng: np.random.Generator,
    notes: list[str],
    partition_of: Callable[[QuadraticLogit, np.ndarray | None], float],
    uq_val: np.ndarray | None = None,
) -> tuple[QuadraticLogit, dict]:
    """Fit the quadratic logistic discriminator; C tuned on a quarter of the fit split."""
    d = u_fit.shape[1]
    # Rotate to P's principal axes: if P is Gaussian, log(p/q) is then a sum of per-axis
    # quadratics, i.e. exactly linear in [v, v^2].
    _, rot = linalg.eigh(np.cov(u_fit, rowvar=False).reshape(d, d))

    def make(up, uq, C):
        a, b, c = _fit_logistic(up @ rot, uq @ rot, C, int(rng.integers(2**31)), notes)
        return QuadraticLogit(rot, a, b, c)

    C_best = C_grid[0]
    if len(C_grid) > 1:
        n_in, m_in = int(0.75 * len(u_fit)), int(0.75 * len(uq_fit))
        scores = []
        for C in C_grid:
            T = make(u_fit[:n_in], uq_fit[:m_in], C)
            logz = partition_of(T, uq_fit[m_in:])
            scores.append(float(T.log_ratio(u_fit[n_in:]).mean() - logz))
        C_best = C_grid[int(np.nanargmax(scores))]
    return make(u_fit, uq_fit, C_best), {"C": float(C_best)}
