"""The local backend of :class:`~ntkit.linalg.KernelOperator`: tiles on a thread pool.

Tiles are computed ``threads`` at a time, each on its own thread with torch
single-threaded inside (:func:`ntkit.tiling.map_tiles`); results are added up in grid
order, so products do not depend on the thread count or timing. A float32 operator's tile
products ``K_IJ v_J`` are float32 (through the product route of :mod:`ntkit.hardware`) and
are added up across tiles in float64, rounded to float32 once at the end (the error of a
product is then that of one tile, whatever the number of tiles). The tile cache (the upper
row panels of a symmetric kernel, the whole matrix otherwise) lives here.

A backend implements ``name``, ``attach(op)``, ``matvec(op, v, transpose)``,
``gram(op, v, rows)``, ``gram_matrix(op, Y)``, ``build_cache(op)``, ``dense(op, sub)`` and
``close(op)``; :class:`ntkit.linalg.dask_backend.DaskBackend` is the other one.
"""

from __future__ import annotations

import numpy as np
import torch

from .._fast_matmul import matmul
from ..hardware import tile_threads
from ..tiling import Tile, map_tiles


class LocalBackend:
    """Tiles computed in this process, ``threads`` at a time (see the module docstring).

    Args:
        threads: tiles computed at once (default :func:`ntkit.hardware.tile_threads`:
            ``torch.get_num_threads()``, or the logical CPUs of a hyper-threaded CPU where
            they measurably help), each with torch single-threaded inside; ``1`` leaves
            torch's own threading alone.
    """

    name = "local"

    def __init__(self, threads: int | None = None) -> None:
        from ..errors import ParameterError

        if threads is None:
            threads = tile_threads()
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ParameterError(f"threads must be an integer >= 1, got {threads!r}")
        self.threads = int(threads)

    def attach(self, op) -> None:
        """Nothing to set up locally."""

    def close(self, op) -> None:
        """Nothing to release locally."""

    def __repr__(self) -> str:
        return f"LocalBackend(threads={self.threads})"

    # ------------------------------------------------------------------ helpers
    def map(self, op, fn, items: list, desc: str):
        # e.g. compiled loops holding the GIL (ntkit.infinite.fused_fc): parallel inside instead
        threads = 1 if op.source.serial_tiles else op.threads
        return map_tiles(fn, items, threads=threads, progress=op.progress, desc=desc)

    def fill(self, op, dest: torch.Tensor, tiles: list[Tile], r_off: int, mirror: bool, desc: str) -> None:
        """Write ``tiles`` into ``dest`` (rows offset by ``r_off``), on the worker threads;
        ``mirror`` also writes each off-diagonal tile's transpose (symmetric, ``r_off = 0``)."""

        def work(t: Tile) -> None:
            tile = op.source.block(t.rows, t.cols)
            dest[t.r0 - r_off : t.r1 - r_off, t.c0 : t.c1] = tile
            if mirror and not t.diagonal:
                dest[t.c0 : t.c1, t.r0 : t.r1] = tile.T

        for _ in self.map(op, work, tiles, desc):
            pass

    # ------------------------------------------------------------------ products
    def matvec(self, op, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        n1, n2 = op.shape
        # float32 tile products, summed across tiles in float64 (module docstring)
        acc = torch.float64 if v.dtype == torch.float32 else v.dtype
        out = v.new_zeros((n2 if transpose else n1, v.shape[1]), dtype=acc)
        if op.cached:
            self.build_cache(op)
            if op.symmetric:
                for r0, r1, panel in op._cache:
                    out[r0:r1] += matmul(panel, v[r0:])
                    out[r1:] += matmul(panel[:, r1 - r0 :].T, v[r0:r1])
                return out.to(v.dtype)
            return matmul(op._cache.T, v) if transpose else matmul(op._cache, v)

        def work(t: Tile):
            tile = op.source.block(t.rows, t.cols)
            if transpose:
                return None, times_transposed(tile, v[t.rows])
            back = times_transposed(tile, v[t.rows]) if op.symmetric and not t.diagonal else None
            return times_transposed(tile.T, v[t.cols]), back

        tiles = op.tile_grid()
        for t, (forward, backward) in zip(tiles, self.map(op, work, tiles, "K @ v")):
            if forward is not None:
                out[t.rows] += forward
            if backward is not None:
                out[t.cols] += backward
        return out.to(v.dtype)

    def gram(self, op, v: torch.Tensor, rows: int) -> torch.Tensor:
        n1, n2 = op.shape
        rows = max(rows, 1)
        out = v.new_zeros((n2, v.shape[1]))
        panel = v.new_empty((min(rows, n1), n2))
        for r0 in range(0, n1, rows):
            r1 = min(n1, r0 + rows)
            p = panel[: r1 - r0]
            self.fill(op, p, op.panel_grid(r0, r1), r0, False, "Kᵀ K v")
            out += p.T @ (p @ v)
        return out

    def panels(self, op):
        """Yield ``(r0, r1, K[r0:r1, :])`` full-width row panels within the budget."""
        n1, n2 = op.shape
        rows = op.panel_rows()
        if op.dtype != torch.float64:
            rows //= 3  # the caller's float64 copy of a panel is twice its size
        rows = max(1, rows)
        if op._cache is not None and not op.symmetric:
            for r0 in range(0, n1, rows):
                yield r0, min(n1, r0 + rows), op._cache[r0 : r0 + rows]
            return
        if rows >= op.tile:
            rows -= rows % op.tile  # panels made of whole tiles: diagonal tiles stay aligned
        buf = torch.empty((min(rows, n1), n2), dtype=op.dtype, device=op.device)
        for r0 in range(0, n1, rows):
            r1 = min(n1, r0 + rows)
            p = buf[: r1 - r0]
            self.fill(op, p, op.panel_grid(r0, r1), r0, False, "Kᵀ K")
            yield r0, r1, p

    def gram_matrix(self, op, Y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        n2 = op.shape[1]
        G = torch.zeros((n2, n2), dtype=torch.float64, device=op.device)
        b = None if Y is None else torch.zeros((n2, Y.shape[1]), dtype=torch.float64, device=op.device)
        for r0, r1, panel in self.panels(op):
            p64 = panel.to(torch.float64)
            syrk_update(G, p64)
            if b is not None:
                b += p64.T @ Y[r0:r1]
        mirror_upper(G)
        return G, b

    # ------------------------------------------------------------------ cache, dense
    def build_cache(self, op) -> None:
        if op._cache is not None:
            return
        n1, n2 = op.shape
        s = op.tile
        if not op.symmetric:
            dense = torch.empty((n1, n2), dtype=op.dtype, device=op.device)
            self.fill(op, dense, op.tile_grid(), 0, False, "kernel tiles")
            op._cache = dense
            return
        # upper row panels K[I, I.start:], all tiles on and above the diagonal
        panels = {r0: torch.empty((min(n1, r0 + s) - r0, n1 - r0), dtype=op.dtype, device=op.device)
                  for r0 in range(0, n1, s)}

        def work(t: Tile) -> None:
            panels[t.r0][:, t.c0 - t.r0 : t.c1 - t.r0] = op.source.block(t.rows, t.cols)

        for _ in self.map(op, work, op.tile_grid(), "kernel tiles"):
            pass
        op._cache = [(r0, min(n1, r0 + s), panels[r0]) for r0 in sorted(panels)]

    def dense(self, op, sub: int | None = None) -> torch.Tensor:
        if op._cache is not None:
            return self._dense_from_cache(op)
        out = torch.empty(op.shape, dtype=op.dtype, device=op.device)
        self.fill(op, out, op.tile_grid(sub), 0, op.symmetric, "kernel tiles")
        return out

    @staticmethod
    def _dense_from_cache(op) -> torch.Tensor:
        if not op.symmetric:
            return op._cache.clone()
        n = op.shape[0]
        out = torch.empty((n, n), dtype=op.dtype, device=op.device)
        for r0, r1, panel in op._cache:
            out[r0:r1, r0:] = panel
            out[r1:, r0:r1] = panel[:, r1 - r0 :].T
        return out


def times_transposed(m: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``mᵀ u`` for a tile ``m (r, c)`` and a thin ``u (r, k)``, formed as ``(uᵀ m)ᵀ``.

    With ``k`` (right-hand sides) far below the tile side, the product with the tile on the
    right reads it row by row once; ``m.T @ u`` and ``m @ u`` were 1.4–3.7× slower on the
    2-core AMD EPYC (MKL and oneDNN alike; 512² float32 tile, k = 10: 0.38 ms against
    0.55 ms and 1.42 ms), about a quarter of a compiled tile's time.
    """
    return matmul(u.T, m).T


def syrk_update(G: torch.Tensor, P: torch.Tensor) -> None:
    """``G += Pᵀ P`` on the upper triangle of ``G`` (float64); full ``addmm`` off the CPU."""
    if G.device.type != "cpu":
        G.addmm_(P.T, P)
        return
    from scipy.linalg import blas

    Gf = G.numpy().T  # Fortran-ordered view of the same memory: BLAS updates it in place
    Pf = np.ascontiguousarray(P.numpy()).T  # (n2, rows), Fortran-ordered
    out = blas.dsyrk(1.0, Pf, beta=1.0, c=Gf, trans=0, lower=1, overwrite_c=1)
    if not np.shares_memory(out, Gf):  # pragma: no cover - BLAS copied: write back
        Gf[...] = out


def mirror_upper(G: torch.Tensor) -> torch.Tensor:
    """Copy the upper triangle of ``G`` onto its lower one, in place (blocks of rows)."""
    n = G.shape[0]
    step = 1024
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        # columns r0:r1 below the diagonal block, and the diagonal block's lower part
        if r1 < n:
            G[r1:, r0:r1] = G[r0:r1, r1:].T
        diag = G[r0:r1, r0:r1]
        diag.copy_(torch.triu(diag) + torch.triu(diag, 1).T)
    return G
