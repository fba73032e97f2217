"""Spectral (operator-norm) upper bounds on l2 Lipschitz constants of conv/pool/linear stacks.

``spectral_lipschitz(module, input_shape)`` is a true upper bound for the exact (real-arithmetic)
map, never an empirical estimate: the product over layers of per-layer operator norms, with
residual blocks bounded by ``L_shortcut + L_branch``.  Convolutions are not bounded by power
iteration on the operator (which converges from *below* and so can under-state the norm) but
through the circular convolution that contains them: a zero-padded, strided convolution is
``crop o strided-circular-conv o zero-embed`` on the padded grid, the outer maps have norm
<= 1, and the circular convolution is block-diagonalised by the 2-D DFT (Sedghi, Gupta & Long
2019; strides through a polyphase split), so its norm is the largest singular value of small
kernel-transform matrices over the grid frequencies.  That maximum is certified from above by
Cholesky factorisations in float64 (see ``_max_singular_value``), within ~1e-4 of its true
value.  BatchNorm (eval mode) is folded into the preceding convolution as a diagonal output
scaling; pooling and the resize are linear and separable, so their norms are products of
(tightly bounded) 1-D matrix norms; max pooling is bounded by the square root of the largest
number of windows that share one pixel.  Self-attention is not globally Lipschitz (Kim,
Papamakarios & Mnih 2021), so attention layers have no bound here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmcert.encoders.lipschitz_layers import ONE_LIPSCHITZ

# Relative slack multiplied onto every float64 norm computed below.  float64 eigen-solvers are
# accurate to ~1e-13 relative; 1e-6 makes certain that rounding never shrinks a bound.
_FLOAT64_SLACK = 1e-6
# Largest complex kernel-transform block held in memory at once (elements; 16 bytes each).
_MAX_TRANSFORM_ELEMENTS = 1 << 22


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (cpu when it has neither)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _max_singular_value(
    mats: Tensor, *, known_lower: float = 0.0, rtol: float = 1e-4, power_steps: int = 64
) -> tuple[float, float]:
    """Bracket max_b sigma_max(mats[b]) over a batch (..., m, n), float64 or complex128.

    Returns (upper, lower) with lower <= max_b sigma_max <= upper, typically
    upper <= lower * (1 + rtol).

    Power iteration alone would be dishonest here: it converges from *below*.  Instead it only
    proposes a level: with G_b the PSD Gram matrix of mats[b], mu >= lambda_max(G_b) exactly
    when mu * I - G_b is positive semi-definite, which a Cholesky factorisation certifies
    (backward-stable: success in float64 proves it up to a relative ~r * 1e-16 that the
    callers' slack covers).  So: power iteration gives Rayleigh quotients (true lower bounds),
    mu = max lower * (1 + rtol)^2 is tested for every matrix at once, and on failure the
    failing matrices are iterated further and mu is raised geometrically (so the loop always
    ends).  ``known_lower`` (a lower bound from other batches) lets this batch skip work.
    Batched matrix products and Cholesky are fast and stable on CPU and GPU, unlike batched
    Hermitian eigen-solvers.
    """
    m, n = mats.shape[-2:]
    g = mats.mH @ mats if m >= n else mats @ mats.mH
    g = g.reshape(-1, *g.shape[-2:])
    r = g.shape[-1]
    eye = torch.eye(r, dtype=g.dtype, device=g.device)
    gen = torch.Generator(device=g.device).manual_seed(0)  # reproducible bounds
    v = torch.randn(g.shape[0], r, 1, generator=gen, device=g.device, dtype=torch.float64)
    v = v.to(g.dtype)

    def iterate(gs: Tensor, vs: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        for _ in range(steps):
            vs = gs @ vs
            vs = vs / torch.linalg.vector_norm(vs, dim=(-2, -1), keepdim=True).clamp_min(1e-300)
        rayleigh = (vs.mH @ gs @ vs).real.flatten()  # unit vectors: a true lower bound
        return vs, rayleigh

    trace = torch.diagonal(g, dim1=-2, dim2=-1).real.sum(-1)
    # Propose the level from the matrices with the largest traces (trace >= lambda_max, so the
    # maximum is very likely among them); the Cholesky test below still checks every matrix.
    top = trace.topk(min(len(trace), 32)).indices
    v[top], rayleigh = iterate(g[top], v[top], power_steps)
    lower = max(known_lower**2, float(rayleigh.max()))
    mu = lower * (1 + rtol) ** 2
    rounds = 0
    while True:
        if mu <= 0:  # no positive Rayleigh quotient: every matrix is zero, or none was given
            if trace.numel() == 0 or float(trace.max()) <= 0:
                return 0.0, 0.0
            mu = float(trace.max()) * 1e-12
        # trace(G) >= lambda_max, so matrices with a small trace need no certificate.
        todo = trace > mu
        if bool(todo.any()):
            info = torch.linalg.cholesky_ex(mu * eye - g[todo]).info
            failed = todo.clone()
            failed[todo] = info != 0
        else:
            failed = todo
        if not bool(failed.any()):
            return math.sqrt(mu), math.sqrt(lower)
        v_f, rayleigh = iterate(g[failed], v[failed], power_steps)
        v[failed] = v_f
        lower = max(lower, float(rayleigh.max()))
        rounds += 1
        # Steps growing with the round count: the loop must end even if power iteration
        # stalls, while early rounds overshoot the true maximum by little.
        mu = max(lower * (1 + rtol) ** 2, mu * (1 + rtol) ** (2 * rounds))


def matrix_norm_bound(weight: Tensor) -> float:
    """Upper bound on the spectral norm of a 2-D matrix (within 1e-4 of exact)."""
    upper, _ = _max_singular_value(weight.detach().to(torch.float64))
    return upper * (1 + _FLOAT64_SLACK)


def _conv_padding(conv_padding: Any, kernel: int, dilation: int, index: int) -> int:
    """Total zero padding (both sides) that torch applies along one spatial dimension."""
    if isinstance(conv_padding, str):
        return 0 if conv_padding == "valid" else dilation * (kernel - 1)
    return 2 * int(_pair(conv_padding)[index])


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv2d_norm_bound(
    weight: Tensor,
    input_hw: tuple[int, int],
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    out_scale: Tensor | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Upper bound on the l2 operator norm of ``x -> out_scale * conv2d(x, weight, ...)``.

    For inputs (C_in, *input_hw), zero padding, any stride, dilation and groups; ``out_scale``
    (C_out,) is a diagonal output scaling (a folded BatchNorm).

    Why it is an upper bound: the zero-padded convolution equals ``crop o T o embed`` where
    ``embed`` zero-pads the input into an (N_h, N_w) grid at least as large as the padded input
    (N a multiple of the stride s), ``T`` is the strided *circular* convolution on that grid and
    ``crop`` keeps the outputs that did not wrap around; embed and crop have norm <= 1.  Split
    each axis of the grid into its s polyphase components x_r[m] = x[s m + r] (an orthogonal
    re-indexing); a tap at offset t = a * dilation = s q + r then reads x_r[i + q], so T is a
    stride-1 circular convolution on the (N/s)-grid with C_in * s_h * s_w input channels, which
    the 2-D DFT block-diagonalises.  Hence ||T|| = max over grid frequencies (u, v) of the top
    singular value of K(u, v)[o, (c, r_h, r_w)] = sum over taps with those residues of
    w[o, c, a, b] exp(-2 pi i (u q_a / M_h + v q_b / M_w)), bounded from above within ~1e-4
    by :func:`_max_singular_value` (float64).
    Frequencies with v > M_w / 2 are complex conjugates of others (same singular values) and
    are skipped; grouped convolutions are block-diagonal, so the max over groups is taken.
    """
    w = weight.detach().to(device=device, dtype=torch.float64)
    if out_scale is not None:
        w = w * out_scale.detach().to(w).view(-1, 1, 1, 1)
    c_out, c_in_g, kh, kw = w.shape
    w = w.view(groups, c_out // groups, c_in_g, kh, kw).to(torch.complex128)

    def axis_transform(axis: int, k: int, n_freq: int | None) -> Tensor:
        """(freqs, residues, taps) complex matrix: [r_a == r] * exp(-2 pi i u q_a / M)."""
        s, d = _pair(stride)[axis], _pair(dilation)[axis]
        n = input_hw[axis] + _conv_padding(padding, k, d, axis)
        offsets = [a * d for a in range(k)]
        residues = sorted({t % s for t in offsets})
        q = torch.tensor([t // s for t in offsets], dtype=torch.float64, device=w.device)
        # A kernel whose taps all fall on one polyphase position does not depend on the
        # frequency along this axis (1x1 convolutions collapse to a matrix norm).
        m = 1 if all(t // s == 0 for t in offsets) else -(-n // s)
        freqs = torch.arange(
            m if n_freq is None else m // 2 + 1, dtype=torch.float64, device=w.device
        )
        phase = torch.exp(torch.outer(freqs, q) * (-2j * math.pi / m))  # (U, k)
        mask = torch.tensor(
            [[t % s == r for t in offsets] for r in residues],
            dtype=torch.complex128,
            device=w.device,
        )  # (R, k)
        return phase[:, None, :] * mask[None, :, :]

    fh = axis_transform(0, kh, None)
    fw = axis_transform(1, kw, n_freq=0)  # half spectrum along the last axis
    per_u = fw.shape[0] * groups * (c_out // groups) * c_in_g * fh.shape[1] * fw.shape[1]
    chunk = max(1, _MAX_TRANSFORM_ELEMENTS // per_u)
    upper, lower = 0.0, 0.0
    for start in range(0, fh.shape[0], chunk):
        part = torch.einsum("upa,vqb,goiab->uvgoipq", fh[start : start + chunk], fw, w)
        part = part.reshape(*part.shape[:4], -1)  # (..., C_out/g, C_in/g * R_h * R_w)
        up, low = _max_singular_value(part, known_lower=lower)
        upper, lower = max(upper, up), max(lower, low)
    return upper * (1 + _FLOAT64_SLACK)


def _bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> Tensor:
    """Per-channel multiplier of an eval-mode BatchNorm (its bias is irrelevant to Lipschitz)."""
    if bn.training or bn.running_var is None:
        raise ValueError(
            f"{type(bn).__name__} in training mode (or without running statistics) depends on "
            "the batch, so it has no fixed Lipschitz constant; call .eval() on the network"
        )
    scale = 1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    return scale


def _separable_linear_norm(op: Callable[[Tensor, bool], Tensor], hw: tuple[int, int]) -> float:
    """Norm of a separable linear map on (C, H, W) images: ||A_H|| * ||A_W|| (an upper bound,
    within ~1e-4).

    ``op(x, along_h)`` applies the map along one spatial dimension to a float64 batch; feeding
    it the identity basis (n, 1, n, 1) or (n, 1, 1, n) yields the 1-D matrix column by column.
    """
    total = 1.0
    for along_h, n in ((True, hw[0]), (False, hw[1])):
        eye = torch.eye(n, dtype=torch.float64)
        basis = eye.view(n, 1, n, 1) if along_h else eye.view(n, 1, 1, n)
        cols = op(basis, along_h).reshape(n, -1)  # row j = image of basis vector j
        total *= _max_singular_value(cols.T)[0]
    return total * (1 + _FLOAT64_SLACK)


def bilinear_resize_norm(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> float:
    """Exact (up to slack) l2 norm of bilinear resizing source_hw -> target_hw.

    Matches ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``, which is
    separable: weights are products of per-axis weights.  1.0 when no resize happens.
    """
    if tuple(source_hw) == tuple(target_hw):
        return 1.0

    def op(x: Tensor, along_h: bool) -> Tensor:
        size = (target_hw[0], 1) if along_h else (1, target_hw[1])
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)

    return _separable_linear_norm(op, tuple(source_hw))


def _avgpool_norm(m: nn.AvgPool2d, hw: tuple[int, int]) -> float:
    if m.divisor_override is not None:
        raise ValueError("AvgPool2d with divisor_override is not supported by the spectral bound")
    (kh, kw), (sh, sw), (ph, pw) = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)

    def op(x: Tensor, along_h: bool) -> Tensor:
        k, s, p = ((kh, 1), (sh, 1), (ph, 0)) if along_h else ((1, kw), (1, sw), (0, pw))
        return F.avg_pool2d(
            x, k, s, p, ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad
        )

    return _separable_linear_norm(op, hw)


def _adaptive_avgpool_norm(m: nn.AdaptiveAvgPool2d, hw: tuple[int, int]) -> float:
    out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    oh, ow = (hw[0] if out[0] is None else out[0]), (hw[1] if out[1] is None else out[1])

    def op(x: Tensor, along_h: bool) -> Tensor:
        return F.adaptive_avg_pool2d(x, (oh, 1) if along_h else (1, ow))

    return _separable_linear_norm(op, hw)


def _window_coverage(n: int, k: int, s: int, p: int, d: int, n_out: int) -> int:
    """Largest number of pooling windows (along one axis) that contain the same index."""
    counts = [0] * n
    for i in range(n_out):
        for t in range(k):
            j = i * s - p + t * d
            if 0 <= j < n:
                counts[j] += 1
    return max(counts) if counts else 1


def _maxpool_norm(m: nn.MaxPool2d, hw: tuple[int, int], out_hw: tuple[int, int]) -> float:
    # |max_w a - max_w b| <= max_{i in w} |a_i - b_i|, so the squared output change is at most
    # sum_w sum_{i in w} |d_i|^2 <= (max windows per pixel) * ||d||^2.
    (kh, kw), (sh, sw) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size)
    (ph, pw), (dh, dw) = _pair(m.padding), _pair(m.dilation)
    cov = _window_coverage(hw[0], kh, sh, ph, dh, out_hw[0]) * _window_coverage(
        hw[1], kw, sw, pw, dw, out_hw[1]
    )
    return math.sqrt(cov)


def _resnet_chain(m: nn.Module) -> list[nn.Module]:
    # Mirrors torchvision.models.ResNet._forward_impl.
    return [
        m.conv1,
        m.bn1,
        m.relu,
        m.maxpool,
        m.layer1,
        m.layer2,
        m.layer3,
        m.layer4,
        m.avgpool,
        nn.Flatten(1),
        m.fc,
    ]


def _block_parts(m: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(branch, shortcut) of a torchvision BasicBlock / Bottleneck (mirrors their forward)."""
    branch = [m.conv1, m.bn1, m.relu, m.conv2, m.bn2]
    if hasattr(m, "conv3"):
        branch += [m.relu, m.conv3, m.bn3]
    shortcut = [m.downsample] if m.downsample is not None else []
    return branch, shortcut


@torch.no_grad()
def _output_shape(modules: Sequence[nn.Module], shape: tuple[int, ...], device) -> tuple[int, ...]:
    dtype = next((p.dtype for m in modules for p in m.parameters()), torch.float32)
    x = torch.zeros((1, *shape), device=device, dtype=dtype)
    for mod in modules:
        x = mod(x)
    return tuple(x.shape[1:])


_ONE_LIPSCHITZ = (nn.ReLU, nn.Identity, nn.Flatten, nn.Dropout, nn.ReLU6)


def _chain_bound(
    modules: Sequence[nn.Module], shape: tuple[int, ...], device
) -> tuple[float, tuple]:
    """Bound for modules applied in sequence: the product of the per-module bounds."""
    total, i = 1.0, 0
    mods = list(modules)
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        # Folding BN into the preceding affine layer bounds the pair by one norm, tighter than
        # the product of the two.
        if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            bound, used = _conv_bound(m, shape, _bn_scale(nxt), device), 2
        elif isinstance(m, nn.Linear) and isinstance(nxt, nn.BatchNorm1d):
            scale = _bn_scale(nxt).to(device).view(-1, 1)
            bound, used = matrix_norm_bound(m.weight.to(device).double() * scale), 2
        else:
            bound, shape_out = _module_bound(m, shape, device)
            total *= bound
            shape, i = shape_out, i + 1
            continue
        total *= bound
        shape = _output_shape(mods[i : i + used], shape, device)
        i += used
    return total, shape


def _conv_bound(m: nn.Conv2d, shape: tuple[int, ...], out_scale: Tensor | None, device) -> float:
    if m.padding_mode != "zeros":
        raise ValueError(
            f"Conv2d with padding_mode={m.padding_mode!r} is not supported by the spectral "
            "bound (only zero padding)"
        )
    if len(shape) != 3:
        raise ValueError(f"Conv2d expects (C, H, W) inputs, got shape {shape}")
    return conv2d_norm_bound(
        m.weight,
        (shape[1], shape[2]),
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        groups=m.groups,
        out_scale=out_scale,
        device=device,
    )


def _module_bound(m: nn.Module, shape: tuple[int, ...], device) -> tuple[float, tuple]:
    """(Lipschitz upper bound, output shape) for one module on inputs of ``shape`` (no batch)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    if isinstance(m, ResNet):
        return _chain_bound(_resnet_chain(m), shape, device)
    if isinstance(m, (BasicBlock, Bottleneck)):
        branch, shortcut = _block_parts(m)
        l_branch, _ = _chain_bound(branch, shape, device)
        l_short, _ = _chain_bound(shortcut, shape, device) if shortcut else (1.0, None)
        # relu(branch(x) + shortcut(x)): the sum is (L_branch + L_shortcut)-Lipschitz and ReLU
        # is 1-Lipschitz.
        return l_branch + l_short, _output_shape([m], shape, device)
    if isinstance(m, nn.Sequential):
        return _chain_bound(list(m), shape, device)
    out = _output_shape([m], shape, device)
    if isinstance(m, (*_ONE_LIPSCHITZ, *ONE_LIPSCHITZ)):
        return 1.0, out
    if isinstance(m, nn.LeakyReLU):
        return max(1.0, abs(m.negative_slope)), out
    if isinstance(m, nn.Conv2d):
        return _conv_bound(m, shape, None, device), out
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return float(_bn_scale(m).abs().max()) * (1 + _FLOAT64_SLACK), out
    if isinstance(m, nn.Linear):
        return matrix_norm_bound(m.weight.to(device)), out
    if isinstance(m, nn.MaxPool2d):
        return _maxpool_norm(m, shape[1:], out[1:]), out
    if isinstance(m, nn.AvgPool2d):
        return _avgpool_norm(m, shape[1:]), out
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return _adaptive_avgpool_norm(m, shape[1:]), out
    raise ValueError(
        f"no honest Lipschitz bound is implemented for {type(m).__name__}; spectral bounds "
        "cover Conv2d (zero padding), BatchNorm (eval), Linear, ReLU/LeakyReLU, Max/Avg/"
        "AdaptiveAvg pooling, Flatten, Dropout (eval), PixelUnshuffle, gmcert's GroupSort "
        "layers, Sequential and torchvision ResNets. "
        "Declare a bound instead (encoder.lipschitz=<float>) or leave it null."
    )


def spectral_lipschitz(
    module: nn.Module,
    input_shape: Sequence[int],
    *,
    device: torch.device | str | None = None,
) -> float:
    """Honest upper bound on the l2 -> l2 Lipschitz constant of ``module`` (in eval mode).

    Args:
        module: a supported network (see :func:`_module_bound`'s list): plain
            conv/BN/ReLU/pool/linear stacks and torchvision ResNets.
        input_shape: (C, H, W) of one input, without the batch dimension (conv norms depend
            on the spatial size).
        device: where to run the float64 computations (default: the module's device).
    Returns:
        L such that ||module(x) - module(x')||_2 <= L ||x - x'||_2 for all inputs of that shape,
        in exact arithmetic (float32 rounding of the forward pass itself is not covered).
    Raises:
        ValueError: for layers without an implemented honest bound, or BN in training mode.
    """
    if device is None:
        device = module_device(module)
    batch_dependent = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    if any(isinstance(sub, batch_dependent) and sub.training for sub in module.modules()):
        raise ValueError(
            f"{type(module).__name__} is in training mode; call .eval() first (BatchNorm and "
            "Dropout are only fixed maps in eval mode)"
        )
    bound, _ = _module_bound(module, tuple(int(s) for s in input_shape), device)
    return float(bound)


__all__ = [
    "bilinear_resize_norm",
    "conv2d_norm_bound",
    "matrix_norm_bound",
    "module_device",
    "spectral_lipschitz",
]
