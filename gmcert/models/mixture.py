"""`GaussianMixtureClassifier`: the class-conditional Gaussian mixture Q and its Bayes rule.

Q(z, y=k) = pi_k N(z; mu_k, Sigma_k) (docs/theory.md section 1). The fit streams over row chunks
in two passes (means, then centred second and fourth moments), all in float64, so latents can
stay on disk (a memory map) however many there are.
"""

from __future__ import annotations

import copy
import math
import numbers

import numpy as np
from scipy import linalg
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from gmcert.gaussian import cholesky, sample_gaussian_mixture
from gmcert.models.moments import (
    SHRINKAGE_RULES,
    chunks,
    class_moments,
    shrink,
    shrinkage_intensity,
)

COVARIANCE_FAMILIES = ("isotropic", "diag", "shared", "full", "lowrank")
LINEAR_FAMILIES = ("isotropic", "shared")


class GaussianMixtureClassifier(ClassifierMixin, BaseEstimator):
    """Class-conditional Gaussian mixture with its Bayes rule, a scikit-learn classifier.

    Parameters
    ----------
    covariance : one of ``isotropic`` (sigma^2 I shared), ``diag`` (per class), ``shared``
        (one full Sigma), ``full`` (one Sigma_k per class), ``lowrank`` (per class
        U_k U_k^T + s_k^2 I, probabilistic PCA of rank ``rank``).
    shrinkage : ``ledoit_wolf``, ``oas``, ``none`` or a fixed intensity in [0, 1], towards
        (tr S / d) I; used by ``shared`` and ``full``.
    priors : ``empirical`` (class frequencies), ``uniform``, or a sequence of K weights.
    reg_covar : relative to the data's scale: ``reg_covar * v`` is added to every covariance's
        diagonal, where v is the mean per-coordinate variance of the training data
        (``np.var(X, axis=0).mean()``), so that a constant feature (an always-black pixel)
        cannot make a covariance singular, and the same data in other units (X times c) gives
        the same rule in those units: the same predictions, certified radii times c. (An
        absolute 1e-6 swamped variances of order 1e-12 in data scaled by 1e-6, and the
        classifier fell to chance.) The ridge actually added is ``reg_covar_``.
    rank : the rank of U_k for ``lowrank``.
    tau : the robust linear rule for a target radius (docs/theory.md section 2) classifies with
        Sigma + tau I; 0 is the plain Bayes rule. ``covariances_`` (the fitted Q) exclude it.
    chunk_size : rows per pass-chunk of the streamed fit.
    random_state : seed for ``sample``.

    Attributes: ``classes_``, ``priors_`` (K,), ``means_`` (K, d), ``covariances_`` (d, d)
    shared or (K, d, d), ``precisions_`` likewise, ``reg_covar_`` (the ridge added, in the
    data's squared units), ``data_variance_`` (v above), ``log_weights_`` (K,) = log pi_k - 1/2 log
    det Sigma_k, ``shrinkage_`` (per class or scalar), ``n_features_in_``.

    Scores: ``predict_joint_log_proba`` gives s_k(z) = log pi_k + log N(z; mu_k, Sigma_k),
    (n, K), for every K. ``class_scores`` gives the same less a term common to all classes
    (``M z + c`` of ``linear_head`` for shared covariances, ``log_weights_[k] - 1/2 (z -
    mu_k)^T P_k (z - mu_k)`` otherwise): the certifiers' scores, whose argmax ``predict`` is,
    so that the prediction agrees with the certificate at every latent scale.
    ``decision_function`` is ``class_scores``, or (n,) log-odds of them when K = 2.
    ``reg_covar_`` is part of the fitted covariances, hence of every score, of
    ``score_samples`` and of ``sample``. ``precisions_``, ``log_weights_`` and every score are
    the decision rule's (with ``tau``); ``sample`` draws from Q (without it).
    """

    def __init__(
        self,
        covariance: str = "shared",
        shrinkage="ledoit_wolf",
        priors="empirical",
        reg_covar: float = 1e-6,
        rank: int = 8,
        tau: float = 0.0,
        chunk_size: int = 65536,
        random_state=None,
    ):
        self.covariance = covariance
        self.shrinkage = shrinkage
        self.priors = priors
        self.reg_covar = reg_covar
        self.rank = rank
        self.tau = tau
        self.chunk_size = chunk_size
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, *, moments=None):
        """Fit Q to (X, y). ``moments``: :meth:`class_moments` of the same X and y, passed when
        one data set is fitted under many settings that leave the moments alone (shrinkage,
        tau, priors), so that they are computed once."""
        self._check_params()
        # float32 and float64 pass through uncopied (a memory map stays on disk); the
        # moments are accumulated in float64 chunk by chunk.
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], copy=False)
        check_classification_targets(y)
        self.classes_, y_codes = np.unique(y, return_inverse=True)
        num_classes, (n, d) = len(self.classes_), X.shape
        if num_classes < 2:
            # "1 class" is the wording scikit-learn's estimator checks look for.
            raise ValueError(
                f"GaussianMixtureClassifier needs at least 2 classes; y has only "
                f"{num_classes} class: {self.classes_.tolist()}"
            )
        if self.covariance == "lowrank" and not self.rank < d:
            raise ValueError(
                f"covariance='lowrank' needs rank < n_features = {d}, got rank={self.rank}; "
                "use covariance='full' for a full-rank covariance per class"
            )
        m = moments if moments is not None else self._moments(X, y_codes, num_classes)
        if len(m.counts) != num_classes or m.means.shape[1] != d:
            raise ValueError("moments were computed for other data than fit(X, y) was given")
        self._check_class_sizes(m.counts, d)
        self.priors_ = self._resolve_priors(m.counts)
        self.means_ = m.means
        self.n_features_in_ = d
        self.data_variance_ = self._data_variance(m, n, d)
        # All points equal (v = 0): no scale to follow, the ridge is reg_covar itself.
        self.reg_covar_ = self.reg_covar * (self.data_variance_ if self.data_variance_ > 0 else 1)
        getattr(self, f"_fit_{self.covariance}")(m, n, d)
        self._finalise()
        return self

    def class_moments(self, X, y):
        """The float64 class moments :meth:`fit` needs for this covariance family."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], copy=False, reset=False)
        classes, y_codes = np.unique(y, return_inverse=True)
        return self._moments(X, y_codes, len(classes))

    def _moments(self, X, y_codes, num_classes):
        scatter = {"shared": "pooled", "isotropic": "pooled", "diag": "diag"}.get(
            self.covariance, "per_class"
        )
        return class_moments(X, y_codes, num_classes, scatter=scatter, chunk_size=self.chunk_size)

    def _data_variance(self, m, n, d) -> float:
        """The mean per-coordinate variance of the fitted data, ``np.var(X, axis=0).mean()``,
        from the class moments (no pass over the data): the within-class scatter plus the
        spread of the class means around the grand mean."""
        if self.covariance == "diag":  # (K, d) diagonals
            within = m.scatter.sum()
        elif m.scatter.ndim == 3:  # (K, d, d) per class
            within = np.trace(m.scatter, axis1=1, axis2=2).sum()
        else:  # (d, d) pooled
            within = np.trace(m.scatter)
        grand = m.counts @ m.means / n
        between = m.counts @ np.sum((m.means - grand) ** 2, axis=1)
        return float((within + between) / (n * d))

    def _check_params(self):
        if self.covariance not in COVARIANCE_FAMILIES:
            raise ValueError(
                f"unknown covariance family {self.covariance!r}; choose one of "
                f"{COVARIANCE_FAMILIES}"
            )
        s = self.shrinkage
        if isinstance(s, str) or s is None or isinstance(s, bool):
            if s not in (*SHRINKAGE_RULES, None):
                raise ValueError(
                    f"unknown shrinkage {s!r}: use one of {SHRINKAGE_RULES} or a number in [0, 1]"
                )
        elif not isinstance(s, numbers.Real) or not 0 <= s <= 1:
            raise ValueError(
                f"a fixed shrinkage must be a number in [0, 1], got {s!r}; or use one of "
                f"{SHRINKAGE_RULES}"
            )
        for name in ("tau", "reg_covar"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("rank", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.tau > 0 and self.covariance not in LINEAR_FAMILIES:
            raise ValueError(
                "tau (the robust linear rule) needs a shared covariance: use "
                "covariance='shared' or 'isotropic'"
            )

    def _unshrunk(self) -> bool:
        return self.shrinkage in ("none", None) or (
            not isinstance(self.shrinkage, str) and float(self.shrinkage) == 0
        )

    def _check_class_sizes(self, counts, d):
        """Refuse fits whose covariance would be singular before reg_covar, naming a fix."""
        pooled_dof = int(counts.sum()) - len(counts)
        if self.covariance in ("isotropic", "shared") and pooled_dof < 1:
            raise ValueError(
                f"covariance={self.covariance!r} pools the within-class residuals, but every "
                "class has a single sample; more data is needed"
            )
        if self.covariance == "shared" and self._unshrunk() and pooled_dof < d:
            raise ValueError(
                f"an unshrunk shared covariance in d={d} needs n_samples - n_classes >= {d}, "
                f"got {pooled_dof}; use shrinkage='ledoit_wolf' or 'oas'"
            )
        # The PPCA noise variance is the mean of the d - rank smallest eigenvalues of the
        # class covariance, which has rank n_k - 1: it is zero unless n_k >= rank + 2.
        needs = {
            "diag": (2, "covariance='isotropic' or 'shared'"),
            "full": (
                d + 1 if self._unshrunk() else 2,
                "covariance='shared', or 'full' with shrinkage='ledoit_wolf'",
            ),
            "lowrank": (self.rank + 2, "covariance='shared', or 'lowrank' with a smaller rank"),
        }
        if self.covariance not in needs:
            return
        minimum, alternative = needs[self.covariance]
        small = {str(self.classes_[k]): int(c) for k, c in enumerate(counts) if c < minimum}
        if small:
            raise ValueError(
                f"covariance={self.covariance!r} needs at least {minimum} samples per class in "
                f"d={d}, but these classes have fewer: {small}; use {alternative}, or more data"
            )

    def _resolve_priors(self, counts):
        if isinstance(self.priors, str):
            if self.priors == "empirical":
                return counts / counts.sum()
            if self.priors == "uniform":
                return np.full(len(counts), 1.0 / len(counts))
            raise ValueError(
                f"priors must be 'empirical', 'uniform' or K weights, got {self.priors!r}"
            )
        priors = np.asarray(self.priors, np.float64)
        if priors.shape != counts.shape or not np.all(np.isfinite(priors) & (priors > 0)):
            raise ValueError(f"priors must be {len(counts)} positive weights, got {self.priors!r}")
        return priors / priors.sum()

    def _fit_shared(self, m, n, d):
        cov = m.scatter / n
        self.shrinkage_ = shrinkage_intensity(cov, n, m.fourth.sum(), self.shrinkage)
        self.covariances_ = shrink(cov, self.shrinkage_) + self.reg_covar_ * np.eye(d)

    def _fit_isotropic(self, m, n, d):
        self.shrinkage_ = 0.0
        variance = np.trace(m.scatter) / (n * d)
        self.covariances_ = (variance + self.reg_covar_) * np.eye(d)

    def _fit_full(self, m, n, d):
        covs = m.scatter / m.counts[:, None, None]
        self.shrinkage_ = np.array(
            [
                shrinkage_intensity(c, nk, f, self.shrinkage)
                for c, nk, f in zip(covs, m.counts, m.fourth, strict=True)
            ]
        )
        shrunk = [shrink(c, a) for c, a in zip(covs, self.shrinkage_, strict=True)]
        self.covariances_ = np.stack(shrunk) + self.reg_covar_ * np.eye(d)

    def _fit_diag(self, m, n, d):
        variances = m.scatter / m.counts[:, None] + self.reg_covar_
        self.shrinkage_ = 0.0
        self.covariances_ = np.stack([np.diag(v) for v in variances])

    def _fit_lowrank(self, m, n, d):
        """Probabilistic PCA (Tipping and Bishop 1999) of each class, plus reg_covar_ I."""
        covs = []
        for scatter, nk in zip(m.scatter, m.counts, strict=True):
            lam, vecs = linalg.eigh(scatter / nk)
            lam, vecs = lam[::-1], vecs[:, ::-1]
            noise = max(lam[self.rank :].mean(), 0.0)
            u = vecs[:, : self.rank] * np.sqrt(np.maximum(lam[: self.rank] - noise, 0.0))
            covs.append(u @ u.T + (noise + self.reg_covar_) * np.eye(d))
        self.shrinkage_ = 0.0
        self.covariances_ = np.stack(covs)

    def _finalise(self):
        # The decision rule uses Sigma + tau I (tau = 0: the Bayes rule of Q); covariances_ stay
        # the fitted Q, which sample() draws from.
        covs = self.covariances_ + self.tau * np.eye(self.n_features_in_)
        stacked = covs if covs.ndim == 3 else covs[None]
        precisions, logdets = [], []
        for cov in stacked:
            chol = cholesky(
                cov,
                "the fitted covariance",
                hint="fit with mixture.shrinkage=ledoit_wolf (or oas), or mixture.reg_covar > 0",
            )
            inv_chol = linalg.solve_triangular(chol, np.eye(len(cov)), lower=True)
            precisions.append(inv_chol.T @ inv_chol)
            logdets.append(2 * np.log(np.diag(chol)).sum())
        precisions = np.stack(precisions)
        # Exactly symmetric, so that the certifiers' own symmetrisation changes nothing.
        precisions = 0.5 * (precisions + precisions.transpose(0, 2, 1))
        self.precisions_ = precisions if covs.ndim == 3 else precisions[0]
        self.log_weights_ = np.log(self.priors_) - 0.5 * np.asarray(logdets)

    def with_added_covariance(self, extra) -> GaussianMixtureClassifier:
        """A fitted copy whose class covariances are ``covariances_ + extra``; self is unchanged.

        This is the law of ``z + e`` for ``e ~ N(0, extra)`` independent of ``(z, y)``: each
        class becomes N(mu_k, Sigma_k + extra), priors and means are kept, and ``precisions_``
        and ``log_weights_`` are recomputed (with ``tau``). ``extra`` is a symmetric positive
        semi-definite (d, d) matrix added to every class, or (K, d, d) one per class for the
        per-class families.

        The family of the copy (its ``covariance`` parameter) is the smallest one that holds the
        result exactly: ``isotropic`` stays isotropic when ``extra`` is exactly c I and becomes
        ``shared`` otherwise; ``diag`` stays diag when ``extra`` is exactly diagonal and becomes
        ``full`` otherwise; ``lowrank`` stays lowrank when ``extra`` is exactly c I and becomes
        ``full`` otherwise; ``shared`` and ``full`` stay. Linear families stay linear. The copy
        is a fitted estimator like any other (``clone`` of it, or ``fit``, forgets ``extra``).
        """
        check_is_fitted(self)
        d, num_classes = self.n_features_in_, len(self.classes_)
        extra = np.asarray(extra, dtype=np.float64)
        if extra.shape == (num_classes, d, d) and self.is_linear_:
            if not np.all(extra == extra[:1]):
                raise ValueError(
                    f"covariance={self.covariance!r} shares one covariance across classes, but "
                    "extra differs between classes (the boundaries would be quadratic); fit "
                    "covariance='full', or add one (d, d) matrix"
                )
            extra = extra[0]
        allowed = [(d, d)] if self.is_linear_ else [(d, d), (num_classes, d, d)]
        if extra.shape not in allowed:
            raise ValueError(
                f"extra must have shape {' or '.join(map(str, allowed))} for this "
                f"covariance={self.covariance!r} mixture, got {extra.shape}"
            )
        if not np.all(np.isfinite(extra)):
            raise ValueError("extra contains NaN or inf")
        stacked = extra.reshape(-1, d, d)
        scale = max(float(np.abs(stacked).max()), np.finfo(np.float64).tiny)
        if np.abs(stacked - stacked.transpose(0, 2, 1)).max() > 1e-10 * scale:
            raise ValueError("extra must be symmetric (a covariance matrix)")
        stacked = 0.5 * (stacked + stacked.transpose(0, 2, 1))
        if np.linalg.eigvalsh(stacked).min() < -1e-10 * scale:
            raise ValueError("extra must be positive semi-definite (a covariance matrix)")
        extra = stacked.reshape(extra.shape)

        off_diagonal = stacked * (1 - np.eye(d))
        diagonal = np.all(off_diagonal == 0)
        scaled_identity = diagonal and np.all(
            np.diagonal(stacked, axis1=1, axis2=2) == stacked[0, 0, 0]
        )
        family = self.covariance
        if family == "isotropic" and not scaled_identity:
            family = "shared"
        elif (family == "diag" and not diagonal) or (family == "lowrank" and not scaled_identity):
            family = "full"

        out = copy.deepcopy(self)
        out.covariance = family
        out.covariances_ = self.covariances_ + extra
        out._finalise()
        return out

    # ------------------------------------------------------------- queries
    @property
    def is_linear_(self) -> bool:
        """True when every pairwise boundary is a hyperplane (one shared covariance)."""
        check_is_fitted(self)
        return self.precisions_.ndim == 2

    def linear_head(self) -> tuple[np.ndarray, np.ndarray]:
        """(M, c): s_k(z) = M[k] @ z + c[k] up to a term common to all classes (LDA)."""
        if not self.is_linear_:
            raise ValueError(
                f"covariance={self.covariance!r} has quadratic boundaries; no linear head"
            )
        M = self.means_ @ self.precisions_
        c = np.log(self.priors_) - 0.5 * np.einsum("kd,kd->k", M, self.means_)
        return M, c

    def class_precisions(self) -> np.ndarray:
        """(K, d, d) precisions, broadcasting a shared one."""
        check_is_fitted(self)
        p = self.precisions_
        return np.broadcast_to(p, (len(self.classes_), *p.shape[-2:])) if p.ndim == 2 else p

    def class_covariances(self) -> np.ndarray:
        check_is_fitted(self)
        c = self.covariances_
        return np.broadcast_to(c, (len(self.classes_), *c.shape[-2:])) if c.ndim == 2 else c

    def _class_scores(self, Z: np.ndarray, head) -> np.ndarray:
        """The decision rule's class scores for Z (n, d) float64, (n, K), without any term
        common to all classes: ``M z + c`` from :meth:`linear_head` for the linear families,
        ``log_weights_[k] - 1/2 (z - mu_k)^T P_k (z - mu_k)`` otherwise. These are the scores
        of :class:`gmcert.certify.linear.LinearCertifier` and
        :class:`gmcert.certify.quadratic.QuadraticCertifier` (the same formulas, evaluated in
        float64; only the order of summation differs), so the argmax (``predict``) agrees with
        the certified rule at every latent scale."""
        if head is not None:  # (M, c) of linear_head(), computed once per call
            M, c = head
            return Z @ M.T + c
        out = np.empty((len(Z), len(self.classes_)))
        for k, (mu, prec) in enumerate(zip(self.means_, self.precisions_, strict=True)):
            r = Z - mu
            out[:, k] = self.log_weights_[k] - 0.5 * np.einsum("nd,nd->n", r @ prec, r)
        return out

    def _common_term(self, Z: np.ndarray) -> np.ndarray:
        """(n,) the part of log Q(z, y=k) that ``_class_scores`` leaves out (the same for every
        class): -1/2 z^T P z - 1/2 log det Sigma for a shared covariance, and the Gaussian
        normaliser -d/2 log(2 pi)."""
        common = np.full(len(Z), -0.5 * self.n_features_in_ * math.log(2 * math.pi))
        if self.is_linear_:
            quad = np.einsum("nd,nd->n", Z @ self.precisions_, Z)
            common += (self.log_weights_[0] - math.log(self.priors_[0])) - 0.5 * quad
        return common

    def _scores(self, X, *, joint: bool) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        head = self.linear_head() if self.is_linear_ else None
        out = np.empty((len(X), len(self.classes_)))
        for rows in chunks(len(X), self.chunk_size):
            Z = np.asarray(X[rows], np.float64)
            out[rows] = self._class_scores(Z, head)
            if joint:
                out[rows] += self._common_term(Z)[:, None]
        return out

    def predict_joint_log_proba(self, X) -> np.ndarray:
        """s_k(z) = log pi_k + log N(z; mu_k, Sigma_k) = log Q(z, y=k), shape (n, K)."""
        return self._scores(X, joint=True)

    def class_scores(self, X) -> np.ndarray:
        """(n, K) the decision rule's class scores, centred: ``predict_joint_log_proba`` less a
        term common to all classes (see ``decision_function``); their argmax is ``predict``."""
        return self._scores(X, joint=False)

    def decision_function(self, X) -> np.ndarray:
        """Scores whose argmax is the prediction, as scikit-learn classifiers define them.

        K > 2: the centred class scores of the certified rule, shape (n, K): ``M z + c`` from
        :meth:`linear_head` for the linear families, ``log_weights_[k] - 1/2 (z - mu_k)^T P_k
        (z - mu_k)`` for per-class covariances; they differ from the joint log-likelihoods
        ``predict_joint_log_proba`` by a term common to all classes, which is left out because
        its rounding can exceed the differences between classes at small latent scales.
        K = 2: the log-odds s_1(z) - s_0(z), shape (n,), positive for ``classes_[1]`` (as in
        LinearDiscriminantAnalysis).
        """
        scores = self.class_scores(X)
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def predict(self, X) -> np.ndarray:
        """``classes_`` of the argmax of the centred class scores (``class_scores``): the rule
        the certifiers certify, compared without the large common terms of the joint
        log-likelihoods."""
        check_is_fitted(self)  # before self.classes_ is read
        return self.classes_[np.argmax(self.class_scores(X), axis=1)]

    def predict_log_proba(self, X) -> np.ndarray:
        jll = self.predict_joint_log_proba(X)
        return jll - logsumexp(jll, axis=1, keepdims=True)

    def predict_proba(self, X) -> np.ndarray:
        return np.exp(self.predict_log_proba(X))

    def score_samples(self, X) -> np.ndarray:
        """log Q(z) = log sum_k pi_k N(z; mu_k, Sigma_k), the mixture's density."""
        return logsumexp(self.predict_joint_log_proba(X), axis=1)

    def sample(self, n_samples: int = 1, *, random_state=None):
        """Draw (Z, y) from Q, y as ``classes_`` values.

        The seed is ``random_state`` if given, else the estimator's ``random_state``.
        """
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        rng = check_random_state(self.random_state if random_state is None else random_state)
        Z, codes = sample_gaussian_mixture(
            n_samples, self.means_, self.class_covariances(), self.priors_, rng
        )
        return Z, self.classes_[codes]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
