"""The finite elementwise module that the activation layers of :mod:`ntkit.infinite` build."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Elementwise(nn.Module):
    """Applies an elementwise function (an activation) to a tensor."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        super().__init__()
        self.fn, self.name = fn, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name
