"""Products of branches (neural-tangents' ``stax.FanInProd``).

For independent zero-mean branches ``f_1, …, f_k`` (each but at most one ending in its own
random affine layer after the ``FanOut``) the moments factorize:
``E[Π f_i(x) Π f_i(x')] = Π nngp_i`` and, by the product rule, the NTK of the product is
``Σ_i ntk_i Π_{j≠i} nngp_j``; the variances multiply. The product is not Gaussian: follow
it with a ``Dense``/``Conv`` before an activation (as in neural-tangents).
"""

from __future__ import annotations

import torch

from ..errors import ShapeError
from ..finite.combinators import FanInProdModule
from .layers import Layer, State


class FanInProd(Layer):
    """Multiplies the branches elementwise (after ``FanOut(k)`` and ``parallel``).

    Kernels: see the module docstring. All branches must share their shape.

    Raises:
        ShapeError: no branches, branches of different shapes, or more than one branch
            that does not end in a Dense/Conv (their product's moments do not factorize).
    """

    handles_masks = True

    def apply_kernel(self, state: State) -> State:
        if not isinstance(state, tuple):
            raise ShapeError("FanInProd needs branches; put FanOut(n) and parallel(...) before it")
        states = state
        not_fresh = sum(not s.fresh for s in states)
        if not_fresh > 1:
            raise ShapeError(
                f"FanInProd got {not_fresh} branches that do not end in a Dense/Conv layer; the "
                "moments of their product do not factorize. End all branches but one with a "
                "Dense/Conv (or GlobalSelfAttention)"
            )
        first = states[0]
        for s in states[1:]:
            if s.nngp.shape != first.nngp.shape or s.width != first.width:
                raise ShapeError(
                    f"FanInProd branches differ in shape (widths {first.width} and {s.width}); "
                    "give every branch the same width"
                )
        nngp = first.nngp
        ntk = first.ntk
        for s in states[1:]:
            if ntk is not None:
                ntk = ntk * s.nngp + nngp * s.ntk
            nngp = nngp * s.nngp
        same_vars = all(s.var2 is s.var1 for s in states)
        var1 = first.var1
        var2 = first.var2
        for s in states[1:]:
            var1 = var1 * s.var1
            var2 = var2 * s.var2
        return first.replace(
            nngp=nngp, ntk=ntk, var1=var1, var2=var1 if same_vars else var2,
            fresh=not_fresh == 0,
        )

    def build_module(self, in_shape, generator: torch.Generator, dtype: torch.dtype):
        if not isinstance(in_shape, list):
            raise ShapeError("FanInProd needs branches; put FanOut(n) and parallel(...) before it")
        if any(s != in_shape[0] for s in in_shape):
            raise ShapeError(f"FanInProd branches differ in shape: {in_shape}")
        return FanInProdModule(), in_shape[0]

    def __repr__(self) -> str:
        return "FanInProd()"
