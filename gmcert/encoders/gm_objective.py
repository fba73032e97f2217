"""The loss that shapes a Lipschitz encoder's latents into the mixture the head will fit.

Target: class k's latents z ~ Q_k = N(mu_k, s^2 I_d), the same covariance s^2 I for every class
(what ``mixture=shared`` fits, and a Ledoit-Wolf shrinkage towards a scaled identity leaves
unchanged). The Bayes rule of such a mixture (equal priors) is the nearest mean, so the
certified latent l2 radius of a correctly classified z is its distance to the nearest bisector,

    r(z) = min_{j != k} ((mu_k - mu_j) . z - (|mu_k|^2 - |mu_j|^2) / 2) / |mu_k - mu_j|,

and a 1-Lipschitz encoder makes it an input l2 radius as well. Three terms, each a mean over
the batch:

- ``fit``: sum_k p_k KL(N(m_k, C_k) || N(mu_k, s^2 I)) with m_k, C_k the class's batch mean and
  covariance and p_k its batch share,

      KL = 1/2 [tr(C_k) / s^2 - d - log det(C_k / s^2) + |m_k - mu_k|^2 / s^2].

  Because log Q_k is quadratic, KL(P_k || Q_k) = KL(P_k || N(m_k, C_k)) + KL(N(m_k, C_k) || Q_k)
  exactly: this term is the moment part of the eps the run estimates (the rest is P_k's
  non-Gaussianity). Its log det keeps a class from collapsing and its trace from spreading.
- ``margin``: mean hinge (margin - r(z))_+ / margin, pushing every training point's certified
  radius to ``margin``. With a temperature t > 0 the hinge is smoothed over every rival's
  bisector: t log(1 + sum_{j != k} exp((margin - r_j(z)) / t)) / margin, with r_j(z) the
  signed distance to the bisector between k and j. It tends to the hinge as t -> 0 and,
  unlike the hinge, keeps pushing radii past ``margin`` (its gradient there decays like
  exp(-(r - margin) / t) instead of vanishing), which is what certifies large radii.
- ``likelihood``: cross-entropy of Q's posterior, log-softmax_k(-|z - mu_k|^2 / (2 s^2)): the
  mixture's own classification loss.
- ``centre`` (off by default): mean |z - mu_k|^2 / s^2, a plain pull of every point to its
  class mean (the moment-matching ``fit`` term without the log det that keeps classes spread).

Priors are left out of the rule: the datasets this serves are near balanced, and the head's
empirical priors shift each bisector by s^2 log(pi_k / pi_j) / |mu_k - mu_j|, small at the
target's scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ObjectiveWeights:
    """The target's standard deviation s, the hinge's target radius, and each term's weight."""

    target_std: float
    margin: float
    fit: float = 1.0
    margin_weight: float = 1.0
    likelihood: float = 0.0
    centre: float = 0.0
    margin_temperature: float = 0.0

    def __post_init__(self):
        if not self.target_std > 0:
            raise ValueError(f"target_std must be > 0, got {self.target_std}")
        if not self.margin > 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")
        if min(self.fit, self.margin_weight, self.likelihood, self.centre) < 0:
            raise ValueError(
                "objective weights (fit, margin_weight, likelihood, centre) must be >= 0"
            )
        if not self.margin_temperature >= 0:
            raise ValueError(f"margin_temperature must be >= 0, got {self.margin_temperature}")


def bisector_distances(z: Tensor, labels: Tensor, means: Tensor) -> Tensor:
    """(n, K): the signed l2 distance from each row of z to the bisector between its own
    class mean and each rival's (negative on the rival's side; inf in the own class's
    column). z (n, d), means (K, d)."""
    own = means[labels]  # (n, d)
    diff = own[:, None, :] - means[None, :, :]  # (n, K, d)
    gap = diff.norm(dim=-1)  # (n, K)
    midpoint = (own[:, None, :] + means[None, :, :]) / 2
    signed = ((z[:, None, :] - midpoint) * diff).sum(-1) / gap.clamp_min(1e-12)
    return signed.masked_fill(F.one_hot(labels, len(means)).bool(), float("inf"))


def bisector_radius(z: Tensor, labels: Tensor, means: Tensor) -> Tensor:
    """r(z) for each row: signed l2 distance from z to the nearest bisector between its own
    class mean and a rival's (negative when a rival's mean is closer). z (n, d), means (K, d)."""
    return bisector_distances(z, labels, means).min(dim=1).values


def margin_loss(z: Tensor, labels: Tensor, means: Tensor, margin: float, temperature: float):
    """The ``margin`` term (module docstring): the hinge at temperature 0, else its smooth
    form over every rival's bisector; divided by ``margin`` so its scale does not depend on it."""
    if temperature == 0:
        return F.relu(margin - bisector_radius(z, labels, means)).mean() / margin
    excess = (margin - bisector_distances(z, labels, means)) / temperature  # own column: -inf
    # log(1 + sum_j exp(excess_j)): a zero column stands for the 1.
    padded = torch.cat([excess, excess.new_zeros(len(excess), 1)], dim=1)
    return temperature * torch.logsumexp(padded, dim=1).mean() / margin


def gaussian_fit(z: Tensor, labels: Tensor, means: Tensor, target_std: float) -> Tensor:
    """sum_k p_k KL(N(m_k, C_k) || N(mu_k, s^2 I)) over the classes with at least two points
    in the batch (a covariance needs two). A tiny ridge keeps log det finite when a class has
    fewer points than dimensions."""
    # float64: a float32 class covariance of few points in many dimensions can round to a
    # matrix with a negative eigenvalue, whose log det is NaN (and NaN ruins every weight).
    dtype, z, means = z.dtype, z.double(), means.double()
    d = z.shape[1]
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    var = target_std**2
    total = z.new_zeros(())
    for k in torch.unique(labels):
        zk = z[labels == k]
        if len(zk) < 2:
            continue
        centred = zk - zk.mean(0)
        scaled = centred.T @ centred / ((len(zk) - 1) * var) + 1e-6 * eye  # C_k / s^2
        kl = 0.5 * (
            torch.diagonal(scaled).sum()
            - d
            - torch.logdet(scaled)
            + (zk.mean(0) - means[k]).square().sum() / var
        )
        total = total + kl * len(zk) / len(z)
    return total.to(dtype)


def gm_loss(z: Tensor, labels: Tensor, means: Tensor, weights: ObjectiveWeights) -> dict:
    """The terms and their weighted sum (``"total"``), as 0-d tensors."""
    terms = {
        "fit": gaussian_fit(z, labels, means, weights.target_std),
        "margin": margin_loss(z, labels, means, weights.margin, weights.margin_temperature),
    }
    if weights.likelihood:
        logits = -(z[:, None, :] - means[None]).square().sum(-1) / (2 * weights.target_std**2)
        terms["likelihood"] = F.cross_entropy(logits, labels)
    if weights.centre:
        pull = (z - means[labels]).square().sum(-1).mean() / weights.target_std**2
        terms["centre"] = pull
    total = weights.fit * terms["fit"] + weights.margin_weight * terms["margin"]
    if weights.likelihood:
        total = total + weights.likelihood * terms["likelihood"]
    if weights.centre:
        total = total + weights.centre * terms["centre"]
    terms["total"] = total
    return terms
