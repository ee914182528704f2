"""The pair grid of a kernel matrix, walked tile by tile under a memory budget.

Every kernel in ntkit — the infinite-width engine, the empirical NTK, the matrix-free
:class:`~ntkit.linalg.KernelOperator` — is a function of pairs of examples, so its
``(n1, n2)`` matrix can be cut into tiles computed one after another (or a few at once on
a thread pool) with bounded temporaries. This module owns that walk:

- **sizes** (:func:`square_side`, :func:`rect_blocks`, :func:`tile_cap`): the side of a tile
  from the bytes of temporaries per pair and the budget, capped to about cache size — the
  size measured on this CPU for large walks (:func:`ntkit.hardware.tile_entries`), a fixed
  default for small ones;
- **the walk** (:func:`grid`; :func:`walk` over given bounds, e.g. :func:`even_bounds`):
  row-major tiles; with ``symmetric=True`` (``x2=None``) only the tiles on and above the
  block diagonal, whose transposes are the rest;
- **assembly** (:func:`assemble`): tiles written into dense results, the off-diagonal ones
  of a symmetric matrix mirrored and the diagonal ones made exactly symmetric;
- **streaming** (:func:`map_tiles`): results handed to a consumer in grid order (sums are
  then independent of thread count and timing), computed on a thread pool with torch
  single-threaded inside each worker.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from . import hardware

#: Kernel entries of a cache-friendly tile when nothing is measured (small walks, other
#: devices, ``NTKIT_TUNE=0``): 512², measured on the 2-core AMD EPYC (benchmarks/RESULTS.md).
CACHE_TILE_ENTRIES = hardware.DEFAULT_TILE_ENTRIES
#: Walks of at least this many pairs (a 11,585² kernel; seconds of work) use the tile size
#: measured on this CPU; smaller ones never pay for the probe (~0.3 s, once per process).
TUNE_MIN_PAIRS = 1 << 27


def tile_cap(pairs: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> int:
    """Kernel entries per tile for a walk over ``pairs`` pairs of ``dtype`` entries on ``device``.

    :data:`CACHE_TILE_ENTRIES` below :data:`TUNE_MIN_PAIRS` pairs or off the CPU; otherwise
    :func:`ntkit.hardware.tile_entries` (measured once per process and dtype), and freed tile
    temporaries are kept for reuse from then on (:func:`ntkit.hardware.keep_freed_memory`).
    """
    if torch.device(device).type != "cpu" or pairs < TUNE_MIN_PAIRS:
        return CACHE_TILE_ENTRIES
    hardware.keep_freed_memory()
    return hardware.tile_entries(dtype)


@dataclass(frozen=True)
class Tile:
    """Rows ``[r0, r1)`` × columns ``[c0, c1)`` of the pair grid.

    ``diagonal`` is True for a tile on the diagonal of a symmetric walk (same rows as
    columns): its lower half is the transpose of its upper half.
    """

    r0: int
    r1: int
    c0: int
    c1: int
    diagonal: bool = False

    @property
    def rows(self) -> slice:
        return slice(self.r0, self.r1)

    @property
    def cols(self) -> slice:
        return slice(self.c0, self.c1)

    @property
    def pairs(self) -> int:
        return (self.r1 - self.r0) * (self.c1 - self.c0)


def square_side(per_pair: int, budget: int, cap_pairs: int | None = CACHE_TILE_ENTRIES) -> int:
    """Largest side ``s`` (at least 1) with ``s² · per_pair <= budget`` and ``s² <= cap_pairs``."""
    side = math.isqrt(max(1, int(budget) // max(1, int(per_pair))))
    if cap_pairs is not None:
        side = min(side, math.isqrt(max(1, int(cap_pairs))))
    return max(1, side)


def chunk_pairs(per_pair: int, budget: int, cap_pairs: int | None = None) -> int:
    """Pairs in one chunk of a flat pair list: within ``budget`` and ``cap_pairs`` (at least 1)."""
    pairs = int(budget) // max(1, int(per_pair))
    if cap_pairs is not None:
        pairs = min(pairs, int(cap_pairs))
    return max(1, pairs)


def rect_blocks(n1: int, n2: int, per_pair: int, budget: int, side: int) -> tuple[int, int]:
    """``(rows, cols)`` of a non-symmetric tile: ``side`` rows, as many columns as the budget
    allows (at least ``side``), each clipped to the matrix."""
    rows = max(1, min(n1, side))
    cols = min(n2, max(side, (int(budget) // max(1, int(per_pair))) // rows))
    return rows, max(1, cols)


def grid(n1: int, n2: int, rows: int, cols: int | None = None, *, symmetric: bool = False,
         row_start: int = 0, row_stop: int | None = None) -> list[Tile]:
    """Tiles of ``rows × cols`` covering ``[row_start, row_stop) × [0, n2)``, row-major.

    ``symmetric=True`` (then ``n1 == n2`` and square tiles): only tiles with ``c0 >= r0``;
    the tile with ``c0 == r0`` is marked ``diagonal``.
    """
    cols = rows if cols is None else cols
    if symmetric and cols != rows:
        raise ValueError("a symmetric walk needs square tiles")
    stop = n1 if row_stop is None else row_stop
    return walk(steps(row_start, stop, rows), steps(0, n2, cols), symmetric=symmetric)


def steps(start: int, stop: int, step: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into ``[a, a + step)`` pieces (the last one shorter)."""
    return [(a, min(stop, a + step)) for a in range(start, stop, step)]


def even_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into ``parts`` pieces whose sizes differ by at most one."""
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


def walk(row_bounds: Sequence[tuple[int, int]], col_bounds: Sequence[tuple[int, int]], *,
         symmetric: bool = False) -> list[Tile]:
    """The tiles ``row_bounds × col_bounds``, row-major; ``symmetric=True`` (the same bounds
    both ways): only those on and above the diagonal, the diagonal ones marked."""
    return [Tile(r0, r1, c0, c1, symmetric and c0 == r0)
            for r0, r1 in row_bounds for c0, c1 in col_bounds if not (symmetric and c0 < r0)]


def transpose_pairs(t: torch.Tensor) -> torch.Tensor:
    """The tile of the swapped pairs for a ``(rows, cols, ...)`` tile with no pair axes."""
    return t.transpose(0, 1)


@contextlib.contextmanager
def torch_threads(n: int):
    """Set torch's intra-op threads to ``n`` for the block (process-wide), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress(total: int, desc: str, enabled: bool | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=None if enabled is None else not enabled, leave=False)


def map_tiles(fn: Callable[[Any], Any], items: Sequence[Any], *, threads: int = 1,
              progress: bool | None = False, desc: str = "kernel tiles") -> Iterator[Any]:
    """``fn(item)`` for each item, yielded in order (so sums do not depend on timing).

    With ``threads > 1``: a pool of worker threads, torch single-threaded (process-wide,
    restored afterwards), at most ``2·threads`` items submitted ahead — about ``threads``
    tiles' temporaries alive at once.
    """
    items = list(items)
    with _progress(len(items), desc, progress) as bar:
        if threads <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        with torch_threads(1), ThreadPoolExecutor(
            threads, initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            queue = iter(items)
            pending = collections.deque(
                pool.submit(fn, item) for item in itertools.islice(queue, 2 * threads)
            )
            while pending:
                result = pending.popleft().result()
                pending.extend(pool.submit(fn, item) for item in itertools.islice(queue, 1))
                yield result
                bar.update()


def assemble(
    tiles: Iterable[Tile],
    compute: Callable[[Tile], Sequence[torch.Tensor | None]],
    outputs: Callable[[Sequence[torch.Tensor | None]], Sequence[torch.Tensor | None]],
    *,
    symmetric: bool,
    swap: Callable[[torch.Tensor], torch.Tensor] = transpose_pairs,
    symmetrize_diagonal: bool = True,
    row_offset: int = 0,
    threads: int = 1,
    progress: bool | None = False,
    desc: str = "kernel tiles",
) -> Sequence[torch.Tensor | None]:
    """Write each tile's parts into dense results; return the results.

    Args:
        tiles: the walk (:func:`grid`).
        compute: ``tile -> parts``, one tensor per result (``None``: not kept), each
            ``(r1 - r0, c1 - c0, ...)``.
        outputs: ``first parts -> results`` (called once, with the first tile's parts:
            results are allocated when their trailing shape is known).
        symmetric: the walk is the upper half of a symmetric matrix: each off-diagonal
            tile's ``swap`` is written at ``[c0:c1, r0:r1]``; diagonal tiles become
            ``(T + swap(T)) / 2`` (exactly symmetric) when ``symmetrize_diagonal``.
        swap: the tile of the swapped pairs (default: the transpose of the first two axes).
        row_offset: results hold rows ``[row_offset, ...)`` (a row panel).
        threads, progress, desc: as for :func:`map_tiles`.
    """
    tiles = list(tiles)
    results: list = []

    def place(tile: Tile, parts) -> None:
        if not results:
            results.extend(outputs(parts))
        r0, r1 = tile.r0 - row_offset, tile.r1 - row_offset
        for out, part in zip(results, parts):
            if out is None or part is None:
                continue
            if symmetric and tile.diagonal and symmetrize_diagonal:
                part = 0.5 * (part + swap(part))
            out[r0:r1, tile.c0 : tile.c1] = part
            if symmetric and not tile.diagonal:
                out[tile.c0 : tile.c1, r0:r1] = swap(part)

    if threads <= 1 and not progress:
        for tile in tiles:
            place(tile, compute(tile))
    else:
        for tile, parts in zip(tiles, map_tiles(compute, tiles, threads=threads, progress=progress,
                                                desc=desc)):
            place(tile, parts)
    return results
