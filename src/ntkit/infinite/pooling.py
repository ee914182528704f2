"""Pooling and flattening of spatial kernels (Novak et al. 2019; Arora et al. 2019).

- ``AvgPool``: ``y(p) = (1/|K|) Σ_o x(s·p + o − left)`` averages two *independent* windows
  of a pair of images, so ``K'[p, p'] = (1/|K|²) Σ_{o, o'} K[s·p + o, s·p' + o']``, a box
  filter over both position axes of the full spatial covariance (zero padding counts in the
  mean, as ``count_include_pad=True`` in torch).
- ``GlobalAvgPool``: ``K' = mean over all (p, p')`` of the full covariance; output is flat.
- ``Flatten``: the next ``Dense`` normalizes by ``C·prod(S)``, so ``K' = mean_p K[p, p]``,
  which only needs the spatial diagonal (Arora et al. 2019's "vanilla" CNTK readout).

The NTK maps the same way as the NNGP (these layers have no parameters) and ``fresh`` is
kept (a linear map of a zero-mean independent branch stays so). The pooled variances need
each example's full covariance with itself, which the engine supplies as ``self_pairs``
(see :mod:`ntkit.infinite.state`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_choice
from ..errors import NtkitError, ShapeError
from ..finite.pooling import AvgPoolModule, FlattenModule, GlobalAvgPoolModule
from ..finite.sum_pooling import WindowPoolModule
from ..spatial import PADDINGS, as_tuple, check_window, geometry
from ._spatial import window_sum
from .conv import resolve_window, spatial_rank_error
from .layers import Layer, Shape, State, require_single
from .state import KernelState, absent


def _require_full(state: KernelState, layer: Layer) -> None:
    if not state.full_spatial:
        raise NtkitError(
            f"{type(layer).__name__} needs the full spatial covariance but received the "
            "spatial-diagonal layout; make the architecture's needs_full_spatial() return "
            "True (every layer passes it on; AvgPool and GlobalAvgPool do)"
        )


def _self_indices(state: KernelState, layer: Layer) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of each pair's (left, left) and (right, right) pair in the batch."""
    if state.self_pairs is not None:
        return state.self_pairs
    if state.diagonal and state.var2 is state.var1:  # the pairs (x_i, x_i) themselves
        idx = torch.arange(state.nngp.shape[0], device=state.nngp.device)
        return idx, idx
    raise NtkitError(
        f"{type(layer).__name__} needs each example's covariance with itself; evaluate "
        "through arch.kernel(...) (ntkit.infinite.pairs), which supplies it"
    )


def _self_diagonal(pooled: torch.Tensor, spatial: tuple[int, ...], index: torch.Tensor) -> torch.Tensor:
    """``pooled[index[k], p, p]`` as ``(len(index), *spatial)`` from ``(N, *S, *S)``."""
    p = math.prod(spatial)
    diagonals = pooled.reshape(pooled.shape[0], p, p).diagonal(dim1=1, dim2=2)
    return diagonals[index].reshape(len(index), *spatial)  # gathers the diagonals only


def _present_mean(state: KernelState, mask1, mask2):
    """Mean over the present positions of both examples of each pair (flat pair layout)."""
    n = state.nngp.shape[0]
    p = math.prod(state.spatial)

    def weights(mask):
        if mask is None:
            return torch.full((n, p), 1.0 / p, dtype=state.nngp.dtype, device=state.nngp.device)
        present = (~mask).reshape(n, p).to(state.nngp.dtype)
        return present / present.sum(1, keepdim=True)

    w1, w2 = weights(mask1), weights(mask2)

    def mean(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(n, p, p)
        return torch.einsum("np,npq,nq->n", w1, flat, w2)

    return mean


def _without_mask(side: dict | None) -> dict | None:
    """Side information without the (now meaningless) mask of positions."""
    if not side or "mask" not in side:
        return side
    return {k: v for k, v in side.items() if k != "mask"}


class AvgPool(Layer):
    """Average pooling over windows of ``kernel_size`` (int or tuple) with ``stride``.

    ``stride=None`` means ``stride = kernel_size`` (torch's default); ``padding`` is
    ``"valid"`` (default), ``"same"`` (zeros, counted in the mean) or ``"circular"``.
    ``normalize_edges=True``: a border window of ``"same"`` padding averages over the
    positions it covers only (as neural-tangents' ``AvgPool(normalize_edges=True)`` and
    torch's ``count_include_pad=False``): ``K'[p, p'] = Σ K[..] / (c(p)·c(p'))`` with
    ``c(p)`` the number of in-image positions of window ``p``.
    Needs the full spatial covariance: input ``(N, *S, *S)``, output ``(N, *S', *S')``
    (pair axes ``(n1, n2)`` or the flat pair list of the engine).
    """

    #: ``True`` for SumPool: the window sums are not divided by the window size.
    _sum = False

    def __init__(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None = None,
        padding: str = "valid",
        normalize_edges: bool = False,
    ) -> None:
        self.kernel_size = as_tuple(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else as_tuple(stride, "stride")
        self.padding = check_choice(padding, "padding", PADDINGS)
        self.normalize_edges = bool(normalize_edges)

    def _divisor(self, spatial, kernel, stride, batch: int, like: torch.Tensor):
        """What the window sums are divided by: a number, or per output position pair."""
        if self._sum:
            return 1.0
        if not (self.normalize_edges and self.padding == "same"):
            return float(math.prod(kernel) ** 2)
        counts = [
            window_sum(like.new_ones(n), [(0,)], n, k, s, self.padding)
            for n, k, s in zip(spatial, kernel, stride)
        ]
        grid = counts[0]
        for c in counts[1:]:
            grid = grid[..., None] * c
        d = len(spatial)
        return (grid.reshape(grid.shape + (1,) * d) * grid).reshape((1,) * batch + 2 * grid.shape)

    def needs_full_spatial(self) -> bool:
        return True

    def _window(self, spatial: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        kernel, stride = resolve_window("AvgPool", self.kernel_size, self.stride, spatial)
        check_window("AvgPool", spatial, kernel, self.padding)
        return kernel, stride

    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        kernel, stride = self._window(state.spatial)
        _require_full(state, self)
        batch = 1 if state.diagonal else 2
        d = len(state.spatial)
        divisor = self._divisor(state.spatial, kernel, stride, batch, state.nngp)

        def pool(t: torch.Tensor) -> torch.Tensor:
            for i, (n, k, s) in enumerate(zip(state.spatial, kernel, stride)):
                t = window_sum(t, [(batch + i,), (batch + d + i,)], n, k, s, self.padding)
            return t if isinstance(divisor, float) and divisor == 1.0 else t.div_(divisor)

        out_spatial = tuple(
            geometry(n, k, s, self.padding)[0] for n, k, s in zip(state.spatial, kernel, stride)
        )
        nngp = pool(state.nngp)
        ntk = None
        if state.ntk is not None:
            ntk = nngp if state.ntk is state.nngp else pool(state.ntk)
        if state.diagonal:
            i1, i2 = _self_indices(state, self)
            var1 = _self_diagonal(nngp, out_spatial, i1)
            var2 = var1 if i2 is i1 else _self_diagonal(nngp, out_spatial, i2)
        else:
            raise NtkitError(
                "AvgPool on the pairwise (n1, n2) full layout cannot form the pooled variances; "
                "evaluate through arch.kernel(...), which uses the pair list of ntkit.infinite.pairs"
            )
        return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, spatial=out_spatial)

    def build_module(
        self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple):
            raise ShapeError("AvgPool received branches; merge them with FanInSum()/FanInConcat() first")
        spatial = in_shape[1:]
        kernel, stride = self._window(spatial)
        out = tuple(geometry(n, k, s, self.padding)[0] for n, k, s in zip(spatial, kernel, stride))
        if self._sum or self.normalize_edges:
            mode = "sum" if self._sum else "mean_covered"
            return WindowPoolModule(kernel, stride, self.padding, mode), (in_shape[0], *out)
        return AvgPoolModule(kernel, stride, self.padding), (in_shape[0], *out)

    def __repr__(self) -> str:
        edges = ", normalize_edges=True" if self.normalize_edges else ""
        return (f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}{edges})")


class GlobalAvgPool(Layer):
    """Mean over all positions: ``(N, *S, *S) -> (N,)`` (full spatial covariance needed).

    The readout of Arora et al. (2019)'s CNTK-GAP and Novak et al. (2019)'s CNN-GAP.
    With masks of absent positions (``kernel(..., mask1=...)``) the mean runs over the
    present positions of each example: ``K' = Σ_{p∈U1, p'∈U2} K[p, p'] / (|U1|·|U2|)``.
    """

    handles_masks = True

    def needs_full_spatial(self) -> bool:
        return True

    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        if not state.is_spatial:
            raise spatial_rank_error("GlobalAvgPool", None, ())
        _require_full(state, self)
        batch = 1 if state.diagonal else 2
        dims = tuple(range(batch, state.nngp.ndim))
        mask1, mask2 = absent(state, True), absent(state, False)
        if state.diagonal and (mask1 is not None or mask2 is not None):
            mean = _present_mean(state, mask1, mask2)
        else:
            def mean(t: torch.Tensor) -> torch.Tensor:
                return t.mean(dim=dims)
        nngp = mean(state.nngp)
        ntk = None
        if state.ntk is not None:
            ntk = nngp if state.ntk is state.nngp else mean(state.ntk)
        if not state.diagonal:
            raise NtkitError(
                "GlobalAvgPool on the pairwise (n1, n2) full layout cannot form the pooled "
                "variances; evaluate through arch.kernel(...) (ntkit.infinite.pairs)"
            )
        i1, i2 = _self_indices(state, self)
        var1 = nngp[i1]
        var2 = var1 if i2 is i1 else nngp[i2]
        return state.replace(
            nngp=nngp, ntk=ntk, var1=var1, var2=var2, spatial=(), full_spatial=False,
            side1=_without_mask(state.side1), side2=_without_mask(state.side2),
        )

    def build_module(
        self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple) or len(in_shape) < 2:
            raise ShapeError(f"GlobalAvgPool expects images (C, *spatial), got in_shape {in_shape}")
        return GlobalAvgPoolModule(), (in_shape[0],)

    def __repr__(self) -> str:
        return "GlobalAvgPool()"


class Flatten(Layer):
    """Channels and positions into one feature axis (then ``Dense`` divides by ``C·prod(S)``).

    Kernel: ``mean_p K[p, p]`` — the spatial diagonal only, so an architecture whose only
    readout is ``Flatten`` never forms full spatial covariances. Flat inputs pass unchanged.
    """

    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        if not state.is_spatial:
            return state
        batch = 1 if state.diagonal else 2
        p = math.prod(state.spatial)

        def reduce(t: torch.Tensor) -> torch.Tensor:
            if state.full_spatial:
                t = t.reshape(*t.shape[:batch], p, p).diagonal(dim1=-2, dim2=-1)
            else:
                t = t.reshape(*t.shape[:batch], p)
            return t.mean(-1)

        nngp = reduce(state.nngp)
        ntk = None
        if state.ntk is not None:
            ntk = nngp if state.ntk is state.nngp else reduce(state.ntk)
        var1 = state.var1.reshape(state.var1.shape[0], p).mean(-1)
        var2 = var1 if state.var2 is state.var1 else state.var2.reshape(state.var2.shape[0], p).mean(-1)
        return state.replace(
            nngp=nngp, ntk=ntk, var1=var1, var2=var2, width=state.width * p,
            spatial=(), full_spatial=False,
        )

    def build_module(
        self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple):
            raise ShapeError("Flatten received branches; merge them with FanInSum()/FanInConcat() first")
        return FlattenModule(), (math.prod(in_shape),)

    def __repr__(self) -> str:
        return "Flatten()"
