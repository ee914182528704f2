"""Evaluation of an architecture's infinite-width kernels, tile by tile.

Every layer acts on each pair of examples independently, so the ``(n1, n2)`` pair grid can
be cut into tiles that are computed one after another under a memory budget. With
``x2=None`` only the tiles on and above the block diagonal are computed; the rest are
their transposes. Architectures that pool full spatial covariances go through
:mod:`ntkit.infinite.pairs` instead (lists of pairs that carry each example's covariance
with itself, which the pooled variances need).
"""

from __future__ import annotations

import math

import torch

from ..errors import MemoryBudgetError, ParameterError, ShapeError
from ..kernel import Kernel
from .pairs import evaluate_pairs, pair_block
from .state import KernelState, swap_pair_axes

DEFAULT_MEMORY_BUDGET = 256 * 2**20
# Tiles of about this many kernel entries keep a layer's elementwise passes in cache
# (measured: 512² float64 entries is ~3x faster than 1400² for the depth-3 ReLU MLP).
_CACHE_TILE_ENTRIES = 512 * 512
# Live temporaries per pair entry during a layer: inputs, outputs and a few scratch arrays.
_TEMPORARIES_PER_ENTRY = 12


def input_state(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    want_ntk: bool,
    diagonal: bool,
    full_spatial: bool,
    side1: dict | None = None,
    side2: dict | None = None,
) -> KernelState:
    """The kernel of the raw inputs: ``<x, x'> / fan_in`` (docs/DESIGN.md, NTK parameterization).

    Shapes: ``x1 (n1, d)`` or ``(n1, C, *S)``; ``fan_in`` is ``d`` or ``C`` (the channel sum
    at each position, as a convolution's fan-in per kernel position). ``side1``/``side2``:
    per-example side information of ``x1``/``x2`` (see :class:`KernelState`).
    """
    width = x1.shape[1]
    spatial = tuple(x1.shape[2:])
    same = x2 is None
    x2 = x1 if same else x2
    var1 = (x1 * x1).sum(1) / width
    var2 = var1 if same else (x2 * x2).sum(1) / width
    if diagonal:
        if not full_spatial:
            nngp = var1 if same else (x1 * x2).sum(1) / width
        else:
            a = x1.reshape(x1.shape[0], width, -1)
            b = x2.reshape(x2.shape[0], width, -1)
            nngp = torch.einsum("icp,icq->ipq", a, b).reshape(x1.shape[0], *spatial, *spatial)
            nngp = nngp / width
    elif not spatial:
        nngp = (x1 @ x2.T) / width
    elif not full_spatial:
        nngp = torch.einsum("ic...,jc...->ij...", x1, x2) / width
    else:
        a = x1.reshape(x1.shape[0], width, -1)
        b = x2.reshape(x2.shape[0], width, -1)
        nngp = torch.einsum("icp,jcq->ijpq", a, b) / width
        nngp = nngp.reshape(x1.shape[0], x2.shape[0], *spatial, *spatial)
    if same:
        _pin_self_pairs(nngp, var1, diagonal, full_spatial and bool(spatial))
    return KernelState(
        nngp=nngp,
        ntk=torch.zeros_like(nngp) if want_ntk else None,  # no parameters before the input
        var1=var1,
        var2=var2,
        width=width,
        spatial=spatial,
        full_spatial=full_spatial and bool(spatial),
        diagonal=diagonal,
        same=same,
        side1=side1,
        side2=side1 if same else side2,
    )


def _pin_self_pairs(nngp: torch.Tensor, var: torch.Tensor, diagonal: bool, full: bool) -> None:
    """Make each example's covariance with itself equal its variance, bit for bit.

    Kernels such as the arc-cosine one are not Lipschitz at correlation 1, so the one-ulp
    difference between a Gram-matrix diagonal and a sum of squares would grow to ``√ε``.
    """
    n = var.shape[0]
    idx = torch.arange(n, device=var.device)
    flat_var = var.reshape(n, -1)
    if diagonal and not full:
        return  # nngp is var itself
    if diagonal:
        view = nngp.reshape(n, flat_var.shape[1], flat_var.shape[1])
        view.diagonal(dim1=1, dim2=2).copy_(flat_var)
    elif not full:
        nngp.reshape(n, n, -1)[idx, idx] = flat_var
    else:
        p = flat_var.shape[1]
        view = nngp.reshape(n, n, p, p)[idx, idx]  # (n, p, p) copy
        view.diagonal(dim1=1, dim2=2).copy_(flat_var)
        nngp.reshape(n, n, p, p)[idx, idx] = view


def pair_bytes(layer, x: torch.Tensor, want_ntk: bool) -> int:
    """Estimated bytes of temporaries per pair of examples while ``layer`` runs on ``x``."""
    full = layer.needs_full_spatial() and x.ndim > 2
    n_pos = math.prod(x.shape[2:])
    entries = n_pos * n_pos if full else n_pos
    return entries * x.element_size() * _TEMPORARIES_PER_ENTRY * (2 if want_ntk else 1)


def check_budget(per_pair: int, budget: int) -> None:
    """Raise MemoryBudgetError when not even one pair of examples fits in ``budget``."""
    if per_pair > budget:
        raise MemoryBudgetError(
            f"one pair of examples needs about {per_pair / 2**20:.1f} MiB of temporaries "
            f"but memory_budget is {budget / 2**20:.1f} MiB; raise memory_budget to at least "
            f"{per_pair} bytes"
        )


def tile_side(per_pair: int, budget: int, element_size: int) -> int:
    """Side of a square tile of example pairs: within ``budget`` and about cache-sized."""
    entries_per_pair = max(1, per_pair // (element_size * _TEMPORARIES_PER_ENTRY))
    return max(1, min(math.isqrt(budget // per_pair),
                      math.isqrt(max(1, _CACHE_TILE_ENTRIES // entries_per_pair))))


def take(side: dict | None, index) -> dict | None:
    """Per-example side information (``{name: (n, ...) tensor}``) at ``index`` of the batch."""
    return None if side is None else {k: v[index] for k, v in side.items()}


def kernel_block(
    layer, a: torch.Tensor, b: torch.Tensor | None, *, want_ntk: bool, diagonal: bool = False,
    side_a: dict | None = None, side_b: dict | None = None,
) -> KernelState:
    """The output kernel state of ``layer`` for rows ``a`` and columns ``b``.

    ``b=None`` means ``b = a`` (each example's pair with itself is then exact). This is one
    tile: callers such as :func:`evaluate` or ``ntkit.linalg`` bound its size.
    ``side_a``/``side_b``: side information of the rows/columns (e.g. masks), or ``None``.
    """
    full = layer.needs_full_spatial() and a.ndim > 2
    if full:  # pooling needs each example's self-covariance: the pair-list route
        return pair_block(layer, a, b, want_ntk=want_ntk, diagonal=diagonal, side_a=side_a, side_b=side_b)
    state = layer.apply_kernel(
        input_state(a, b, want_ntk=want_ntk, diagonal=diagonal, full_spatial=full,
                    side1=side_a, side2=side_b)
    )
    if isinstance(state, tuple):
        raise ShapeError(
            f"the architecture ends with {len(state)} branches; merge them with "
            "FanInSum() or FanInConcat()"
        )
    return state


def evaluate(
    layer,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    want_ntk: bool,
    diagonal: bool,
    memory_budget: int | None,
    side1: dict | None = None,
    side2: dict | None = None,
) -> Kernel:
    """Run ``layer`` on the input kernel of ``(x1, x2)`` tile by tile; see module docstring.

    ``side1``/``side2``: per-example side information of ``x1``/``x2`` (``{name: (n, ...)}``,
    e.g. masks), sliced along with the examples into every tile.
    """
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else _budget_bytes(memory_budget)
    per_pair = pair_bytes(layer, x1, want_ntk)
    if layer.needs_full_spatial() and x1.ndim > 2:
        # A chunk holds at least one pair and the two self pairs it needs.
        check_budget(per_pair * (1 if x2 is None else 3), budget)
        return evaluate_pairs(
            layer, x1, x2, want_ntk=want_ntk, diagonal=diagonal, per_pair=per_pair, budget=budget,
            side1=side1, side2=side2,
        )
    check_budget(per_pair, budget)

    def run(rows: slice, cols: slice | None, diag: bool) -> KernelState:
        """The block of ``x1[rows]`` with ``x2[cols]`` (``cols=None``: with ``x1[rows]``)."""
        if cols is None:
            return kernel_block(layer, x1[rows], None, want_ntk=want_ntk, diagonal=diag,
                                side_a=take(side1, rows))
        src, side = (x1, side1) if x2 is None else (x2, side2)
        return kernel_block(layer, x1[rows], src[cols], want_ntk=want_ntk, diagonal=diag,
                            side_a=take(side1, rows), side_b=take(side, cols))

    if diagonal:
        rows = max(1, budget // per_pair)
        parts = [run(slice(i, i + rows), None if x2 is None else slice(i, i + rows), True)
                 for i in range(0, x1.shape[0], rows)]
        var1 = torch.cat([p.var1 for p in parts])
        var2 = var1 if x2 is None else torch.cat([p.var2 for p in parts])
        return Kernel(
            nngp=torch.cat([p.nngp for p in parts]),
            ntk=torch.cat([p.ntk for p in parts]) if want_ntk else None,
            var1=var1,
            var2=var2,
            diagonal=True,
        )
    return _evaluate_tiles(run, x1, x2, want_ntk, per_pair, budget)


def _budget_bytes(memory_budget) -> int:
    """``memory_budget`` as a positive number of bytes (ParameterError otherwise)."""
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or not (
        math.isfinite(memory_budget) and memory_budget >= 1
    ):
        raise ParameterError(
            f"memory_budget must be a number of bytes >= 1 (e.g. 2**30 for 1 GiB), got "
            f"{memory_budget!r}"
        )
    return int(memory_budget)


def _evaluate_tiles(run, x1, x2, want_ntk, bytes_per_pair, budget) -> Kernel:
    symmetric = x2 is None
    cols_src = x1 if symmetric else x2
    n1, n2 = x1.shape[0], cols_src.shape[0]
    side = tile_side(bytes_per_pair, budget, x1.element_size())
    row_block = min(n1, side)
    col_block = min(n2, max(side, (budget // bytes_per_pair) // row_block))
    if symmetric:
        col_block = row_block
    out_nngp = out_ntk = None
    var1_parts: list[torch.Tensor] = []
    var2_parts: dict[int, torch.Tensor] = {}
    for r0 in range(0, n1, row_block):
        r1 = min(n1, r0 + row_block)
        c_start = r0 if symmetric else 0
        for c0 in range(c_start, n2, col_block):
            c1 = min(n2, c0 + col_block)
            same_rows = symmetric and c0 == r0 and c1 == r1
            state = run(slice(r0, r1), None if same_rows else slice(c0, c1), False)
            if out_nngp is None:
                shape = (n1, n2, *state.nngp.shape[2:])
                out_nngp = state.nngp.new_empty(shape)
                out_ntk = state.nngp.new_empty(shape) if want_ntk else None
            if c0 == c_start:
                var1_parts.append(state.var1)
            if r0 == 0 and not symmetric:
                var2_parts[c0] = state.var2
            for out, tile in ((out_nngp, state.nngp), (out_ntk, state.ntk)):
                if out is None:
                    continue
                if symmetric and c0 == r0:
                    tile = 0.5 * (tile + swap_pair_axes(tile, len(state.spatial), state.full_spatial))
                out[r0:r1, c0:c1] = tile
                if symmetric and c0 != r0:
                    out[c0:c1, r0:r1] = swap_pair_axes(tile, len(state.spatial), state.full_spatial)
    var1 = torch.cat(var1_parts)
    var2 = var1 if symmetric else torch.cat([var2_parts[c] for c in sorted(var2_parts)])
    return Kernel(nngp=out_nngp, ntk=out_ntk, var1=var1, var2=var2, diagonal=False)
