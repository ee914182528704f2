"""Finite sum pooling and edge-normalized average pooling (:mod:`ntkit.infinite.sum_pooling`)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ShapeError
from .conv import check_images
from .conv_zoo import window_patches


class WindowPoolModule(nn.Module):
    """Window sums (``mode="sum"``) or means over the in-image positions (``"mean_covered"``).

    Shapes: ``(n, C, *S) -> (n, C, *S_out)``.
    """

    def __init__(self, kernel_size, stride, padding: str, mode: str) -> None:
        super().__init__()
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.mode = padding, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "pooling", None, len(self.kernel_size))
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
