"""Finite layer normalization that :class:`ntkit.infinite.normalization.LayerNorm` builds.

Shapes: ``(n, C, *S)`` or ``(n, d)``; masks ``(n, *S)`` bool, True = position absent.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNormModule(nn.Module):
    """``(x − mean)/√(eps + var)`` over ``axes`` of the batched input (biased variance).

    With a ``mask`` and spatial axes among ``axes``, absent positions are left out of the
    mean and the variance (their outputs are computed but meaningless).
    Shapes: ``(n, C, *S) -> (n, C, *S)`` or ``(n, d) -> (n, d)``.
    """

    takes_mask = True

    def __init__(self, axes: tuple[int, ...], eps: float) -> None:
        super().__init__()
        self.axes, self.eps = tuple(axes), float(eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        dims = self.axes
        if mask is None or not any(a >= 2 for a in dims):
            mean = x.mean(dims, keepdim=True)
            var = (x - mean).square().mean(dims, keepdim=True)
        else:
            weight = (~mask).unsqueeze(1).to(x.dtype).expand_as(x)
            count = weight.sum(dims, keepdim=True)
            mean = (x * weight).sum(dims, keepdim=True) / count
            var = ((x - mean).square() * weight).sum(dims, keepdim=True) / count
        return (x - mean) * torch.rsqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"axes={self.axes}, eps={self.eps}"
