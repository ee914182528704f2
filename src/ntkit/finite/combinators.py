"""Finite combinators that ``serial``/``parallel``/``FanOut``/``FanIn*`` build.

Branches (after ``FanOut``) travel as tuples of tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def call_with_mask(module: nn.Module, x, mask: torch.Tensor | None, pattern: torch.Tensor | None = None):
    """``module(x, mask=..., pattern=...)`` with the side inputs the module takes.

    ``takes_mask``: masks of absent positions; ``takes_pattern``: graph patterns (Aggregate).
    """
    kwargs = {}
    if mask is not None and getattr(module, "takes_mask", False):
        kwargs["mask"] = mask
    if pattern is not None and getattr(module, "takes_pattern", False):
        kwargs["pattern"] = pattern
    return module(x, **kwargs)


class Serial(nn.Sequential):
    """Modules applied one after the other (branches pass through as tuples).

    ``forward(x, mask=None)``: a boolean ``(n, *S)`` mask of absent positions (True =
    absent) is handed to every module that takes one (attention, pooling, normalization).
    """

    takes_mask = True
    takes_pattern = True

    def forward(self, x, mask: torch.Tensor | None = None, pattern: torch.Tensor | None = None):
        for module in self:
            x = call_with_mask(module, x, mask, pattern)
        return x


class Parallel(nn.Module):
    """Applies the i-th module to the i-th branch (passing the mask on, as :class:`Serial`)."""

    takes_mask = True
    takes_pattern = True

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(modules)

    def forward(self, xs: tuple[torch.Tensor, ...], mask: torch.Tensor | None = None,
                pattern: torch.Tensor | None = None) -> tuple:
        return tuple(call_with_mask(m, x, mask, pattern) for m, x in zip(self.branches, xs))


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
    """Concatenates the branches along ``axis`` of the batched array (1: channels)."""

    def __init__(self, axis: int = 1) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


class FanInProdModule(nn.Module):
    """Multiplies the branches elementwise."""

    def forward(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out
