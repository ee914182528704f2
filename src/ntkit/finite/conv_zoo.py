"""Finite transposed and locally connected convolutions (:mod:`ntkit.infinite.conv_zoo`).

NTK parameterization: weights and biases N(0, 1), scaled by ``W_std/√fan_in`` and ``b_std``,
``fan_in = C_in·|K|``. Shapes: ``(n, C, *spatial)`` with 1 to 3 spatial axes.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..spatial import geometry, transpose_padding
from .conv import check_images, pad_images

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


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
        check_images(x, "ConvTranspose", self.in_channels, d)
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
        check_images(x, "ConvLocal", self.in_channels, len(self.kernel_size))
        patches = window_patches(x, self.kernel_size, self.stride, self.padding)
        patches = patches.reshape(x.shape[0], self.fan_in, -1)
        out = torch.einsum("nfp,pof->nop", patches, self.weight)
        out = out * (float(self.W_std) / math.sqrt(self.fan_in))
        if self.bias is not None:
            out = out + float(self.b_std) * self.bias
        return out.reshape(x.shape[0], self.out_channels, *self.out_spatial)
