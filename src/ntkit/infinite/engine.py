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

from .. import hardware
from .._fast_matmul import matmul
from ..budget import check_output, format_bytes, parse_budget
from ..errors import MemoryBudgetError, ShapeError
from ..kernel import Kernel
from ..tiling import CACHE_TILE_ENTRIES, Tile, assemble, grid, rect_blocks, square_side, tile_cap
from .graph_trim import evaluate_trimmed
from .pairs import evaluate_pairs, pair_block
from .state import KernelState, swap_pair_axes

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
        nngp = matmul(x1, x2.T).div_(width)  # float32: the product route of ntkit.hardware
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
            f"one pair of examples needs {format_bytes(per_pair, 'MiB')} ({per_pair} bytes) of "
            f"temporaries but memory_budget is {format_bytes(budget, 'MiB')} ({budget} bytes); "
            f"raise memory_budget to at least {per_pair} bytes"
        )


def tile_side(per_pair: int, budget: int, element_size: int, cap: int = CACHE_TILE_ENTRIES) -> int:
    """Side of a square tile of example pairs: within ``budget`` and about cache-sized
    (``cap`` kernel entries: :func:`ntkit.tiling.tile_cap`)."""
    entries_per_pair = max(1, per_pair // (element_size * _TEMPORARIES_PER_ENTRY))
    return square_side(per_pair, budget, cap // entries_per_pair)


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
    memory_budget: int | str | None,
    side1: dict | None = None,
    side2: dict | None = None,
    want_nngp: bool = True,
) -> Kernel:
    """Run ``layer`` on the input kernel of ``(x1, x2)`` tile by tile; see module docstring.

    ``side1``/``side2``: per-example side information of ``x1``/``x2`` (``{name: (n, ...)}``,
    e.g. masks), sliced along with the examples into every tile.
    ``want_nngp=False`` (with ``want_ntk``) keeps no NNGP output (``Kernel.nngp`` is None).
    Raises MemoryBudgetError before any work when the outputs cannot be allocated
    (:func:`ntkit.budget.check_output`).
    """
    # Freed tile temporaries reused from the heap, not page-faulted in again per tile.
    hardware.keep_freed_memory()
    budget = parse_budget(memory_budget)
    want_nngp = want_nngp or not want_ntk
    check_outputs(layer, x1, x2, want_ntk=want_ntk, want_nngp=want_nngp, diagonal=diagonal,
                  side1=side1)
    per_pair = pair_bytes(layer, x1, want_ntk)
    if layer.needs_full_spatial() and x1.ndim > 2:
        # A chunk holds at least one pair and the two self pairs it needs.
        check_budget(per_pair * (1 if x2 is None else 3), budget)

        def block(xa, xb, sa, sb, diag):
            return evaluate_pairs(layer, xa, xb, want_ntk=want_ntk, diagonal=diag, per_pair=per_pair,
                                  budget=budget, side1=sa, side2=sb, want_nngp=want_nngp)

        trimmed = evaluate_trimmed(layer, x1, x2, side1, side2, diagonal, block)
        if trimmed is not None:  # padded graphs at their own sizes (ntkit.infinite.graph_trim)
            return trimmed
        return evaluate_pairs(
            layer, x1, x2, want_ntk=want_ntk, diagonal=diagonal, per_pair=per_pair, budget=budget,
            side1=side1, side2=side2, want_nngp=want_nngp,
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
            nngp=torch.cat([p.nngp for p in parts]) if want_nngp else None,
            ntk=torch.cat([p.ntk for p in parts]) if want_ntk else None,
            var1=var1,
            var2=var2,
            diagonal=True,
        )
    return _evaluate_tiles(run, x1, x2, want_ntk, want_nngp, per_pair, budget)


def check_outputs(layer, x1, x2, *, want_ntk: bool, want_nngp: bool, diagonal: bool,
                  side1: dict | None = None) -> None:
    """MemoryBudgetError, before any tile is computed, when the outputs cannot be allocated.

    The entries per pair are those of the layer's output kernel: one for a readout, the
    positions (or pairs of positions) for spatial outputs, found from one example with
    itself (the cheapest tile) when the input is spatial.
    """
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    pairs = n1 if diagonal else n1 * n2
    fields = int(want_ntk) + int(want_nngp)
    itemsize = x1.element_size()
    entries = 1
    what = "diagonal" if diagonal else f"{n1}×{n2}"
    names = " and ".join(n for n, w in (("NNGP", want_nngp), ("NTK", want_ntk)) if w)

    def check() -> None:
        check_output(
            pairs * entries * fields * itemsize,
            f"the {what} {x1.dtype} {names} ({entries} entries per pair)",
            "ntkit.linalg.KernelOperator (matrix-free products, iterative solvers such as "
            "ntkit.linalg.solve(..., solver='cg' or 'nystrom')), diagonal=True for the "
            "diagonal only, get='ntk' or 'nngp' for one kernel, or smaller batches",
            x1.device,
        )

    check()  # at least one entry per pair: no work yet
    if x1.ndim > 2:
        probe = kernel_block(layer, x1[:1], None, want_ntk=False, diagonal=True,
                             side_a=take(side1, slice(0, 1)))
        entries = math.prod(probe.nngp.shape[1:])
        if entries > 1:
            check()


def _evaluate_tiles(run, x1, x2, want_ntk, want_nngp, bytes_per_pair, budget) -> Kernel:
    symmetric = x2 is None
    cols_src = x1 if symmetric else x2
    n1, n2 = x1.shape[0], cols_src.shape[0]
    side = tile_side(bytes_per_pair, budget, x1.element_size(), tile_cap(n1 * n2, x1.dtype, x1.device))
    rows, cols = (min(n1, side),) * 2 if symmetric else rect_blocks(n1, n2, bytes_per_pair, budget, side)
    var1_parts: dict[int, torch.Tensor] = {}
    var2_parts: dict[int, torch.Tensor] = {}
    layout: list = []

    def compute(t: Tile):
        state = run(t.rows, None if t.diagonal else t.cols, False)
        var1_parts.setdefault(t.r0, state.var1)
        if t.r0 == 0 and not symmetric:
            var2_parts[t.c0] = state.var2
        if not layout:
            layout.append((len(state.spatial), state.full_spatial))
        return state.nngp if want_nngp else None, state.ntk

    def outputs(parts):
        first = parts[0] if parts[0] is not None else parts[1]
        shape = (n1, n2, *first.shape[2:])
        return [first.new_empty(shape) if p is not None else None for p in parts]

    def swap(t: torch.Tensor) -> torch.Tensor:
        return swap_pair_axes(t, *layout[0])

    out_nngp, out_ntk = assemble(grid(n1, n2, rows, cols, symmetric=symmetric), compute, outputs,
                                 symmetric=symmetric, swap=swap)
    var1 = torch.cat([var1_parts[r] for r in sorted(var1_parts)])
    var2 = var1 if symmetric else torch.cat([var2_parts[c] for c in sorted(var2_parts)])
    return Kernel(nngp=out_nngp, ntk=out_ntk, var1=var1, var2=var2, diagonal=False)
