"""Estimating eps = KL(P || Q) between the real latent law P and the fitted mixture Q.

docs/theory.md sections 6 and 7. The joint divergence splits exactly as

    KL(P || Q) = KL(P_y || pi) + sum_k P(y = k) KL(P_{z|k} || N(mu_k, Sigma_k)),

so the work is per class: a sample X_k ~ P_{z|k} against a *known* Gaussian. Three estimators,
because each is biased in a different way in high dimension:

* ``knn``    (:mod:`~gmcert.eps.knn`) k-th neighbour distances of X within X and in a sample
             Y ~ Q; the bias can have either sign in high d.
* ``plugin`` (:mod:`~gmcert.eps.plugin`) ``-H(P) - E_P[log N(z; mu, Sigma)]`` with a
             Kozachenko-Leonenko entropy, biased low in high d.
* ``dv``     (:mod:`~gmcert.eps.dv`) a Donsker-Varadhan lower bound with an exact partition
             term; errs low when the discriminator is a poor log-ratio.

Modules, one job each: :mod:`~gmcert.eps.results` (the :class:`TermEstimate` every estimator
returns), :mod:`~gmcert.eps.checks` (the neighbour order's check; the Gaussian closed forms
and sample checks are the package's, in :mod:`gmcert.gaussian` and :mod:`gmcert.checks`),
:mod:`~gmcert.eps.neighbours` (batched torch neighbour search; :class:`NeighbourSearch` holds its
settings), the estimators above and their discriminators (:mod:`~gmcert.eps.discriminators`),
:mod:`~gmcert.eps.bootstrap`, :mod:`~gmcert.eps.null` (each estimator on samples of Q itself,
where KL = 0: the null bias a run subtracts), :mod:`~gmcert.eps.per_class` (the registry
:data:`ESTIMATORS`),
:mod:`~gmcert.eps.estimate` (:func:`estimate_eps`), :mod:`~gmcert.eps.gaussianity` (normality
diagnostics) and :mod:`~gmcert.eps.truth` (the exact KL when P is known, :func:`true_kl`).

Nothing here is a guarantee: the certificate holds for a stated eps, and these are estimates
of eps. All statistics are float64. Units: latent coordinates in, nats out.
"""

from gmcert.eps.bootstrap import bootstrap_ci
from gmcert.eps.dv import kl_dv_gaussian, kl_dv_lower_bound
from gmcert.eps.estimate import estimate_eps, label_kl
from gmcert.eps.gaussianity import gaussianity_tests, henze_zirkler_test, mardia_test
from gmcert.eps.knn import kl_knn
from gmcert.eps.neighbours import Neighbours, NeighbourSearch, kth_neighbour_distance
from gmcert.eps.per_class import ESTIMATORS
from gmcert.eps.plugin import entropy_kozachenko_leonenko, kl_plugin_gaussian
from gmcert.eps.results import TermEstimate
from gmcert.eps.truth import true_kl
from gmcert.gaussian import gaussian_logpdf, kl_gaussian

__all__ = [
    "ESTIMATORS",
    "NeighbourSearch",
    "Neighbours",
    "TermEstimate",
    "bootstrap_ci",
    "entropy_kozachenko_leonenko",
    "estimate_eps",
    "gaussian_logpdf",
    "gaussianity_tests",
    "henze_zirkler_test",
    "kl_dv_gaussian",
    "kl_dv_lower_bound",
    "kl_gaussian",
    "kl_knn",
    "kl_plugin_gaussian",
    "kth_neighbour_distance",
    "label_kl",
    "mardia_test",
    "true_kl",
]
