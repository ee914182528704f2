"""Layer normalization of infinitely many channels (neural-tangents' ``LayerNorm``).

A finite layer normalizes each example over the axes ``A`` (which include the channel axis):
``y = (x − mean_A x) / √(eps + var_A x)``. With infinitely many channels of a zero-mean
Gaussian process the channel mean vanishes and the variance over ``A`` converges to the
mean of the per-channel variances ``q(p)`` over the positions in ``A``, a deterministic
function of the example (Xu et al. 2019; Hron et al. 2020, Sec. 3; neural-tangents'
``stax.LayerNorm``). Writing ``m1(p) = eps + mean_{p'∈A(p)} q1(p')`` for the left example and
``m2`` for the right one, the kernels map as

    nngp'[p, p'] = nngp[p, p'] / √(m1(p)·m2(p')),    ntk'[p, p'] = ntk[p, p'] / √(m1(p)·m2(p')),

and the variances as ``q'(p) = q(p)/m(p)``. With ``A`` the channel axis only, ``m(p)`` is the
variance at position ``p`` itself; with every axis, one number per example. Masked positions
(``mask1=``/``mask2=``) are left out of the means over positions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ParameterError, ShapeError
from ..finite.normalization import LayerNormModule
from .layers import Layer, Shape, State, require_single
from .state import absent, is_zero_constant


def _axes_tuple(axis) -> tuple[int, ...]:
    items = (axis,) if isinstance(axis, int) and not isinstance(axis, bool) else axis
    try:
        items = tuple(items)
    except TypeError:
        raise ParameterError(f"LayerNorm axis must be an int or a tuple of ints, got {axis!r}") from None
    if not items or any(isinstance(a, bool) or not isinstance(a, int) for a in items):
        raise ParameterError(f"LayerNorm axis must be an int or a tuple of ints, got {axis!r}")
    return tuple(int(a) for a in items)


def _describe(ndim: int) -> str:
    return {2: "(n, d)", 3: "(n, C, T)", 4: "(n, C, H, W)", 5: "(n, C, D, H, W)"}.get(ndim, f"{ndim}-D")


class LayerNorm(Layer):
    """Normalizes each example over ``axis`` (no learned scale or shift).

    Args:
        axis: axes of the *batched* input array, as in torch: ``-1`` (default) is the
            feature axis of ``(n, d)`` inputs; for images ``(n, C, H, W)`` ``axis=1``
            normalizes over the channels at each position and ``axis=(1, 2, 3)`` over the
            whole example; for sequences ``(n, C, T)`` use ``axis=1`` (``-1`` would be the
            positions). The channel axis 1 must be among them (the infinite-width limit
            needs it, as neural-tangents' ``LayerNorm``) and the batch axis 0 must not.
        eps: added to the variance before the square root (``>= 0``).

    Kernel: see the module docstring (neural-tangents' ``stax.LayerNorm``). The finite
    module computes ``(x − mean)/√(eps + var)`` over the axes (biased variance), leaving
    masked positions out of the mean and variance.

    Raises:
        ParameterError: a bad ``axis``/``eps``.
        ShapeError: an axis out of range, the batch axis, no channel axis, or axes that
            hold a single entry per example (the output would be identically 0).
    """

    handles_masks = True

    def __init__(self, axis: int | tuple[int, ...] = -1, eps: float = 1e-12) -> None:
        self.axis = _axes_tuple(axis)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise ParameterError(f"LayerNorm eps must be a finite number >= 0, got {eps!r}")
        self.eps = float(eps)

    def _shown(self):
        return self.axis[0] if len(self.axis) == 1 else self.axis

    def resolve_axes(self, ndim: int) -> tuple[int, ...]:
        """The normalized axes of a batched ``ndim``-D input, non-negative and sorted."""
        shape = _describe(ndim)
        out = set()
        for a in self.axis:
            if not -ndim <= a < ndim:
                raise ShapeError(
                    f"LayerNorm(axis={self._shown()}) is out of range for inputs {shape} with {ndim} "
                    f"axes; give axes in 1..{ndim - 1}"
                )
            out.add(a % ndim)
        if 0 in out:
            raise ShapeError(
                f"LayerNorm(axis={self._shown()}) includes the batch axis 0 of inputs {shape}; it "
                "normalizes each example on its own: give axes from 1 (channels) on"
            )
        if 1 not in out:
            hint = "LayerNorm(axis=1) (per position) or LayerNorm(axis=(1, 2)) (whole sequence)" \
                if ndim == 3 else ("LayerNorm(axis=1) (per position) or "
                                   "LayerNorm(axis=tuple(range(1, x.ndim))) (whole example)")
            raise ShapeError(
                f"LayerNorm(axis={self._shown()}) on inputs {shape} does not normalize the channel "
                f"axis 1; the infinite-width kernel needs it (as in neural-tangents). Use {hint}"
            )
        return tuple(sorted(out))

    def _check_count(self, channels: int, spatial: tuple[int, ...], axes: tuple[int, ...]) -> None:
        count = channels * math.prod(spatial[a - 2] for a in axes if a >= 2)
        if count == 1:
            raise ShapeError(
                f"LayerNorm(axis={self._shown()}) normalizes a single entry per example (axis of size "
                "1), which makes every output 0; normalize over more than one channel (give the "
                "previous Dense/Conv a width > 1) or include more axes"
            )

    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        axes = self.resolve_axes(2 + len(state.spatial))
        self._check_count(state.width, state.spatial, axes)
        dims = tuple(a - 1 for a in axes if a >= 2)  # spatial axes of var (N, *S)

        def inverse_root(var: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            if dims:
                if mask is None:
                    var = var.mean(dims, keepdim=True).expand_as(var)
                else:
                    present = ~mask
                    total = torch.where(present, var, 0.0).sum(dims, keepdim=True)
                    var = (total / present.sum(dims, keepdim=True).clamp(min=1)).expand_as(var)
            m = var + self.eps
            positive = m > 0
            return torch.where(positive, torch.rsqrt(torch.where(positive, m, 1.0)), 0.0)

        mask1, mask2 = absent(state, True), absent(state, False)
        s1 = inverse_root(state.var1, mask1)
        shared = state.var2 is state.var1 and mask2 is mask1
        s2 = s1 if shared else inverse_root(state.var2, mask2)
        scales = state.replace(var1=s1, var2=s2)
        factor = scales.q11() * scales.q22()
        nngp = state.nngp * factor
        ntk = None
        if state.ntk is state.nngp:  # a shared kernel (e.g. after the first Dense) stays shared
            ntk = nngp
        elif state.ntk is not None:
            ntk = state.ntk if is_zero_constant(state.ntk) else state.ntk * factor
        # Same rounding as the kernels (``nngp·(s1·s2)``), so that an example's covariance
        # with itself keeps its diagonal equal to its variance bit for bit.
        var1 = state.var1 * (s1 * s1)
        var2 = var1 if shared else state.var2 * (s2 * s2)
        return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, fresh=False)

    def build_module(
        self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple):
            raise ShapeError("LayerNorm received branches; merge them with FanInSum()/FanInConcat() first")
        axes = self.resolve_axes(1 + len(in_shape))
        self._check_count(in_shape[0], tuple(in_shape[1:]), axes)
        return LayerNormModule(axes, self.eps), in_shape
