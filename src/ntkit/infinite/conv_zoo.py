"""Transposed and locally connected convolutions of infinitely many channels.

**ConvTranspose** (the upsampling layer of U-Nets; neural-tangents' ``stax.ConvTranspose``):
the input is dilated by the stride (``s − 1`` zeros between positions), zero-padded by
``(before, after)`` (``jax.lax.conv_transpose``'s geometry: ``"same"`` gives ``n·s``
outputs, ``"valid"`` ``n·s + max(k − s, 0)``; see :func:`ntkit.spatial.transpose_padding`)
and convolved with stride 1. Its kernel is therefore the CNTK recursion of
:mod:`ntkit.infinite.conv` on the dilated, padded covariance ``K̃`` (dilated along both
position axes): ``nngp'[p, p'] = (W_std²/|K|)·Σ_o K̃[p + o, p' + o] + b_std²``,
``ntk' = nngp' + (W_std²/|K|)·Σ_o ntk̃[p + o, p' + o]`` (fan-in ``C_in·|K|``, NTK
parameterization).

**ConvLocal** (locally connected: unshared weights and biases at every output position;
the LCN of Novak et al. 2019, Sec. 3): two different output positions use independent
weights, so their covariance vanishes and the kernel keeps only the spatial diagonal,
which equals the convolution's: ``K'[p, p'] = δ_{pp'}·Conv(K)[p, p]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_choice, check_nonnegative, check_positive_int
from ..errors import ShapeError
from ..finite.conv_zoo import ConvTransposeModule, LocalConvModule, dilate_and_pad
from ..spatial import as_tuple, check_window, geometry, transpose_padding
from ._spatial import window_sum
from .conv import Conv, _scalar, add_scaled, is_zero_constant, resolve_window, scale_shift, spatial_axes
from .layers import Layer, Shape, State, require_single

TRANSPOSE_PADDINGS = ("same", "valid")


def transpose_out(n: int, k: int, s: int, padding: str) -> int:
    """Output size of one axis of a transposed convolution."""
    before, after = transpose_padding(k, s, padding)
    return (n - 1) * s + 1 + before + after - k + 1


class ConvTranspose(Layer):
    """Transposed convolution with ``channels`` outputs over 1-D, 2-D or 3-D images.

    Args:
        channels: output channels of the finite network.
        kernel_size: int (every axis) or one size per spatial axis.
        stride: int or tuple: the upsampling factor.
        padding: ``"same"`` (output ``n·stride``) or ``"valid"``
            (``n·stride + max(kernel − stride, 0)``), as ``jax.lax.conv_transpose``.
        W_std, b_std: weight and bias scales (``b_std=None``: no bias).

    Inputs ``(n, C, *S)``; the kernels follow the module docstring (NTK parameterization).
    """

    has_parameters = True

    def __init__(self, channels: int, kernel_size, stride=1, padding: str = "same",
                 W_std: float = 1.0, b_std: float | None = None) -> None:
        self.channels = check_positive_int(channels, "channels")
        self.kernel_size = as_tuple(kernel_size, "kernel_size")
        self.stride = as_tuple(stride, "stride")
        self.padding = check_choice(padding, "padding", TRANSPOSE_PADDINGS)
        check_nonnegative(W_std, "W_std")
        check_nonnegative(b_std, "b_std", allow_none=True)
        self.W_std = _scalar(W_std)
        self.b_std = None if b_std is None else _scalar(b_std)

    def _geometry(self, spatial):
        kernel, stride = resolve_window("ConvTranspose", self.kernel_size, self.stride, spatial)
        out = tuple(transpose_out(n, k, s, self.padding) for n, k, s in zip(spatial, kernel, stride))
        return kernel, stride, out

    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        kernel, stride, out_spatial = self._geometry(state.spatial)
        scale = self.W_std**2 / math.prod(kernel)
        b2 = None if self.b_std is None else self.b_std**2
        _, groups = spatial_axes(state)
        var_groups = [(1 + i,) for i in range(len(state.spatial))]

        def window(t: torch.Tensor, groups) -> torch.Tensor:
            for axes, n, k, s in zip(groups, state.spatial, kernel, stride):
                t = dilate_and_pad(t, axes, n, k, s, self.padding)
                t = window_sum(t, [axes], t.shape[axes[0]], k, 1, "valid")
            return t

        nngp = scale_shift(window(state.nngp, groups), scale, b2, inplace=True)
        ntk = None
        if state.ntk is not None:
            if state.ntk is state.nngp or not is_zero_constant(state.ntk):
                ntk = add_scaled(nngp, window(state.ntk, groups), scale)
            else:
                ntk = nngp
        var1 = scale_shift(window(state.var1, var_groups), scale, b2, inplace=True)
        var2 = var1 if state.var2 is state.var1 else scale_shift(
            window(state.var2, var_groups), scale, b2, inplace=True)
        return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, width=self.channels,
                             spatial=out_spatial, fresh=True)

    def build_module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
                     ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple):
            raise ShapeError("ConvTranspose received branches; merge them with FanInSum()/FanInConcat()")
        kernel, stride, out = self._geometry(in_shape[1:])
        module = ConvTransposeModule(in_shape[0], self.channels, kernel, stride, self.padding,
                                     self.W_std, self.b_std, generator, dtype)
        return module, (self.channels, *out)


class ConvLocal(Conv):
    """Locally connected layer: a ``Conv`` with unshared weights and biases per position.

    Same arguments and geometry as :class:`~ntkit.infinite.conv.Conv` (``"same"``,
    ``"valid"`` or ``"circular"`` padding; NTK parameterization). Kernel: the convolution's
    on the spatial diagonal, 0 between different positions (module docstring); over 1×1
    images it equals ``Dense``.
    """

    def __init__(self, channels: int, kernel_size, stride=1, padding: str = "same",
                 W_std: float = 1.0, b_std: float | None = None) -> None:
        super().__init__(channels, kernel_size, stride, padding, W_std, b_std)

    def apply_kernel(self, state: State) -> State:
        out = super().apply_kernel(state)
        if not out.full_spatial:
            return out  # the spatial diagonal is all there is: equal to the convolution's
        p = math.prod(out.spatial)
        batch = 1 if out.diagonal else 2
        eye = torch.eye(p, dtype=out.nngp.dtype, device=out.nngp.device)
        eye = eye.reshape((1,) * batch + tuple(out.spatial) * 2)
        nngp = out.nngp * eye
        ntk = None if out.ntk is None else (nngp if out.ntk is out.nngp else out.ntk * eye)
        return out.replace(nngp=nngp, ntk=ntk)

    def build_module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
                     ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple):
            raise ShapeError("ConvLocal received branches; merge them with FanInSum()/FanInConcat() first")
        spatial = in_shape[1:]
        kernel, stride = resolve_window("ConvLocal", self.kernel_size, self.stride, spatial)
        check_window("ConvLocal", spatial, kernel, self.padding)
        out = tuple(geometry(n, k, s, self.padding)[0] for n, k, s in zip(spatial, kernel, stride))
        module = LocalConvModule(in_shape[0], self.channels, kernel, stride, self.padding, out,
                                 self.W_std, self.b_std, generator, dtype)
        return module, (self.channels, *out)

    def __repr__(self) -> str:
        return (f"ConvLocal(channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, W_std={self.W_std}, b_std={self.b_std})")
