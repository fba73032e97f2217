"""Layers that are 1-Lipschitz in l2 by construction, and the bound a stack of them certifies.

- :func:`orthogonal_linear`: an affine map ``x -> W x + b`` whose ``W`` is kept orthogonal
  while training (``torch.nn.utils.parametrizations.orthogonal``, Cayley map): orthonormal
  columns when it widens (an isometry, ``||W d|| = ||d||``), orthonormal rows when it narrows
  (a projection).
  Either way every singular value of ``W`` is 1, so ``||W x - W x'|| <= ||x - x'||``.
- :class:`GroupSort`: sorts each group of ``group_size`` consecutive coordinates (group size 2
  is MaxMin, ``(a, b) -> (max, min)``). It only permutes coordinates within a group, and which
  permutation it applies changes where two coordinates tie, so it is continuous and piecewise a
  permutation: ``||g(x) - g(x')|| <= ||x - x'||`` and ``||g(x)|| = ||x||`` (Anil, Lucas & Grosse
  2019).
- :func:`lipschitz_bound`: for a chain ``f = f_L o ... o f_1``, ``Lip(f) <= prod Lip(f_i)``.
  Each linear layer contributes its spectral norm ``sigma_max(W)``, computed by an exact SVD in
  float64 of the weights the layer actually holds (so rounding of the orthogonal matrix to
  float32 is in the bound, not assumed away), each GroupSort 1, and a translation 1. Any other
  module in the chain is refused rather than guessed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal


class GroupSort(nn.Module):
    """Sort each group of ``group_size`` consecutive features in descending order.

    Norm-preserving and 1-Lipschitz in l2 (see the module docstring); ``group_size=2`` is MaxMin.
    Input (B, n) with n a multiple of ``group_size``.
    """

    def __init__(self, group_size: int = 2):
        super().__init__()
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"GroupSort needs an integer group_size >= 2, got {group_size!r}")
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[-1]
        if n % self.group_size:
            raise ValueError(
                f"GroupSort(group_size={self.group_size}) needs a feature count divisible by "
                f"{self.group_size}, got {n}"
            )
        groups = x.reshape(*x.shape[:-1], n // self.group_size, self.group_size)
        return groups.sort(dim=-1, descending=True).values.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class ChannelGroupSort(GroupSort):
    """GroupSort across channels of images (B, C, H, W): at every pixel, each group of
    ``group_size`` consecutive channels is sorted (a permutation per pixel, so 1-Lipschitz and
    norm-preserving like :class:`GroupSort`)."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if c % self.group_size:
            raise ValueError(
                f"ChannelGroupSort(group_size={self.group_size}) needs a channel count divisible "
                f"by {self.group_size}, got {c}"
            )
        groups = x.reshape(b, c // self.group_size, self.group_size, h, w)
        return groups.sort(dim=2, descending=True).values.reshape(x.shape)


class Translate(nn.Module):
    """x -> x - offset, with x reshaped to the offset's shape per row (flattened for a flat
    offset): moves the data's centre to 0 (Lipschitz 1, norm unchanged)."""

    def __init__(self, offset: Tensor):
        super().__init__()
        self.register_buffer("offset", offset.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(len(x), *self.offset.shape) - self.offset


class _ConvNormCap(nn.Module):
    """Parametrization ``weight -> weight / max(1, ||conv(weight)||)`` of a stride-1 zero-padded
    convolution on ``input_hw`` images, so the layer's l2 operator norm stays <= 1 while it
    trains. The norm is that of the circular convolution on the padded grid (which contains
    the zero-padded one): the largest singular value of the kernel's 2-D DFT over the grid's
    frequencies (Sedghi, Gupta & Long 2019), differentiable. The certified bound of the
    trained network is computed afresh from the frozen weights
    (:func:`gmcert.encoders.spectral.spectral_lipschitz`), not taken from here."""

    def __init__(self, input_hw: tuple[int, int], padding: int):
        super().__init__()
        self.grid = (input_hw[0] + 2 * padding, input_hw[1] + 2 * padding)

    def forward(self, weight: Tensor) -> Tensor:
        spectrum = torch.fft.fft2(weight, s=self.grid).permute(2, 3, 0, 1)
        norm = torch.linalg.matrix_norm(spectrum, ord=2).max()
        return weight / norm.clamp_min(1.0)


def normalized_conv(c_in: int, c_out: int, input_hw: tuple[int, int]) -> nn.Conv2d:
    """A 3x3, stride-1, zero-padded ``nn.Conv2d`` whose operator norm on ``input_hw`` images
    is kept <= 1 while training (:class:`_ConvNormCap`); draws its initialisation from the
    global torch generator."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    parametrize.register_parametrization(conv, "weight", _ConvNormCap(input_hw, 1))
    return conv


def orthogonal_linear(in_features: int, out_features: int) -> nn.Linear:
    """An ``nn.Linear`` whose weight is orthogonal for every value of its free parameters
    (singular values all 1), with a free bias. Initialised from the layer's default random
    init, orthogonalised (so it draws from the global torch generator: seed it first)."""
    # The Cayley map costs one linear solve per step, several times cheaper than the matrix
    # exponential on the CPU; any orthogonal map gives the same guarantee.
    return orthogonal(nn.Linear(in_features, out_features), orthogonal_map="cayley")


def freeze_orthogonal(module: nn.Module) -> nn.Module:
    """Replace every parametrization in ``module`` (orthogonal, convolution norm cap) by the
    weight it currently produces, in place: plain ``nn.Linear`` / ``nn.Conv2d`` layers whose
    state dict holds the weights the forward pass uses (the bound is then computed from
    exactly these)."""
    for layer in module.modules():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
            # Contiguous, as a loaded state dict is: a transposed view takes other kernels,
            # whose rounding differs (1e-16), so cached and fresh encoders would not agree bit
            # for bit.
            layer.weight.data = layer.weight.data.contiguous()
    return module


def spectral_norm(weight: Tensor) -> float:
    """sigma_max(weight), by an exact SVD in float64 of the stored values."""
    return float(torch.linalg.svdvals(weight.detach().to("cpu", torch.float64))[0])


# Modules with Lipschitz constant 1 in l2 by construction (see the module docstring);
# PixelUnshuffle only moves pixels into channels (a permutation).
ONE_LIPSCHITZ = (GroupSort, Translate, nn.Identity, nn.PixelUnshuffle)  # GroupSort: both kinds


def lipschitz_bound(chain: nn.Sequential) -> float:
    """An l2 -> l2 Lipschitz bound of ``chain``: the product of its layers' bounds.

    ``nn.Linear``: sigma_max of the weight the layer holds (its orthogonal parametrization's
    current value when it still has one); :class:`GroupSort`, :class:`Translate`: 1. Raises
    ``ValueError`` for any other module, whose constant this function does not know.
    """
    bound = 1.0
    for index, layer in enumerate(chain):
        if isinstance(layer, nn.Linear):
            bound *= spectral_norm(layer.weight)
        elif not isinstance(layer, ONE_LIPSCHITZ):
            raise ValueError(
                f"lipschitz_bound: no known l2 Lipschitz constant for layer {index} "
                f"({type(layer).__name__}); use orthogonal_linear and GroupSort layers"
            )
    return bound
