"""Image resizing of infinitely many channels (neural-tangents' ``stax.ImageResize``).

Resizing is linear and acts on every channel alike: along each spatial axis
``y[i] = Σ_j R[i, j]·x[j]`` with a fixed ``(n_out, n_in)`` matrix ``R``, so the full spatial
covariance maps as ``K' = R K Rᵀ`` on both position axes (every axis in turn), the NTK the
same way (no parameters). ``R`` follows ``jax.image.resize`` (which neural-tangents uses),
with half-pixel centres: output ``i`` samples input coordinate ``x_i = (i + ½)·n_in/n_out − ½``;

- ``"linear"``: weights ``max(0, 1 − |j − x_i|·κ)`` normalized to sum 1 over the in-image
  ``j``, with ``κ = min(1, n_out/n_in)`` (the triangle widens when downsampling: jax's
  default ``antialias=True``);
- ``"nearest"``: ``R[i, j] = 1`` for ``j = min(⌊(i + ½)·n_in/n_out⌋, n_in − 1)`` — a
  selection, which needs only the spatial diagonal.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ParameterError, ShapeError
from ..finite.resize import ResizeModule
from .conv import spatial_axes, spatial_rank_error
from .layers import Layer, Shape, State, require_single
from .pooling import _require_full, _self_diagonal, _self_indices

METHODS = ("linear", "nearest")


def resize_matrix(n_in: int, n_out: int, method: str, dtype=torch.float64, device=None) -> torch.Tensor:
    """The ``(n_out, n_in)`` resize matrix of one axis (module docstring)."""
    i = torch.arange(n_out, dtype=torch.float64)
    if method == "nearest":
        j = torch.clamp(torch.floor((i + 0.5) * (n_in / n_out)), max=n_in - 1).long()
        r = torch.zeros(n_out, n_in, dtype=torch.float64)
        r[torch.arange(n_out), j] = 1.0
    else:
        x = (i + 0.5) * (n_in / n_out) - 0.5
        kappa = min(1.0, n_out / n_in)
        j = torch.arange(n_in, dtype=torch.float64)
        r = torch.clamp(1 - (j[None, :] - x[:, None]).abs() * kappa, min=0)
        r = r / r.sum(1, keepdim=True)
    return r.to(dtype=dtype, device=device)


def _nearest_index(n_in: int, n_out: int, device) -> torch.Tensor:
    i = torch.arange(n_out, dtype=torch.float64)
    return torch.clamp(torch.floor((i + 0.5) * (n_in / n_out)), max=n_in - 1).long().to(device)


class ImageResize(Layer):
    """Resize images to ``shape`` (one size per spatial axis; ``-1`` keeps that axis).

    Args:
        shape: output spatial shape, e.g. ``(16, 16)`` for ``(n, C, H, W)`` inputs.
        method: ``"linear"`` (default; needs the full spatial covariance) or ``"nearest"``.

    Kernels as in the module docstring; :meth:`build_module` applies the same matrices.
    """

    def __init__(self, shape, method: str = "linear") -> None:
        items = (shape,) if isinstance(shape, int) else tuple(shape)
        if not items or any(isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1)
                            for v in items):
            raise ParameterError(
                f"shape must be a tuple of sizes >= 1 (or -1 to keep an axis), got {shape!r}")
        if method not in METHODS:
            raise ParameterError(f"method must be 'linear' or 'nearest', got {method!r}")
        self.shape, self.method = tuple(int(v) for v in items), method

    def needs_full_spatial(self) -> bool:
        return self.method == "linear"

    def _out(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if not spatial or len(spatial) != len(self.shape):
            raise spatial_rank_error("ImageResize", None, spatial) if not spatial else ShapeError(
                f"ImageResize shape {self.shape} has {len(self.shape)} entries but the images have "
                f"{len(spatial)} spatial axes {spatial}; give one size per axis")
        return tuple(n if m == -1 else m for n, m in zip(spatial, self.shape))

    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        out = self._out(state.spatial)
        _, groups = spatial_axes(state)
        if self.method == "nearest":
            def select(t, groups):
                for axes, n, m in zip(groups, state.spatial, out):
                    idx = _nearest_index(n, m, t.device)
                    for a in axes:
                        t = t.index_select(a, idx)
                return t

            var_groups = [(1 + i,) for i in range(len(state.spatial))]
            nngp = select(state.nngp, groups)
            ntk = None
            if state.ntk is not None:
                ntk = nngp if state.ntk is state.nngp else select(state.ntk, groups)
            var1 = select(state.var1, var_groups)
            var2 = var1 if state.var2 is state.var1 else select(state.var2, var_groups)
            return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, spatial=out)
        _require_full(state, self)
        mats = [resize_matrix(n, m, "linear", state.nngp.dtype, state.nngp.device)
                for n, m in zip(state.spatial, out)]

        def apply(t: torch.Tensor) -> torch.Tensor:
            for axes, r in zip(groups, mats):
                for a in axes:
                    t = torch.movedim(torch.tensordot(t, r, dims=([a], [1])), -1, a)
            return t

        nngp = apply(state.nngp)
        ntk = None
        if state.ntk is not None:
            ntk = nngp if state.ntk is state.nngp else apply(state.ntk)
        if not state.diagonal:
            raise ShapeError("ImageResize(method='linear') needs the pair list of arch.kernel(...)")
        i1, i2 = _self_indices(state, self)
        var1 = _self_diagonal(nngp, out, i1)
        var2 = var1 if i2 is i1 else _self_diagonal(nngp, out, i2)
        return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, spatial=out)

    def build_module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
                     ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple):
            raise ShapeError("ImageResize received branches; merge them first")
        out = self._out(in_shape[1:])
        mats = [resize_matrix(n, m, self.method, dtype) for n, m in zip(in_shape[1:], out)]
        return ResizeModule(mats), (in_shape[0], *out)

    def __repr__(self) -> str:
        return f"ImageResize(shape={self.shape}, method={self.method!r})"


__all__ = ["ImageResize"]
