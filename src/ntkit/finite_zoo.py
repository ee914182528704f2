"""Finite modules of issue 17's layers (sum pooling, transposed and local convolutions,
resizing, concatenation along any axis, graph aggregation) that ``arch.build`` assembles.

Each matches one infinite-width layer with exactly the same geometry, so the empirical
kernels of the finite net converge to ``arch.kernel`` as the channel counts grow (NTK
parameterization: weights and biases N(0, 1), scaled by ``W_std/√fan_in`` and ``b_std``).
Shapes: ``(n, C, *spatial)`` with 1 to 3 spatial axes.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ShapeError
from .finite.conv import pad_images
from .spatial import geometry

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _check(x: torch.Tensor, what: str, ndim: int, channels: int | None = None) -> None:
    if x.ndim != 2 + ndim or (channels is not None and x.shape[1] != channels):
        want = f"(n, {channels if channels is not None else 'C'}, <{ndim} spatial axes>)"
        raise ShapeError(f"{what} expects inputs of shape {want}, got {tuple(x.shape)}")


def window_patches(x: torch.Tensor, kernel, stride, padding: str) -> torch.Tensor:
    """``(n, C, |K|, *S_out)``: the input under each window offset (padded as ``padding``)."""
    spatial = x.shape[2:]
    out = [geometry(n, k, s, padding)[0] for n, k, s in zip(spatial, kernel, stride)]
    x = pad_images(x, kernel, stride, padding)
    patches = []
    for offset in itertools.product(*[range(k) for k in kernel]):
        index = [slice(None), slice(None)]
        index += [slice(o, o + s * (m - 1) + 1, s) for o, s, m in zip(offset, stride, out)]
        patches.append(x[tuple(index)])
    return torch.stack(patches, dim=2)


class WindowPoolModule(nn.Module):
    """Window sums (``mode="sum"``) or means over the in-image positions (``"mean_covered"``).

    Shapes: ``(n, C, *S) -> (n, C, *S_out)``.
    """

    def __init__(self, kernel_size, stride, padding: str, mode: str) -> None:
        super().__init__()
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.mode = padding, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, "pooling", len(self.kernel_size))
        summed = window_patches(x, self.kernel_size, self.stride, self.padding).sum(2)
        if self.mode == "sum":
            return summed
        ones = x.new_ones((1, 1, *x.shape[2:]))
        counts = window_patches(ones, self.kernel_size, self.stride, self.padding).sum(2)
        return summed / counts

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
                f"mode={self.mode!r}")


class GlobalSumPoolModule(nn.Module):
    """Sum over all spatial positions: ``(n, C, *S) -> (n, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3:
            raise ShapeError(f"GlobalSumPool expects (n, C, *spatial), got {tuple(x.shape)}")
        return x.sum(dim=tuple(range(2, x.ndim)))


def transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """``(before, after)`` zero padding of the stride-dilated input of a transposed convolution.

    The geometry of ``jax.lax.conv_transpose`` (used by neural-tangents): ``"same"`` gives
    ``n·s`` outputs, ``"valid"`` gives ``n·s + max(k − s, 0)``.
    """
    if padding == "same":
        total = k + s - 2
        before = k - 1 if s > k - 1 else -(-total // 2)
    else:
        total = k + s - 2 + max(k - s, 0)
        before = k - 1
    return before, total - before


def dilate_and_pad(t: torch.Tensor, axes, n: int, k: int, s: int, padding: str) -> torch.Tensor:
    """Insert ``s − 1`` zeros between positions along ``axes``, then pad for ``padding``."""
    before, after = transpose_padding(k, s, padding)
    m = (n - 1) * s + 1
    for a in axes:
        shape = list(t.shape)
        shape[a] = before + m + after
        out = t.new_zeros(shape)
        index = [slice(None)] * t.ndim
        index[a] = slice(before, before + m, s)
        out[tuple(index)] = t
        t = out
    return t


class ConvTransposeModule(nn.Module):
    """Transposed convolution ``(W_std/√(C_in·|K|))·W ⋆ dilate(x) + b_std·b`` (NTK param.).

    ``weight`` ``(C_out, C_in, *kernel)``; geometry of :func:`transpose_padding`.
    Shapes: ``(n, C_in, *S) -> (n, C_out, *S_out)``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, W_std, b_std,
                 generator, dtype):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), padding
        self.W_std, self.b_std = W_std, b_std
        self.fan_in = in_channels * math.prod(self.kernel_size)
        self.weight = nn.Parameter(
            torch.randn(out_channels, in_channels, *self.kernel_size, generator=generator, dtype=dtype))
        self.bias = None if b_std is None else nn.Parameter(
            torch.randn(out_channels, generator=generator, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.kernel_size)
        _check(x, "ConvTranspose", d, self.in_channels)
        for i, (k, s) in enumerate(zip(self.kernel_size, self.stride)):
            x = dilate_and_pad(x, [2 + i], x.shape[2 + i], k, s, self.padding)
        out = _CONV[d](x, self.weight) * (float(self.W_std) / math.sqrt(self.fan_in))
        if self.bias is not None:
            out = out + float(self.b_std) * self.bias.reshape(-1, *([1] * d))
        return out


class LocalConvModule(nn.Module):
    """Locally connected layer: a convolution with its own weights at every output position.

    ``weight`` ``(P_out, C_out, C_in·|K|)``, ``bias`` ``(C_out, P_out)`` (unshared too);
    ``z = (W_std/√(C_in·|K|))·Σ W·patch + b_std·b``. Shapes: ``(n, C_in, *S) -> (n, C_out, *S_out)``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, out_spatial,
                 W_std, b_std, generator, dtype):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), padding
        self.out_spatial = tuple(out_spatial)
        self.W_std, self.b_std = W_std, b_std
        self.fan_in = in_channels * math.prod(self.kernel_size)
        positions = math.prod(self.out_spatial)
        self.weight = nn.Parameter(
            torch.randn(positions, out_channels, self.fan_in, generator=generator, dtype=dtype))
        self.bias = None if b_std is None else nn.Parameter(
            torch.randn(out_channels, positions, generator=generator, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, "ConvLocal", len(self.kernel_size), self.in_channels)
        patches = window_patches(x, self.kernel_size, self.stride, self.padding)
        patches = patches.reshape(x.shape[0], self.fan_in, -1)
        out = torch.einsum("nfp,pof->nop", patches, self.weight)
        out = out * (float(self.W_std) / math.sqrt(self.fan_in))
        if self.bias is not None:
            out = out + float(self.b_std) * self.bias
        return out.reshape(x.shape[0], self.out_channels, *self.out_spatial)


class ResizeModule(nn.Module):
    """Applies one resize matrix per spatial axis: ``(n, C, *S) -> (n, C, *S_out)``."""

    def __init__(self, matrices) -> None:
        super().__init__()
        self.matrices = [m.clone() for m in matrices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, "ImageResize", len(self.matrices))
        for i, m in enumerate(self.matrices):
            x = torch.movedim(torch.tensordot(x, m.to(x), dims=([2 + i], [1])), -1, 2 + i)
        return x


class ConcatModule(nn.Module):
    """Concatenates the branches along ``axis`` of the batched array (1 = channels)."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


class ScaledStandardDense(nn.Module):
    """Standard-parameterization affine layer with width scalings (Sohl-Dickstein et al. 2020).

    ``z = W x/√s_in + b`` with ``W ~ N(0, W_std²·s_in/in_features)``, ``b ~ N(0, b_std²)``
    (neural-tangents' ``Dense(parameterization="standard", s=(s_in, s_out))``; the caller
    passes ``out_features = s_out·width``). Shapes: ``(n, in_features, *S) -> (n, out_features, *S)``.
    """

    def __init__(self, in_features, out_features, s_in, W_std, b_std, generator, dtype):
        super().__init__()
        self.in_features, self.out_features, self.s_in = in_features, out_features, s_in
        std = float(W_std) * math.sqrt(s_in / in_features)
        weight = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
        self.weight = nn.Parameter(weight * std)
        self.bias = None if b_std is None else nn.Parameter(
            torch.randn(out_features, generator=generator, dtype=dtype) * float(b_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.movedim(torch.movedim(x, 1, -1) @ self.weight.T / math.sqrt(self.s_in), -1, 1)
        if self.bias is not None:
            out = out + self.bias.reshape(-1, *([1] * (x.ndim - 2)))
        return out


class AggregateModule(nn.Module):
    """Graph aggregation ``y = x @ A``: ``(n, C, N)`` features, ``(n, N, N)`` pattern at call time."""

    takes_pattern = True

    def forward(self, x: torch.Tensor, pattern: torch.Tensor | None = None) -> torch.Tensor:
        if pattern is None:
            raise ShapeError("Aggregate needs the graphs' adjacency: call net(x, pattern=A) with A (n, N, N)")
        if x.ndim != 3 or pattern.shape != (x.shape[0], x.shape[2], x.shape[2]):
            raise ShapeError(
                f"Aggregate expects x (n, C, N) and pattern (n, N, N), got {tuple(x.shape)} and "
                f"{tuple(pattern.shape)}"
            )
        return x @ pattern.to(x.dtype)
