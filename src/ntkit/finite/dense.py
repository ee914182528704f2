"""The finite affine layer that :class:`ntkit.infinite.Dense` builds."""

from __future__ import annotations

import math

import torch
from torch import nn


class NTKDense(nn.Module):
    """Affine layer ``z = (W_std/√fan_in)·W x + b_std·b`` (NTK parameterization).

    With ``parameterization="standard"``, ``z = W x + b`` with ``W ~ N(0, W_std²/fan_in)``
    and ``b ~ N(0, b_std²)`` stored directly (Sohl-Dickstein et al. 2020).
    Shapes: ``(n, in_features) -> (n, out_features)``; on ``(n, in_features, *S)`` it acts
    on the channel axis at every position (a 1×1 convolution): ``-> (n, out_features, *S)``.
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
        if x.ndim > 2:  # channels first: act on axis 1 at every position
            return self._linear(x.movedim(1, -1)).movedim(-1, 1)
        return self._linear(x)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
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


class ScaledStandardDense(nn.Module):
    """Standard-parameterization affine layer with width scalings (Sohl-Dickstein et al. 2020).

    ``z = W x/√s_in + b`` with ``W ~ N(0, W_std²·s_in/in_features)``, ``b ~ N(0, b_std²)``
    (neural-tangents' ``Dense(parameterization="standard", s=(s_in, s_out))``; the caller
    passes ``out_features = s_out·width``). Shapes: ``(n, in_features, *S) -> (n, out_features, *S)``.
    """

    def __init__(self, in_features, out_features, s_in, W_std, b_std, generator, dtype):
        super().__init__()
        self.in_features, self.out_features, self.s_in = in_features, out_features, s_in
        std = float(W_std) * math.sqrt(s_in / in_features)
        weight = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
        self.weight = nn.Parameter(weight * std)
        self.bias = None if b_std is None else nn.Parameter(
            torch.randn(out_features, generator=generator, dtype=dtype) * float(b_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.movedim(torch.movedim(x, 1, -1) @ self.weight.T / math.sqrt(self.s_in), -1, 1)
        if self.bias is not None:
            out = out + self.bias.reshape(-1, *([1] * (x.ndim - 2)))
        return out
