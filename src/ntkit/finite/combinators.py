"""Finite combinators that ``serial``/``parallel``/``FanOut``/``FanIn*`` build.

Branches (after ``FanOut``) travel as tuples of tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Serial(nn.Sequential):
    """Modules applied one after the other (branches pass through as tuples)."""


class Parallel(nn.Module):
    """Applies the i-th module to the i-th branch."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(modules)

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(m(x) for m, x in zip(self.branches, xs))


class FanOutModule(nn.Module):
    """Copies its input into ``n`` branches."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x,) * self.n


class FanInSumModule(nn.Module):
    """Sums the branches."""

    def forward(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class FanInConcatModule(nn.Module):
    """Concatenates the branches along the feature/channel axis (axis 1)."""

    def forward(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat(xs, dim=1)
