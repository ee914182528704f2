"""Finite graph aggregation (:mod:`ntkit.infinite.graph`)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ShapeError


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
