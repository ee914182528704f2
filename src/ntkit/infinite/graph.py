"""Graph aggregation: the graph neural tangent kernel (GNTK) of Du et al. (2019).

Node features are ``(n, C, N)`` (channels first, ``N`` nodes as the one spatial axis) and
every example comes with a ``(N, N)`` pattern ``A`` (weighted adjacency, passed at call
time: ``arch.kernel(x1, x2, pattern1=A1, pattern2=A2)``, ``arch.build(...)(x, pattern=A)``).
As neural-tangents' ``stax.Aggregate`` (dense implementation), the layer replaces every
node by the weighted sum of its predecessors, ``y[:, j] = Σ_i x[:, i]·A[i, j]`` (``y = x @ A``;
add the identity to ``A`` for self-loops, scale rows/columns for Du et al.'s ``c_u``).

It is linear and has no parameters, so both kernels map as
``K'[j, j'] = Σ_{i, i'} A1[i, j]·K[i, i']·A2[i', j']`` — ``A1ᵀ K A2`` on the full node-by-node
covariance (Du et al. 2019, Sec. 4, the AGGREGATE step of the BLOCK operation). With
``Dense`` (on channels), activations and a ``GlobalSumPool`` readout this is the GNTK.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import NtkitError, ShapeError
from ..finite.graph import AggregateModule
from .layers import Layer, Shape, State, require_single
from .pooling import _require_full, _self_diagonal, _self_indices
from .state import is_zero_constant


def _pattern(side: dict | None) -> torch.Tensor:
    if not side or "pattern" not in side:
        raise NtkitError(
            "Aggregate needs the graphs' adjacency: pass arch.kernel(x1, x2, pattern1=A1, pattern2=A2) "
            "with (n, N, N) patterns (pattern2 only with x2)"
        )
    return side["pattern"]


class Aggregate(Layer):
    """Sum over each node's predecessors in a graph given at call time (module docstring).

    Inputs ``(n, C, N)``; patterns ``(n, N, N)``. Needs the full node-by-node covariance
    (evaluated on the engine's pair list, like pooling).
    """

    def needs_full_spatial(self) -> bool:
        return True

    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        if len(state.spatial) != 1:
            raise ShapeError(
                f"Aggregate expects node features (n, C, N) with one node axis, got spatial shape "
                f"{state.spatial}; reshape the inputs to (n, C, N)"
            )
        _require_full(state, self)
        if not state.diagonal:
            raise NtkitError("Aggregate needs the pair list of arch.kernel(...)")
        a1 = _pattern(state.side1).to(state.nngp.dtype)
        a2 = a1 if state.side2 is state.side1 else _pattern(state.side2).to(state.nngp.dtype)

        def aggregate(t: torch.Tensor) -> torch.Tensor:
            return a1.transpose(1, 2) @ t @ a2

        nngp = aggregate(state.nngp)
        ntk = None
        if state.ntk is state.nngp:
            ntk = nngp
        elif state.ntk is not None:  # a zero NTK (raw inputs) stays zero: no product
            ntk = state.ntk if is_zero_constant(state.ntk) else aggregate(state.ntk)
        i1, i2 = _self_indices(state, self)
        var1 = _self_diagonal(nngp, state.spatial, i1)
        var2 = var1 if i2 is i1 else _self_diagonal(nngp, state.spatial, i2)
        return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2)

    def build_module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
                     ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple) or len(in_shape) != 2:
            raise ShapeError(f"Aggregate expects node features (C, N) per example, got in_shape {in_shape}")
        return AggregateModule(), in_shape

    def __repr__(self) -> str:
        return "Aggregate()"
