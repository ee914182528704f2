"""The matrix-free kernel operator: ``K v`` tile by tile under a memory budget.

:class:`KernelOperator` stands for the ``(n1, n2)`` infinite-width kernel matrix of an
architecture on two batches without forming it. Products ``K v`` are accumulated tile by
tile; with ``x2=None`` the matrix is symmetric and only the tiles on and above the block
diagonal are computed, each contributing ``K_IJ v_J`` and ``K_IJᵀ v_I``.

**Cost.** Without the cache every product recomputes every tile: one product costs one
kernel evaluation (half of it when symmetric), so an iterative solver with ``t`` products
pays ``t`` kernel evaluations. With the cache (``cache="auto"``: whenever the stored
tiles fit in ``memory_budget``) the tiles are computed at the first product and kept —
``n²/2`` entries for a symmetric operator (the upper row panels), ``n1·n2`` otherwise —
so later products are plain matrix products, memory-bandwidth bound.

**Memory.** At most ``memory_budget`` bytes of working memory (see
:mod:`ntkit.linalg.budget`): the temporaries of the tiles in flight, the cache, and the row
panel of :meth:`KernelOperator.gram`. ``to_dense`` is refused past the budget.

**Parallelism.** Tiles are computed ``threads`` at a time, each on its own thread with
torch single-threaded inside (see the ``threads`` argument); results are added up in a
fixed order, so products do not depend on the thread count or timing.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .._validation import as_input_pair, as_tensor, check_choice, resolve_dtype
from ..errors import DeviceError, MemoryBudgetError, ParameterError, ShapeError
from ..infinite.layers import Layer
from . import _tiles
from .budget import TileCost, format_bytes, parse_bytes, symmetric_cache_bytes
from .dask_backend import DEFAULT_CONNECT_TIMEOUT, get_client, put, wait_all

_GETS = ("ntk", "nngp")
_BACKENDS = ("local", "dask")
#: Default side of a Dask block (a task): large enough to amortize the task overhead.
DEFAULT_DASK_BLOCK = 2048


@contextlib.contextmanager
def _torch_threads(n: int):
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


class KernelOperator:
    """The ``(n1, n2)`` kernel matrix ``k(x1_i, x2_j)`` of ``arch`` as a linear operator.

    Args:
        arch: an architecture (:class:`~ntkit.Layer`), fully-connected or convolutional;
            its kernel must be one number per pair (end spatial nets with a readout).
        x1: ``(n1, *in_shape)`` row inputs (tensor or NumPy array).
        x2: ``(n2, *in_shape)`` column inputs, or ``None`` for ``x2 = x1`` (symmetric:
            tiles on and above the diagonal only, each example's pair with itself exact).
        get: ``"ntk"`` (default) or ``"nngp"``.
        memory_budget: bytes of working memory (int or ``"4GiB"``; default 1 GiB): one
            tile's temporaries plus the tile cache (see the module docstring).
        dtype: ``torch.float64`` (default) or ``torch.float32``.
        cache: ``"auto"`` (cache the tiles when they fit the budget), ``True`` (cache, or
            raise MemoryBudgetError) or ``False`` (recompute the tiles at every product).
        tile: side of a tile in examples (default: the largest about-cache-sized tile in
            the budget).
        backend: ``"local"`` or ``"dask"`` (see :mod:`ntkit.linalg.dask_backend`).
        client: Dask only: ``None`` (default client or a LocalCluster), a scheduler
            address, or a ``distributed.Client``.
        block: Dask only: side of a block, one task (default 2048, reduced to fit the
            budget; each task holds one block plus one tile's temporaries).
        timeout: Dask only: seconds to wait for one computation (``None``: no limit).
        connect_timeout: Dask only: seconds to wait for a scheduler address to answer.
        progress: show a progress bar over tiles (``None``: only on a terminal).
        threads: local backend: tiles computed at once, each on its own thread with torch
            single-threaded inside (default ``torch.get_num_threads()``). Many small
            elementwise passes parallelize poorly inside torch, and on a busy machine its
            threads' barriers cost far more than the work (benchmarks/RESULTS.md); whole
            tiles per thread avoid
            both. While tiles run, torch's intra-op thread count is 1 process-wide (it is
            restored afterwards); ``threads=1`` computes tiles one by one and leaves torch's
            setting alone. The budget is shared: each tile gets ``1/threads`` of it.

    Shapes: ``op @ v`` takes ``(n2,)`` or ``(n2, k)`` and returns ``(n1,)`` or ``(n1, k)``
    in the operator's dtype, on the inputs' device.
    """

    def __init__(
        self,
        arch: Layer,
        x1: Any,
        x2: Any = None,
        get: str = "ntk",
        *,
        memory_budget: int | str | None = None,
        dtype: Any = None,
        cache: bool | str = "auto",
        tile: int | None = None,
        backend: str = "local",
        client: Any = None,
        block: int | None = None,
        timeout: float | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        progress: bool | None = False,
        threads: int | None = None,
        _pinned: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(arch, Layer):
            raise ParameterError(
                f"arch must be an ntkit architecture (a Layer such as nk.serial(...)), got "
                f"{type(arch).__name__}"
            )
        self.arch = arch
        self.get = check_choice(get, "get", _GETS)
        self.backend = check_choice(backend, "backend", _BACKENDS)
        if cache not in ("auto", True, False):
            raise ParameterError(f"cache must be 'auto', True or False, got {cache!r}")
        dt = resolve_dtype(dtype)
        if dt not in (torch.float32, torch.float64):
            raise ParameterError(f"dtype must be torch.float64 or torch.float32, got {dt}")
        self.memory_budget = parse_bytes(memory_budget)
        x1, x2 = as_input_pair(x1, x2, dtype=dt)
        if x2 is not None:
            if _pinned is None and x2.shape == x1.shape and torch.equal(x1, x2):
                x2 = None  # k(x, x): symmetric, as arch.kernel does
        if self.backend == "dask" and x1.device.type != "cpu":
            raise DeviceError(
                f"backend='dask' ships NumPy arrays to workers; inputs on {x1.device} are not "
                "supported — move them to the CPU or use backend='local'"
            )
        self._x1 = x1.contiguous()
        self._x2 = None if x2 is None else x2.contiguous()
        self._pinned = _pinned
        self.progress = progress
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        if threads is None:
            threads = torch.get_num_threads()
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ParameterError(f"threads must be an integer >= 1, got {threads!r}")
        self.threads = 1 if x1.device.type != "cpu" else int(threads)
        self._cost = TileCost.of(arch, x1, self.get == "ntk")
        self._cost.check(self.memory_budget)
        _tiles.kernel_tile(arch, x1[:1], None, self.get)  # fails early on a bad arch/input

        n1, n2 = self.shape
        budget = self.memory_budget
        if self.backend != "local":
            self.threads = 1  # Dask workers are the parallelism there
        # tiles in flight at once share the budget (at least one tile fits: checked above)
        self.threads = min(self.threads, max(1, budget // self._cost.tile_bytes(1, 1)))
        w = self.threads
        if tile is not None:
            if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
                raise ParameterError(f"tile must be an integer >= 1, got {tile!r}")
            tile = int(tile)
            need = w * self._cost.tile_bytes(tile, tile)
            if need > budget:
                raise MemoryBudgetError(
                    f"tile={tile} needs {need} bytes ({format_bytes(need)}) of temporaries "
                    f"({w} at once) but memory_budget is {budget} bytes ({format_bytes(budget)}); "
                    f"use a smaller tile (at most {self._cost.side(budget // w)} fits) or leave "
                    "tile=None"
                )
        side = tile if tile is not None else self._cost.side(budget // w)
        itemsize = self._cost.itemsize
        cache_bytes = (
            symmetric_cache_bytes(n1, side, itemsize) if self.symmetric else n1 * n2 * itemsize
        )
        self.cache_bytes = cache_bytes
        left = budget - cache_bytes
        if cache is False:
            self.cached = False
        elif tile is not None:
            self.cached = w * self._cost.tile_bytes(tile, tile) <= left
        else:
            # the cache saves recomputing every tile at every product: worth smaller tiles,
            # down to a side of 64 (below that the per-tile overhead dominates)
            smallest = min(64, n1, n2)
            self.cached = left >= w * self._cost.tile_bytes(smallest, smallest)
            if self.cached:
                side = min(side, self._cost.side(left // w))
        if cache is True and not self.cached:
            raise MemoryBudgetError(
                f"cache=True needs {cache_bytes} bytes ({format_bytes(cache_bytes)}) for the "
                f"tiles of this {n1}×{n2} kernel plus one tile's temporaries, but memory_budget "
                f"is {budget} bytes ({format_bytes(budget)}); raise memory_budget or use cache=False"
            )
        self.tile = max(1, min(side, max(n1, n2)))
        self.block = self._dask_block(block)
        self._cache: Any = None
        self._dask: dict[str, Any] | None = None
        # connect now: a scheduler that does not answer fails here, within connect_timeout
        self._client = None
        self._owns_client = False
        if self.backend == "dask":
            self._client = get_client(client, connect_timeout=connect_timeout)
            self._owns_client = isinstance(client, str)  # we opened it: close() closes it

    # ------------------------------------------------------------------ properties
    @property
    def symmetric(self) -> bool:
        """True when ``x2`` was ``None`` (or equal to ``x1``): the matrix is symmetric."""
        return self._x2 is None

    @property
    def shape(self) -> tuple[int, int]:
        n1 = self._x1.shape[0]
        return (n1, n1 if self._x2 is None else self._x2.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self._x1.dtype

    @property
    def device(self) -> torch.device:
        return self._x1.device

    @property
    def x1(self) -> torch.Tensor:
        return self._x1

    @property
    def x2(self) -> torch.Tensor:
        """The column inputs (``x1`` itself for a symmetric operator)."""
        return self._x1 if self._x2 is None else self._x2

    @property
    def T(self) -> _Transposed:
        """The transposed operator ``Kᵀ`` (``op.T @ u``); for a symmetric one, ``op``."""
        return _Transposed(self)

    def __repr__(self) -> str:
        n1, n2 = self.shape
        return (
            f"KernelOperator({n1}×{n2}, get={self.get!r}, dtype={self.dtype}, "
            f"symmetric={self.symmetric}, cached={self.cached}, tile={self.tile}, "
            f"backend={self.backend!r}, memory_budget={format_bytes(self.memory_budget)})"
        )

    # ------------------------------------------------------------------ products
    def __matmul__(self, v: Any) -> torch.Tensor:
        return self.matvec(v)

    def matvec(self, v: Any) -> torch.Tensor:
        """``K v`` for ``v`` of shape ``(n2,)`` or ``(n2, k)``.

        Columns whose rows of ``v`` are all zero are skipped when that saves work (a
        non-symmetric operator without cache and at least half of ``v``'s rows zero — e.g.
        a Nyström ``α``, nonzero at the centres only): ``K v = K[:, S] v[S]``.
        """
        vt, squeeze = self._prepare(v, self.shape[1], "v")
        if not self.symmetric and not self.cached:
            support = vt.ne(0).any(1)
            kept = int(support.sum())
            if kept == 0:
                out = vt.new_zeros((self.shape[0], vt.shape[1]))
                return out[:, 0] if squeeze else out
            if kept <= self.shape[1] // 2:
                sub = self._column_subset(support.nonzero().flatten())
                try:
                    out = sub.matvec(vt[support])
                finally:
                    sub.close()
                return out[:, 0] if squeeze else out
        out = self._dask_matvec(vt, False) if self.backend == "dask" else self._local_matvec(vt, False)
        return out[:, 0] if squeeze else out

    def _column_subset(self, idx: torch.Tensor) -> KernelOperator:
        """``K[:, idx]`` with the same settings (and its pinned entries), never cached."""
        pinned = None
        if self._pinned is not None:
            position = torch.full((self.shape[1],), -1, dtype=torch.long, device=self.device)
            position[idx] = torch.arange(idx.numel(), device=self.device)
            cols = position[self._pinned[1]]
            keep = cols >= 0
            pinned = (self._pinned[0][keep], cols[keep], self._pinned[2][keep])
        return KernelOperator(
            self.arch, self._x1, self.x2[idx], self.get, memory_budget=self.memory_budget,
            dtype=self.dtype, cache=False, backend=self.backend, client=self._client,
            timeout=self.timeout, connect_timeout=self.connect_timeout, progress=self.progress,
            _pinned=pinned,
        )

    def rmatvec(self, u: Any) -> torch.Tensor:
        """``Kᵀ u`` for ``u`` of shape ``(n1,)`` or ``(n1, k)``."""
        if self.symmetric:
            return self.matvec(u)
        ut, squeeze = self._prepare(u, self.shape[0], "u")
        out = self._dask_matvec(ut, True) if self.backend == "dask" else self._local_matvec(ut, True)
        return out[:, 0] if squeeze else out

    def gram(self, v: Any) -> torch.Tensor:
        """``Kᵀ (K v)`` for ``v`` of shape ``(n2,)`` or ``(n2, k)``, each tile computed once.

        Without the cache the kernel is swept in full-width row panels ``K_I`` (as many
        rows as the budget allows), each used for ``K_Iᵀ (K_I v)``; when not even a
        one-row panel fits, it takes two sweeps (``K v``, then ``Kᵀ`` of that).
        """
        vt, squeeze = self._prepare(v, self.shape[1], "v")
        rows = self._panel_rows()
        if self.cached or self.symmetric or rows < 1:
            out = self.rmatvec(self.matvec(vt))
        elif self.backend == "dask":
            out = self._dask_gram(vt, rows)
        else:
            out = self._local_gram(vt, rows)
        return out[:, 0] if squeeze else out

    def gram_matrix(self, y: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(Kᵀ K, Kᵀ y)`` in float64 — ``(n2, n2)`` and ``(n2, k)`` — in one sweep.

        Each tile is computed once, into full-width row panels ``K_I`` (as many rows as the
        budget allows) accumulated with a symmetric rank-``|I|`` update (BLAS ``syrk``).
        Costs ``n1·n2`` kernel entries and ``n1·n2²`` flops; the ``n2²`` result is the
        caller's memory, not the budget's. ``y``: ``(n1,)`` or ``(n1, k)`` or ``None``.
        """
        n1, n2 = self.shape
        Y = None
        squeeze = False
        if y is not None:
            Y, squeeze = self._prepare(y, n1, "y")
            Y = Y.to(torch.float64)
        G = torch.zeros((n2, n2), dtype=torch.float64, device=self.device)
        b = None if Y is None else torch.zeros((n2, Y.shape[1]), dtype=torch.float64, device=self.device)
        if self.backend == "dask":
            for g_part, b_part in self._dask_gram_matrix(Y):
                G += torch.from_numpy(g_part)
                if b is not None:
                    b += torch.from_numpy(b_part)
            return G, (b[:, 0] if b is not None and squeeze else b)
        for r0, r1, panel in self._local_panels():
            p64 = panel.to(torch.float64)
            _syrk_update(G, p64)
            if b is not None:
                b += p64.T @ Y[r0:r1]
        _mirror_upper(G)
        if b is not None and squeeze:
            b = b[:, 0]
        return G, b

    def _local_panels(self):
        """Yield ``(r0, r1, K[r0:r1, :])`` full-width row panels within the budget."""
        n1, n2 = self.shape
        rows = self._panel_rows()
        if self.dtype != torch.float64:
            rows //= 3  # the caller's float64 copy of a panel is twice its size
        rows = max(1, rows)
        if self._cache is not None and not self.symmetric:
            for r0 in range(0, n1, rows):
                yield r0, min(n1, r0 + rows), self._cache[r0 : r0 + rows]
            return
        if rows >= self.tile:
            rows -= rows % self.tile  # panels made of whole tiles: diagonal tiles stay aligned
        buf = self._x1.new_empty((min(rows, n1), n2))
        for r0 in range(0, n1, rows):
            r1 = min(n1, r0 + rows)
            p = buf[: r1 - r0]
            self._fill(p, self._panel_grid(r0, r1), r0, False, "Kᵀ K")
            yield r0, r1, p

    def _prepare(self, v: Any, n: int, name: str) -> tuple[torch.Tensor, bool]:
        vt = as_tensor(v, name, dtype=self.dtype, min_ndim=1, max_ndim=2, device=self.device)
        if vt.shape[0] != n:
            raise ShapeError(
                f"{name} must have {n} rows to multiply a {self.shape[0]}×{self.shape[1]} "
                f"kernel operator, got shape {tuple(vt.shape)}"
            )
        squeeze = vt.ndim == 1
        return (vt[:, None] if squeeze else vt), squeeze

    # ------------------------------------------------------------------ local backend
    def _tile(self, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        if self.symmetric and r0 == c0 and r1 == c1:
            return _tiles.kernel_tile(self.arch, self._x1[r0:r1], None, self.get)
        tile = _tiles.kernel_tile(self.arch, self._x1[r0:r1], self.x2[c0:c1], self.get)
        pins = _tiles.pinned_in(self._pinned, r0, r1, c0, c1)
        if pins is not None:
            tile[pins[0], pins[1]] = pins[2]
        return tile

    def _tile_grid(self, side: int | None = None) -> list[tuple[int, int, int, int]]:
        """Tiles of side ``side`` (default ``self.tile``); on/above the diagonal if symmetric."""
        n1, n2 = self.shape
        s = self.tile if side is None else side
        grid = []
        for r0 in range(0, n1, s):
            for c0 in range(r0 if self.symmetric else 0, n2, s):
                grid.append((r0, min(n1, r0 + s), c0, min(n2, c0 + s)))
        return grid

    def _map(self, fn, items: list, desc: str):
        """``fn(item)`` for each item, results yielded in order (deterministic sums).

        With ``threads > 1``: on a pool of worker threads, torch single-threaded, at most
        ``2·threads`` items submitted ahead (``threads`` tiles' temporaries alive at once).
        """
        with _progress(len(items), desc, self.progress) as bar:
            if self.threads <= 1 or len(items) <= 1:
                for item in items:
                    yield fn(item)
                    bar.update()
                return
            with _torch_threads(1), ThreadPoolExecutor(
                self.threads, initializer=torch.set_num_threads, initargs=(1,)
            ) as pool:
                queue = iter(items)
                pending = collections.deque(
                    pool.submit(fn, item) for item in itertools.islice(queue, 2 * self.threads)
                )
                while pending:
                    result = pending.popleft().result()
                    pending.extend(pool.submit(fn, item) for item in itertools.islice(queue, 1))
                    yield result
                    bar.update()

    def _fill(self, dest: torch.Tensor, grid, r_off: int, mirror: bool, desc: str) -> None:
        """Write the tiles ``grid`` into ``dest`` (rows offset by ``r_off``); ``mirror`` also
        writes each off-diagonal tile's transpose (a symmetric dense matrix, ``r_off = 0``)."""

        def work(box):
            r0, r1, c0, c1 = box
            tile = self._tile(r0, r1, c0, c1)
            dest[r0 - r_off : r1 - r_off, c0:c1] = tile
            if mirror and c0 != r0:
                dest[c0:c1, r0:r1] = tile.T

        for _ in self._map(work, list(grid), desc):
            pass

    def _local_matvec(self, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        n1, n2 = self.shape
        out = v.new_zeros((n2 if transpose else n1, v.shape[1]))
        if self.cached:
            self._build_cache()
            if self.symmetric:
                for r0, r1, panel in self._cache:
                    out[r0:r1] += panel @ v[r0:]
                    out[r1:] += panel[:, r1 - r0 :].T @ v[r0:r1]
                return out
            return self._cache.T @ v if transpose else self._cache @ v
        def work(box):
            r0, r1, c0, c1 = box
            tile = self._tile(r0, r1, c0, c1)
            if transpose:
                return None, tile.T @ v[r0:r1]
            back = tile.T @ v[r0:r1] if self.symmetric and c0 != r0 else None
            return tile @ v[c0:c1], back

        grid = self._tile_grid()
        for (r0, r1, c0, c1), (forward, backward) in zip(grid, self._map(work, grid, "K @ v")):
            if forward is not None:
                out[r0:r1] += forward
            if backward is not None:
                out[c0:c1] += backward
        return out

    def _panel_rows(self) -> int:
        """Rows of a full-width panel that fit next to one tile's temporaries."""
        n2 = self.shape[1]
        left = self.memory_budget - self.threads * self._cost.tile_bytes(self.tile, self.tile)
        return min(self.shape[0], left // max(1, n2 * self._cost.itemsize))

    def _local_gram(self, v: torch.Tensor, rows: int) -> torch.Tensor:
        n1, n2 = self.shape
        rows = max(rows, 1)
        out = v.new_zeros((n2, v.shape[1]))
        panel = v.new_empty((min(rows, n1), n2))
        for r0 in range(0, n1, rows):
            r1 = min(n1, r0 + rows)
            p = panel[: r1 - r0]
            self._fill(p, self._panel_grid(r0, r1), r0, False, "Kᵀ K v")
            out += p.T @ (p @ v)
        return out

    def _panel_grid(self, r0: int, r1: int) -> list[tuple[int, int, int, int]]:
        """Tiles of the full-width row panel ``[r0, r1)``."""
        n2 = self.shape[1]
        s = self.tile
        return [
            (a0, min(r1, a0 + s), c0, min(n2, c0 + s))
            for a0 in range(r0, r1, s)
            for c0 in range(0, n2, s)
        ]

    def _build_cache(self) -> None:
        if self._cache is not None:
            return
        if self.backend == "dask":
            self._dask_build_cache()
            return
        n1, n2 = self.shape
        s = self.tile
        if not self.symmetric:
            dense = self._x1.new_empty((n1, n2))
            self._fill(dense, self._tile_grid(), 0, False, "kernel tiles")
            self._cache = dense
            return
        # upper row panels K[I, I.start:], all tiles on and above the diagonal
        panels = {r0: self._x1.new_empty((min(n1, r0 + s) - r0, n1 - r0)) for r0 in range(0, n1, s)}

        def work(box):
            r0, r1, c0, c1 = box
            panels[r0][:, c0 - r0 : c1 - r0] = self._tile(r0, r1, c0, c1)

        for _ in self._map(work, self._tile_grid(), "kernel tiles"):
            pass
        self._cache = [(r0, min(n1, r0 + s), panels[r0]) for r0 in sorted(panels)]

    def precompute(self) -> KernelOperator:
        """Compute and keep the tile cache now (only when the operator caches); returns self."""
        if self.cached:
            self._build_cache()
        return self

    # ------------------------------------------------------------------ dense views
    def diag(self) -> torch.Tensor:
        """The diagonal ``k(x1_i, x2_i)``, ``(min(n1, n2),)``, via ``arch.kernel(diagonal=True)``."""
        if self.symmetric:
            return self.arch.kernel(
                self._x1, get=self.get, diagonal=True, dtype=self.dtype, memory_budget=self.memory_budget
            )
        m = min(self.shape)
        d = self.arch.kernel(
            self._x1[:m], self._x2[:m], get=self.get, diagonal=True, dtype=self.dtype,
            memory_budget=self.memory_budget,
        )
        pins = _tiles.pinned_in(self._pinned, 0, m, 0, m)
        if pins is not None:
            on_diag = pins[0] == pins[1]
            d[pins[0][on_diag]] = pins[2][on_diag]
        return d

    def to_dense(self) -> torch.Tensor:
        """The ``(n1, n2)`` matrix; MemoryBudgetError when it does not fit ``memory_budget``.

        Refused when ``n1·n2·itemsize`` plus one tile's temporaries exceeds the budget. Uses
        the tile cache if it is already built; otherwise computes the tiles straight into
        the result (it does not build the cache).
        """
        n1, n2 = self.shape
        need = n1 * n2 * self._cost.itemsize
        if need + self._cost.tile_bytes(1, 1) > self.memory_budget:
            raise MemoryBudgetError(
                f"to_dense() needs {need} bytes ({format_bytes(need)}) for the {n1}×{n2} "
                f"{self.dtype} kernel matrix plus one tile's temporaries, but memory_budget is "
                f"{self.memory_budget} bytes ({format_bytes(self.memory_budget)}); raise "
                "memory_budget, or use the operator (op @ v) and an iterative solver"
            )
        per_tile = max(self._cost.tile_bytes(1, 1), (self.memory_budget - need) // self.threads)
        return self._dense(sub=self._cost.side(per_tile))

    def _dense(self, sub: int | None = None) -> torch.Tensor:
        """The dense matrix without the budget check on the result (callers own it)."""
        if self._cache is not None and self.backend == "local":
            return self._dense_from_cache()
        if self.backend == "dask":
            return self._dask_to_dense()
        dense = self._x1.new_empty(self.shape)
        self._fill(dense, self._tile_grid(sub), 0, self.symmetric, "kernel tiles")
        return dense

    def _dense_from_cache(self) -> torch.Tensor:
        if not self.symmetric:
            return self._cache.clone()
        n = self.shape[0]
        dense = self._x1.new_empty((n, n))
        for r0, r1, panel in self._cache:
            dense[r0:r1, r0:] = panel
            dense[r1:, r0:r1] = panel[:, r1 - r0 :].T
        return dense

    def columns(self, index: Any) -> KernelOperator:
        """The ``(n, M)`` operator ``K[:, index]`` of a symmetric operator (same settings).

        Its entries pairing an example with itself (row ``index[j]``, column ``j``) are the
        exact self-pair values of :meth:`diag`, as in the symmetric matrix, rather than the
        cross-pair evaluation (which is ``√ε``-accurate there for arc-cosine kernels).
        """
        if not self.symmetric:
            raise ParameterError("columns() needs a symmetric operator (x2=None)")
        idx = torch.as_tensor(index)
        if idx.ndim != 1 or idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ShapeError(f"index must be a 1-D integer array, got {tuple(idx.shape)} {idx.dtype}")
        idx = idx.long().to(self.device)
        n = self.shape[0]
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= n:
            raise ShapeError(f"index must hold between 1 and {n} row numbers in [0, {n}), got {idx.numel()}")
        diag = self.arch.kernel(
            self._x1[idx], get=self.get, diagonal=True, dtype=self.dtype,
            memory_budget=self.memory_budget,
        )
        pinned = (idx, torch.arange(idx.numel(), device=self.device), diag)
        return KernelOperator(
            self.arch, self._x1, self._x1[idx], self.get, memory_budget=self.memory_budget,
            dtype=self.dtype, cache="auto", backend=self.backend, client=self._client,
            timeout=self.timeout, connect_timeout=self.connect_timeout, progress=self.progress,
            _pinned=pinned,
        )

    # ------------------------------------------------------------------ Dask backend
    def _dask_block(self, block: int | None) -> int:
        n = max(self.shape)
        if block is not None:
            if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
                raise ParameterError(f"block must be an integer >= 1, got {block!r}")
            return min(int(block), n)
        side = min(n, DEFAULT_DASK_BLOCK)
        tile_bytes = self._cost.tile_bytes(self.tile, self.tile)
        while side > self.tile and side * side * self._cost.itemsize + tile_bytes > self.memory_budget:
            side = max(self.tile, side // 2)
        return side

    def _dask_setup(self) -> dict[str, Any]:
        if self._dask is not None:
            return self._dask
        client = self._client
        x1 = put(client, self._x1.numpy())
        x2 = None if self._x2 is None else put(client, self._x2.numpy())
        pinned = None if self._pinned is None else tuple(p.cpu().numpy() for p in self._pinned)
        self._dask = {"client": client, "x1": x1, "x2": x2, "pinned": pinned}
        return self._dask

    def _block_grid(self) -> list[tuple[int, int, int, int]]:
        n1, n2 = self.shape
        b = self.block
        return [
            (r0, min(n1, r0 + b), c0, min(n2, c0 + b))
            for r0 in range(0, n1, b)
            for c0 in range(r0 if self.symmetric else 0, n2, b)
        ]

    def _block_args(self, d, r0, r1, c0, c1) -> tuple:
        sub = min(self.tile, self.block)
        return (self.arch, d["x1"], d["x2"], r0, r1, c0, c1, self.get, sub, d["pinned"])

    def _dask_build_cache(self) -> None:
        d = self._dask_setup()
        client = d["client"]
        futures = {
            key: client.submit(_tiles.block_task, *self._block_args(d, *key), pure=False)
            for key in self._block_grid()
        }
        self._cache = futures

    def _dask_matvec(self, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        d = self._dask_setup()
        client = d["client"]
        n1, n2 = self.shape
        vf = put(client, v.numpy())
        if self.cached:
            self._build_cache()
        futures, keys = [], []
        for key in self._block_grid():
            r0, r1, c0, c1 = key
            if transpose:
                mode = "transpose"
            else:
                mode = "both" if self.symmetric and c0 != r0 else "forward"
            if self.cached:
                fut = client.submit(_tiles.block_matvec_task, self._cache[key], vf, *key, mode, pure=False)
            else:
                fut = client.submit(
                    _tiles.compute_matvec_task, *self._block_args(d, *key), vf, mode, pure=False
                )
            futures.append(fut)
            keys.append(key)
        results = wait_all(futures, self.timeout, "K @ v")
        out = v.new_zeros((n2 if transpose else n1, v.shape[1]))
        for (r0, r1, c0, c1), (forward, backward) in zip(keys, results):
            if transpose:
                out[c0:c1] += torch.from_numpy(backward)
                continue
            out[r0:r1] += torch.from_numpy(forward)
            if backward is not None:
                out[c0:c1] += torch.from_numpy(backward)
        return out

    def _dask_gram(self, v: torch.Tensor, rows: int) -> torch.Tensor:
        d = self._dask_setup()
        client = d["client"]
        n1, n2 = self.shape
        vf = put(client, v.numpy())
        sub = min(self.tile, self.block)
        futures = [
            client.submit(
                _tiles.compute_gram_task, self.arch, d["x1"], d["x2"], r0, min(n1, r0 + rows), n2,
                self.get, sub, d["pinned"], vf, pure=False,
            )
            for r0 in range(0, n1, rows)
        ]
        out = v.new_zeros((n2, v.shape[1]))
        for part in wait_all(futures, self.timeout, "Kᵀ K v"):
            out += torch.from_numpy(part)
        return out

    def _dask_gram_matrix(self, Y: torch.Tensor | None) -> list:
        """One task per full-width row panel, each returning ``(K_Iᵀ K_I, K_Iᵀ y_I)``."""
        d = self._dask_setup()
        client = d["client"]
        n1, n2 = self.shape
        rows = max(1, self._panel_rows())
        yf = None if Y is None else put(client, Y.numpy())
        sub = min(self.tile, self.block)
        futures = [
            client.submit(
                _tiles.gram_matrix_task, self.arch, d["x1"], d["x2"], r0, min(n1, r0 + rows), n2,
                self.get, sub, d["pinned"], yf, pure=False,
            )
            for r0 in range(0, n1, rows)
        ]
        return wait_all(futures, self.timeout, "Kᵀ K")

    def to_dask(self):
        """The kernel matrix as a ``dask.array`` of ``block × block`` chunks (lazy).

        With the Dask backend the chunks are computed on its cluster from the inputs sent
        there once; with the local backend the inputs are embedded in the graph. The lower
        blocks of a symmetric kernel are transposes of the upper ones.
        """
        import dask
        import dask.array as da

        if self.backend == "dask":
            d = self._dask_setup()
        else:
            d = {
                "x1": dask.delayed(self._x1.cpu().numpy(), pure=True),
                "x2": None if self._x2 is None else dask.delayed(self._x2.cpu().numpy(), pure=True),
                "pinned": None if self._pinned is None else tuple(p.cpu().numpy() for p in self._pinned),
            }
        dtype = np.dtype(str(self.dtype).replace("torch.", ""))
        n1, n2 = self.shape
        b = self.block
        upper = {}
        rows = []
        for r0 in range(0, n1, b):
            r1 = min(n1, r0 + b)
            row = []
            for c0 in range(0, n2, b):
                c1 = min(n2, c0 + b)
                if self.symmetric and c0 < r0:
                    value = dask.delayed(_tiles.transpose_task, pure=True)(upper[(c0, r0)])
                else:
                    value = dask.delayed(_tiles.block_task, pure=False)(*self._block_args(d, r0, r1, c0, c1))
                    upper[(r0, c0)] = value
                row.append(da.from_delayed(value, shape=(r1 - r0, c1 - c0), dtype=dtype))
            rows.append(row)
        return da.block(rows)

    def _dask_to_dense(self) -> torch.Tensor:
        d = self._dask_setup()
        future = d["client"].compute(self.to_dask())
        (result,) = wait_all([future], self.timeout, "to_dense()")
        return torch.from_numpy(np.ascontiguousarray(result))

    def close(self) -> None:
        """Drop the tile cache and the Dask futures (the inputs sent to the workers).

        A client this operator opened from an address is closed too; the operator can
        still compute locally-cached products afterwards, not Dask ones.
        """
        self._cache = None
        if self._dask is not None:
            for key in ("x1", "x2"):
                fut = self._dask.get(key)
                if fut is not None:
                    fut.release()
            self._dask = None
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> KernelOperator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Transposed:
    """``Kᵀ`` of a :class:`KernelOperator` (``op.T``)."""

    def __init__(self, op: KernelOperator) -> None:
        self.op = op

    @property
    def shape(self) -> tuple[int, int]:
        return self.op.shape[::-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.op.dtype

    @property
    def T(self) -> KernelOperator:
        return self.op

    def __matmul__(self, u: Any) -> torch.Tensor:
        return self.op.rmatvec(u)

    def to_dense(self) -> torch.Tensor:
        return self.op.to_dense().T


def _syrk_update(G: torch.Tensor, P: torch.Tensor) -> None:
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


def _mirror_upper(G: torch.Tensor) -> torch.Tensor:
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
