"""Finite image resizing (:mod:`ntkit.infinite.resize`)."""

from __future__ import annotations

import torch
from torch import nn

from .conv import check_images


class ResizeModule(nn.Module):
    """Applies one resize matrix per spatial axis: ``(n, C, *S) -> (n, C, *S_out)``."""

    def __init__(self, matrices) -> None:
        super().__init__()
        self.matrices = [m.clone() for m in matrices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "ImageResize", None, len(self.matrices))
        for i, m in enumerate(self.matrices):
            x = torch.movedim(torch.tensordot(x, m.to(x), dims=([2 + i], [1])), -1, 2 + i)
        return x
