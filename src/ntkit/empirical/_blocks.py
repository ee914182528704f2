"""Blocks of examples under a memory budget, and the pair grid they tile.

A method exposes ``features(x_block)`` (per-example work: Jacobians, captured layer inputs
and cotangents, ...), ``pair(f1, f2, output)`` (one kernel block) and the byte estimates
``feature_bytes(b)`` / ``pair_bytes(b1, b2, output)``. The block size is the largest that
keeps two feature blocks and one pair's temporaries under the budget. The pair grid is
walked by :mod:`ntkit.tiling` (the one walker of the library): with ``x2=None`` only blocks
on and above the diagonal are computed; the rest are their transposes. Features are kept
for reuse when all of them fit in half the budget, and recomputed otherwise. A method that
computes a block with itself by halves (``symmetric_pairs``) gets a symmetric kernel as one
block when the features of all examples and that block's temporaries fit (its
``fits_once(n, output, budget)`` says so, and may shrink those temporaries to make room):
each example's features are then computed once and held once.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_positive_int
from ..budget import DEFAULT_MEMORY_BUDGET, describe
from ..errors import MemoryBudgetError
from ..tiling import Tile, assemble, grid
from .inputs import Examples

__all__ = ["DEFAULT_MEMORY_BUDGET", "block_size", "caches", "describe", "swap", "tile"]


def block_size(method, n: int, output: str, budget: int, batch_size: int | None,
               symmetric: bool = False) -> int:
    """Examples per block: ``batch_size`` if given, else the largest that fits ``budget``
    (``symmetric``: ``x2=None``, where one block of all ``n`` examples holds one feature block)."""
    if batch_size is not None:
        return min(check_positive_int(batch_size, "batch_size"), n)
    if symmetric and getattr(method, "symmetric_pairs", False) and method.fits_once(n, output, budget):
        return n

    def fits(b: int) -> bool:
        return 2 * method.feature_bytes(b) + method.pair_bytes(b, b, output) <= budget

    if not fits(1):
        need = 2 * method.feature_bytes(1) + method.pair_bytes(1, 1, output)
        raise MemoryBudgetError(
            f"method={method.name!r} needs {describe(need)} for the smallest block (a single "
            f"pair of examples) but memory_budget is {describe(budget)}; raise memory_budget to "
            f"at least {need} bytes or use another method"
        )
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    blocks = math.ceil(n / lo)
    return math.ceil(n / blocks)  # equal-sized blocks


def caches(method, n_examples: int, budget: int) -> bool:
    """Whether the features of all examples fit in half the budget."""
    return method.feature_bytes(n_examples) <= budget // 2


def swap(block: torch.Tensor, output: str) -> torch.Tensor:
    """The block of the swapped pairs: ``K[j, i, o', o]`` from ``K[i, j, o, o']``."""
    if output == "full":
        return block.permute(1, 0, 3, 2)
    return block.transpose(0, 1)


def tile(method, x1: Examples, x2: Examples | None, output: str, block: int,
         cache: bool) -> torch.Tensor:
    """Assemble the kernel of ``x1`` and ``x2`` (``None``: ``x1``, symmetric) block by block.

    The walk is :func:`ntkit.tiling.grid` (with ``x2=None`` only the blocks on and above the
    diagonal), assembled by :func:`ntkit.tiling.assemble` (mirrored with :func:`swap`,
    diagonal blocks made exactly symmetric). A row block's features serve its whole row of
    blocks; with ``cache`` every block's features are kept for reuse.
    """
    symmetric = x2 is None
    columns = x1 if symmetric else x2
    n1, n2 = len(x1), len(columns)
    store: dict[tuple[int, int], object] = {}
    row: dict[str, object] = {}  # the current row block's features

    def features(side: int, start: int):
        key = (side, start)
        if key in store:
            return store[key]
        x = x1 if side == 1 else columns
        f = method.features(x[start : start + block])
        if cache:
            store[key] = f
        return f

    def compute(t: Tile):
        if row.get("r0") != t.r0:
            row.clear()  # the previous row's features are freed before the next are made
            row.update(r0=t.r0, f=features(1, t.r0))
        f1 = row["f"]
        f2 = f1 if t.diagonal else features(1 if symmetric else 2, t.c0)
        return (method.pair(f1, f2, output),)

    def outputs(parts):
        return [parts[0].new_empty((n1, n2, *parts[0].shape[2:]))]

    (out,) = assemble(grid(n1, n2, block, symmetric=symmetric), compute, outputs,
                      symmetric=symmetric, swap=lambda part: swap(part, output))
    return out
