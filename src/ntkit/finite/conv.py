"""The finite convolution that :class:`ntkit.infinite.Conv` builds, and its padding.

The module matches the infinite-width layer of :mod:`ntkit.infinite.conv` in the same
parameterization and with exactly the same padding geometry (:mod:`ntkit.spatial`), so that
the empirical kernels of the finite net converge to ``arch.kernel`` as the channel counts
grow. Shapes: ``(n, C, *spatial)`` with 1 to 3 spatial axes (NCL, NCHW, NCDHW).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ShapeError
from ..spatial import geometry

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def pad_images(
    x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: str
) -> torch.Tensor:
    """Pad ``x (n, C, *S)`` so that an unpadded window op gives the geometry of ``padding``.

    Zeros for ``"same"`` (none for ``"valid"``), wrap-around for ``"circular"`` (by index,
    so any window size works).
    """
    if padding == "valid":
        return x
    spatial = x.shape[2:]
    if padding == "circular":
        for d, (n, k, s) in enumerate(zip(spatial, kernel, stride)):
            _, left, right = geometry(n, k, s, padding)
            if left or right:
                idx = torch.arange(-left, n + right, device=x.device) % n
                x = x.index_select(2 + d, idx)
        return x
    pads: list[int] = []
    for n, k, s in reversed(list(zip(spatial, kernel, stride))):
        _, left, right = geometry(n, k, s, padding)
        pads += [left, right]
    return F.pad(x, pads) if any(pads) else x


def check_images(x: torch.Tensor, what: str, channels: int | None, ndim: int) -> None:
    """Raise ShapeError unless ``x`` is ``(n, channels, *S)`` with ``ndim`` spatial axes
    (any channel count when ``channels`` is None)."""
    if x.ndim != 2 + ndim or (channels is not None and x.shape[1] != channels):
        want = f"(n, {channels if channels is not None else 'C'}, <{ndim} spatial axes>)"
        raise ShapeError(f"{what} expects inputs of shape {want}, got {tuple(x.shape)}")


class NTKConv(nn.Module):
    """Convolution ``z = (W_std/√fan_in)·W ⋆ x + b_std·b``, ``fan_in = C_in·prod(kernel)``.

    NTK parameterization with ``W, b ~ N(0, 1)`` (default); ``parameterization="standard"``
    stores ``W ~ N(0, W_std²/fan_in)`` and ``b ~ N(0, b_std²)`` and computes ``W ⋆ x + b``.
    ``weight``: ``(C_out, C_in, *kernel)``. Shapes: ``(n, C_in, *S) -> (n, C_out, *S_out)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        *,
        stride: tuple[int, ...],
        padding: str,
        W_std: float,
        b_std: float | None,
        parameterization: str,
        generator: torch.Generator,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), padding
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        self.fan_in = in_channels * math.prod(self.kernel_size)
        weight = torch.randn(out_channels, in_channels, *self.kernel_size, generator=generator, dtype=dtype)
        bias = torch.randn(out_channels, generator=generator, dtype=dtype) if b_std is not None else None
        if parameterization == "standard":
            weight = weight * (float(W_std) / math.sqrt(self.fan_in))
            bias = bias * float(b_std) if bias is not None else None
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.kernel_size)
        check_images(x, "NTKConv", self.in_channels, d)
        x = pad_images(x, self.kernel_size, self.stride, self.padding)
        conv = _CONV[d]
        if self.parameterization == "standard":
            return conv(x, self.weight, self.bias, stride=self.stride)
        out = conv(x, self.weight, stride=self.stride) * (self.W_std / math.sqrt(self.fan_in))
        if self.bias is not None:
            out = out + self.b_std * self.bias.reshape(-1, *([1] * d))
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding!r}, W_std={self.W_std}, "
            f"b_std={self.b_std}, parameterization={self.parameterization!r}"
        )
