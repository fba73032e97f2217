"""Gaussianity diagnostics: how far is each class law P_{z|k} from a Gaussian.

Mardia (1970) skewness and kurtosis, and Henze-Zirkler when ``pingouin`` is importable. They
answer the question the eps estimators quantify, without a number in nats: with thousands of
samples any real encoder's latents reject exact normality, so read them as diagnostics.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import linalg, stats

from gmcert.checks import as_matrix
from gmcert.eps.results import to_jsonable

__all__ = ["mardia_test", "henze_zirkler_test", "gaussianity_tests"]


def mardia_test(X, *, device: str | torch.device = "cpu", block: int = 2048) -> dict:
    """Mardia's (1970) multivariate skewness and kurtosis tests of normality; X (n, d).

    With centred x_i and the maximum-likelihood covariance S (divisor n), g_ij = x_i' S^-1 x_j:
    ``b1 = n^-2 sum_ij g_ij^3`` and ``b2 = n^-1 sum_i g_ii^2``.

    * skewness: ``n b1 / 6 ~ chi2(d (d+1) (d+2) / 6)`` asymptotically; the small-sample
      corrected statistic (Mardia 1974, factor (d+1)(n+1)(n+3) / (n ((n+1)(d+1) - 6))) is
      reported too (the uncorrected test is conservative at small n).
    * kurtosis: two-sided normal test of b2 with its exact mean under normality,
      d(d+2)(n-1)/(n+1), and exact variance 8d(d+2)(n-3)(n-d-1)(n-d+1)/((n+1)^2(n+3)(n+5)).

    Both approximations need n >> d; with n < 10 d read the p-values as rough. When n <= d + 1
    or S is singular the test is undefined: returns ``{"defined": False, "reason": ...}``.
    The n x n matrix g is never held whole: row blocks of size ``block`` on ``device``.
    """
    X = as_matrix(X, "X")
    n, d = X.shape
    base = {"n": int(n), "d": int(d)}
    if n <= d + 1:
        return {
            **base,
            "defined": False,
            "reason": f"needs n > d + 1 samples (n={n}, d={d}); reduce d (e.g. PCA) first",
        }
    xc = X - X.mean(axis=0)
    S = xc.T @ xc / n
    try:
        chol = linalg.cholesky(S, lower=True)
    except linalg.LinAlgError:
        return {
            **base,
            "defined": False,
            "reason": "sample covariance is singular; the data lie in a subspace, project "
            "onto its principal components first",
        }
    if np.min(np.diag(chol)) ** 2 < 1e-12 * np.max(np.diag(S)):
        return {
            **base,
            "defined": False,
            "reason": "sample covariance is numerically singular; project onto principal "
            "components first",
        }
    w = linalg.solve_triangular(chol, xc.T, lower=True).T  # rows w_i, g_ij = w_i . w_j
    wt = torch.as_tensor(w, dtype=torch.float64, device=torch.device(device))
    cube_sum = 0.0
    for s in range(0, n, block):
        g = wt[s : s + block] @ wt.T
        cube_sum += float((g * g * g).sum().item())
    b1 = cube_sum / n**2
    diag = np.einsum("ij,ij->i", w, w)
    b2 = float(np.mean(diag**2))

    df = d * (d + 1) * (d + 2) / 6.0
    skew_stat = n * b1 / 6.0
    corr = (d + 1) * (n + 1) * (n + 3) / (n * ((n + 1) * (d + 1) - 6.0))
    mean_b2 = d * (d + 2) * (n - 1) / (n + 1)
    var_b2 = (
        8.0 * d * (d + 2) * (n - 3) * (n - d - 1) * (n - d + 1) / ((n + 1) ** 2 * (n + 3) * (n + 5))
    )
    kurt_z = (b2 - mean_b2) / math.sqrt(var_b2) if var_b2 > 0 else float("nan")
    out = {
        **base,
        "defined": True,
        "skewness_b1": float(b1),
        "skewness_statistic": float(skew_stat),
        "skewness_df": float(df),
        "skewness_pvalue": float(stats.chi2.sf(skew_stat, df)),
        "skewness_pvalue_small_sample": float(stats.chi2.sf(skew_stat * corr, df)),
        "kurtosis_b2": b2,
        "kurtosis_expected": float(mean_b2),
        "kurtosis_z": float(kurt_z),
        "kurtosis_pvalue": float(2.0 * stats.norm.sf(abs(kurt_z))),
    }
    if n < 10 * d:
        out["caution"] = "n < 10 d: asymptotic p-values are rough"
    return out


def henze_zirkler_test(X, *, alpha: float = 0.05) -> dict:
    """Henze-Zirkler test of multivariate normality via ``pingouin`` when it is importable.

    Not reimplemented here on purpose (docs/theory.md section 7: use a maintained implementation);
    without pingouin returns ``{"available": False, "reason": ...}``. Needs n > d.
    """
    try:
        import pingouin
    except ImportError:
        return {"available": False, "reason": "pingouin is not installed (pip install pingouin)"}
    X = as_matrix(X, "X")
    n, d = X.shape
    if n <= d:
        return {"available": True, "defined": False, "reason": f"needs n > d (n={n}, d={d})"}
    res = pingouin.multivariate_normality(X, alpha=alpha)
    hz, pval, normal = res[0], res[1], res[2]
    return {
        "available": True,
        "defined": True,
        "statistic": float(hz),
        "pvalue": float(pval),
        "normal_at_alpha": bool(normal),
        "alpha": float(alpha),
    }


def gaussianity_tests(Z, y, *, device: str | torch.device = "cpu", alpha: float = 0.05) -> dict:
    """Per-class Gaussianity diagnostics: Mardia skewness/kurtosis and (optional) Henze-Zirkler.

    Z (n, d) latents, y (n,) integer labels. Returns a JSON-serialisable dict
    ``{"<class>": {"n": n_k, "mardia": {...}, "henze_zirkler": {...}}}``; classes too small
    for a test say so instead of raising. These are diagnostics, not KL estimates: with
    thousands of samples any real encoder's latents will reject exact normality.
    """
    Z = as_matrix(Z, "Z")
    y = np.asarray(y)
    if y.shape != (Z.shape[0],):
        raise ValueError(f"y must have shape ({Z.shape[0]},) to match Z, got {y.shape}")
    out: dict[str, dict] = {}
    for c in np.unique(y):
        Xc = Z[y == c]
        out[str(int(c) if np.issubdtype(y.dtype, np.integer) else c)] = {
            "n": int(len(Xc)),
            "mardia": mardia_test(Xc, device=device),
            "henze_zirkler": henze_zirkler_test(Xc, alpha=alpha),
        }
    return to_jsonable(out)
