"""Finite pooling and flattening modules that the layers of :mod:`ntkit.infinite.pooling` build.

Same padding geometry as the infinite-width layers (:mod:`ntkit.spatial`).
Shapes: ``(n, C, *spatial)`` with 1 to 3 spatial axes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ShapeError
from .conv import check_images, pad_images

_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class AvgPoolModule(nn.Module):
    """Average over windows, padded positions counted as zeros (or wrapped, ``"circular"``).

    Shapes: ``(n, C, *S) -> (n, C, *S_out)``.
    """

    def __init__(self, kernel_size: tuple[int, ...], stride: tuple[int, ...], padding: str) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.kernel_size)
        check_images(x, "AvgPool", None, d)
        x = pad_images(x, self.kernel_size, self.stride, self.padding)
        return _AVG_POOL[d](x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"


class GlobalAvgPoolModule(nn.Module):
    """Mean over all spatial positions: ``(n, C, *S) -> (n, C)``.

    With ``mask`` (bool ``(n, *S)``, True = absent) the mean runs over present positions.
    """

    takes_mask = True

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim < 3:
            raise ShapeError(f"GlobalAvgPool expects images (n, C, *spatial), got {tuple(x.shape)}")
        dims = tuple(range(2, x.ndim))
        if mask is None:
            return x.mean(dim=dims)
        weight = (~mask).unsqueeze(1).to(x.dtype)
        return (x * weight).sum(dims) / weight.sum(dims)


class FlattenModule(nn.Module):
    """Channels and positions into one feature axis: ``(n, C, *S) -> (n, C·prod(S))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)
