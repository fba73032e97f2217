"""Attacks that check certificates: a minimum-norm attack for any torch classifier, and the
exact closest class change for a model linear in its input."""

from gmcert.attack.linear import LinearProjection, linear_boundary_projection
from gmcert.attack.minimum_norm import AttackResult, minimum_norm_attack

__all__ = ["AttackResult", "LinearProjection", "linear_boundary_projection", "minimum_norm_attack"]
