"""From latent radii to input radii: what an encoder's Lipschitz bound implies in each norm.

An input perturbation of ``norm`` size r moves the latent by at most ``factor * r`` in
``latent_norm``, so a latent certificate of radius R in ``latent_norm`` certifies the input
ball of radius R / factor. An encoder's ``lipschitz`` is an l2 -> l2 bound L; in the input
norm p it gives the p -> l2 bound L * l2_per_unit(p, n) (sqrt(n) for linf, 1 for l2 and l1).
The identity needs no bound: latent and input are the same space, in every norm.
"""

from __future__ import annotations

from dataclasses import dataclass

from gmcert.certify.norms import l2_per_unit, l2_radius_inside
from gmcert.encoders.linear import LinearMap


@dataclass(frozen=True)
class RadiusTransfer:
    latent_norm: str  # the norm the latent certificate must be computed in
    factor: float | None  # None: no bound, radii stay in latent units
    # The other way round: the latent l2 ball of radius inner_l2 * r lies in the image of the
    # input ball of radius r (known for linear encoders only): what a ceiling may assume.
    inner_l2: float | None = None
    linear: LinearMap | None = None  # the encoder's exact map, when it is linear

    def input_radius(self, latent_radius):
        return latent_radius / self.factor


def radius_transfer(encoder, norm: str, input_dim: int) -> RadiusTransfer:
    """How latent radii of ``encoder`` become input radii in ``norm`` for inputs of
    ``input_dim`` coordinates."""
    linear = encoder.linear_map()
    inner = None
    if linear is not None:
        inner = linear.smallest_gain() * l2_radius_inside(norm, input_dim)
        if linear.weight is None:
            return RadiusTransfer(norm, 1.0, inner, linear)
    if encoder.lipschitz:
        factor = encoder.lipschitz * l2_per_unit(norm, input_dim)
        return RadiusTransfer("l2", factor, inner, linear)
    return RadiusTransfer(norm, None, inner, linear)
