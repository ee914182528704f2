"""Finite ``nn.Module`` building blocks that ``arch.build`` assembles.

Each module matches one infinite-width layer in the same parameterization, so that the
empirical kernels of the finite net converge to ``arch.kernel`` as the widths grow.
Branches (after ``FanOut``) travel as tuples of tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


class NTKDense(nn.Module):
    """Affine layer ``z = (W_std/√fan_in)·W x + b_std·b`` (NTK parameterization).

    With ``parameterization="standard"``, ``z = W x + b`` with ``W ~ N(0, W_std²/fan_in)``
    and ``b ~ N(0, b_std²)`` stored directly (Sohl-Dickstein et al. 2020).
    Shapes: ``(n, in_features) -> (n, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        W_std: float,
        b_std: float | None,
        parameterization: str,
        generator: torch.Generator,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        weight = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
        bias = (
            torch.randn(out_features, generator=generator, dtype=dtype)
            if b_std is not None else None
        )
        if parameterization == "standard":
            weight = weight * (W_std / math.sqrt(in_features))
            bias = bias * b_std if bias is not None else None
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "standard":
            return nn.functional.linear(x, self.weight, self.bias)
        out = nn.functional.linear(x, self.weight) * (self.W_std / math.sqrt(self.in_features))
        if self.bias is not None:
            out = out + self.b_std * self.bias
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, W_std={self.W_std}, b_std={self.b_std}, "
            f"parameterization={self.parameterization!r}"
        )


class Elementwise(nn.Module):
    """Applies an elementwise function (an activation) to a tensor."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        super().__init__()
        self.fn, self.name = fn, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


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
