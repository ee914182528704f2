"""Sum pooling (neural-tangents' ``SumPool`` and ``GlobalSumPool``).

A window sum ``y(p) = Σ_o x(s·p + o − left)`` of a pair of images maps the full spatial
covariance as ``K'[p, p'] = Σ_{o, o'} K[s·p + o, s·p' + o']`` — average pooling without the
``1/|K|²`` (Novak et al. 2019). ``GlobalSumPool``: ``K' = Σ_{p, p'} K[p, p']`` (the sum
readout of Du et al. 2019's graph NTK). The NTK maps the same way (no parameters).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ShapeError
from ..finite.sum_pooling import GlobalSumPoolModule
from .layers import Shape, State, require_single
from .pooling import AvgPool, GlobalAvgPool


class SumPool(AvgPool):
    """Window sums over ``kernel_size`` with ``stride`` (``None``: the window) and ``padding``.

    ``padding``: ``"valid"`` (default), ``"same"`` (zeros) or ``"circular"``. In the NNGP,
    ``SumPool = AvgPool × |window|²``. Needs the full spatial covariance.
    """

    _sum = True

    def __init__(self, kernel_size, stride=None, padding: str = "valid") -> None:
        super().__init__(kernel_size, stride, padding)


class GlobalSumPool(GlobalAvgPool):
    """Sum over all positions: ``(N, *S, *S) -> (N,)``, ``K' = Σ_{p, p'} K[p, p']``.

    The graph readout of Du et al. (2019); ``= GlobalAvgPool × prod(S)²``.
    """

    handles_masks = False

    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        factor = float(math.prod(state.spatial) ** 2)
        out = super().apply_kernel(state)
        nngp = out.nngp * factor
        ntk = None if out.ntk is None else (nngp if out.ntk is out.nngp else out.ntk * factor)
        var1 = out.var1 * factor
        var2 = var1 if out.var2 is out.var1 else out.var2 * factor
        return out.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2)

    def build_module(
        self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple) or len(in_shape) < 2:
            raise ShapeError(f"GlobalSumPool expects images (C, *spatial), got in_shape {in_shape}")
        return GlobalSumPoolModule(), (in_shape[0],)

    def __repr__(self) -> str:
        return "GlobalSumPool()"
