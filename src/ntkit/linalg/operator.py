"""The matrix-free kernel operator: ``K v`` tile by tile under a memory budget.

:class:`KernelOperator` stands for the ``(n1, n2)`` matrix of a *kernel source*
(:mod:`ntkit.sources`: an architecture's infinite-width kernel on two batches, the
empirical NTK of a fixed model, a precomputed matrix, ...) without forming it. Products
``K v`` are accumulated tile by tile (:mod:`ntkit.tiling`); for a symmetric source only the
tiles on and above the block diagonal are computed, each contributing ``K_IJ v_J`` and
``K_IJᵀ v_I``.

**Cost.** Without the cache every product recomputes every tile: one product costs one
kernel evaluation (half of it when symmetric), so an iterative solver with ``t`` products
pays ``t`` kernel evaluations. With the cache (``cache="auto"``: whenever the stored
tiles fit in ``memory_budget``) the tiles are computed at the first product and kept —
``n²/2`` entries for a symmetric operator (the upper row panels), ``n1·n2`` otherwise —
so later products are plain matrix products, memory-bandwidth bound.

**Memory.** At most ``memory_budget`` bytes of working memory (:mod:`ntkit.budget`): the
temporaries of the tiles in flight, the cache, and the row panel of
:meth:`KernelOperator.gram`. ``to_dense`` is refused past the budget.

**Backends.** :class:`~ntkit.linalg.local_backend.LocalBackend` computes tiles ``threads``
at a time, each on its own thread with torch single-threaded inside, and adds results in a
fixed order (products do not depend on the thread count or timing);
:class:`~ntkit.linalg.dask_backend.DaskBackend` computes blocks as tasks on a cluster.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validation import OVERFLOW_HINT, as_tensor, check_choice, check_finite_result, resolve_dtype
from ..budget import describe, format_bytes, parse_budget
from ..errors import DeviceError, MemoryBudgetError, ParameterError, ShapeError
from ..sources import KernelSource, as_index
from ..tiling import Tile, grid
from .budget import symmetric_cache_bytes
from .dask_backend import DEFAULT_CONNECT_TIMEOUT, DEFAULT_DASK_BLOCK, DaskBackend, block_side, kernel_array
from .local_backend import LocalBackend

__all__ = ["DEFAULT_DASK_BLOCK", "KernelOperator", "OperatorOptions"]

_BACKENDS = ("local", "dask")


@dataclass(frozen=True)
class OperatorOptions:
    """How a :class:`KernelOperator` spends its budget.

    Attributes:
        memory_budget: any :mod:`ntkit.budget` spelling (default 1 GiB): the temporaries
            of the tiles in flight plus the tile cache.
        cache: ``"auto"`` (cache the tiles when they fit the budget), ``True`` (cache, or
            raise MemoryBudgetError) or ``False`` (recompute the tiles at every product).
        tile: side of a tile in examples (default: the largest about-cache-sized tile in
            the budget).
        progress: show a progress bar over tiles (``None``: only on a terminal).
    """

    memory_budget: Any = None
    cache: bool | str = "auto"
    tile: int | None = None
    progress: bool | None = False


def _as_source(source: Any, x1: Any, x2: Any, get: str, dtype: Any) -> KernelSource:
    if isinstance(source, KernelSource):
        if x1 is not None or x2 is not None:
            raise ParameterError("a kernel source carries its inputs: pass no x1/x2 with it")
        if dtype is not None and resolve_dtype(dtype) != source.dtype:
            raise ParameterError(f"dtype={dtype} differs from the kernel source's {source.dtype}")
        return source
    if hasattr(source, "kernel_source") and callable(source.kernel_source):
        if x1 is None:
            raise ShapeError("KernelOperator(arch, x1, x2=None, ...) needs the inputs x1")
        return source.kernel_source(x1, x2, get, dtype=dtype)
    raise ParameterError(
        f"arch must be an ntkit architecture (a Layer such as nk.serial(...)) or a kernel "
        f"source (ntkit.sources), got {type(source).__name__}"
    )


class KernelOperator:
    """The ``(n1, n2)`` kernel matrix of a kernel source as a linear operator.

    ``KernelOperator(source, options=..., backend=...)`` is the core form; for an
    architecture, ``KernelOperator(arch, x1, x2=None, get="ntk", ...)`` builds the source
    ``arch.kernel_source(x1, x2, get, dtype=dtype)``.

    Args:
        source: a kernel source (:mod:`ntkit.sources`: ``arch.kernel_source(x1, x2)``,
            ``ntkit.empirical.EmpiricalNTKSource(model, x1, x2)``,
            :class:`ntkit.sources.TensorSource`),
            or an architecture (:class:`~ntkit.Layer`), fully-connected or convolutional,
            whose kernel is one number per pair (end spatial nets with a readout).
        x1: with an architecture: ``(n1, *in_shape)`` row inputs (tensor or NumPy array).
        x2: ``(n2, *in_shape)`` column inputs, or ``None`` for ``x2 = x1`` (symmetric:
            tiles on and above the diagonal only, each example's pair with itself exact).
        get: ``"ntk"`` (default) or ``"nngp"``.
        options: an :class:`OperatorOptions`; or its fields as keywords:
        memory_budget: bytes of working memory (any :mod:`ntkit.budget` spelling; default
            1 GiB): the tiles in flight plus the tile cache (see the module docstring).
        cache, tile, progress: see :class:`OperatorOptions`.
        dtype: ``torch.float64`` (default) or ``torch.float32`` (with an architecture).
        backend: ``"local"``, ``"dask"``, or a backend object
            (:class:`~ntkit.linalg.local_backend.LocalBackend`,
            :class:`~ntkit.linalg.dask_backend.DaskBackend`).
        client, block, timeout, connect_timeout: ``backend="dask"``: see
            :class:`~ntkit.linalg.dask_backend.DaskBackend` (``block`` also sizes the chunks
            of :meth:`to_dask`).
        threads: ``backend="local"``: tiles computed at once, each on its own thread with
            torch single-threaded inside (default ``torch.get_num_threads()``). Many small
            elementwise passes parallelize poorly inside torch, and on a busy machine its
            threads' barriers cost far more than the work; whole tiles per thread avoid
            both. While tiles run, torch's intra-op thread count is 1 process-wide (it is
            restored afterwards); ``threads=1`` computes tiles one by one and leaves torch's
            setting alone. The budget is shared: each tile gets ``1/threads`` of it.
            Sources that are not thread-safe run one tile at a time.

    Shapes: ``op @ v`` takes ``(n2,)`` or ``(n2, k)`` and returns ``(n1,)`` or ``(n1, k)``
    in the operator's dtype, on the source's device.
    """

    def __init__(
        self,
        source: Any,
        x1: Any = None,
        x2: Any = None,
        get: str = "ntk",
        *,
        options: OperatorOptions | None = None,
        backend: Any = "local",
        memory_budget: Any = None,
        dtype: Any = None,
        cache: bool | str = "auto",
        tile: int | None = None,
        client: Any = None,
        block: int | None = None,
        timeout: float | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        progress: bool | None = False,
        threads: int | None = None,
    ) -> None:
        if options is None:
            options = OperatorOptions(memory_budget, cache, tile, progress)
        src = _as_source(source, x1, x2, get, dtype)
        if block is not None and (
            isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1
        ):
            raise ParameterError(f"block must be an integer >= 1, got {block!r}")
        owns = False
        if isinstance(backend, str):
            check_choice(backend, "backend", _BACKENDS)
            if backend == "local":
                backend = LocalBackend(threads)
            else:
                if src.device.type != "cpu":
                    raise DeviceError(
                        f"backend='dask' ships NumPy arrays to workers; inputs on {src.device} are "
                        "not supported — move them to the CPU or use backend='local'"
                    )
                backend = DaskBackend(client, block=block, timeout=timeout, connect_timeout=connect_timeout)
                owns = True
        elif not hasattr(backend, "matvec"):
            raise ParameterError(f"backend must be 'local', 'dask' or a backend object, got {backend!r}")
        self._setup(src, options, backend, block)
        self._owns_backend = owns

    @classmethod
    def from_source(cls, source: KernelSource, options: OperatorOptions | None = None,
                    backend: Any = None) -> KernelOperator:
        """The operator of ``source`` (default options, a local backend)."""
        return cls(source, options=options or OperatorOptions(),
                   backend=LocalBackend() if backend is None else backend)

    def _setup(self, source: KernelSource, options: OperatorOptions, backend: Any,
               block: int | None = None) -> None:
        cache, tile = options.cache, options.tile
        if cache not in ("auto", True, False):
            raise ParameterError(f"cache must be 'auto', True or False, got {cache!r}")
        self.source = source
        self.options = options
        self.backend_impl = backend
        self.memory_budget = parse_budget(options.memory_budget)
        self.progress = options.progress
        self._cache: Any = None
        self._remote: Any = None
        self._owns_backend = False
        budget = self.memory_budget
        source.check(budget)
        n1, n2 = self.shape
        threads = getattr(backend, "threads", 1)
        if self.device.type != "cpu" or not getattr(source, "thread_safe", True):
            threads = 1
        # tiles in flight at once share the budget (at least one tile fits: checked above)
        self.threads = min(threads, max(1, budget // source.tile_bytes(1, 1)))
        w = self.threads
        if tile is not None:
            if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
                raise ParameterError(f"tile must be an integer >= 1, got {tile!r}")
            tile = int(tile)
            need = w * source.tile_bytes(tile, tile)
            if need > budget:
                raise MemoryBudgetError(
                    f"tile={tile} needs {describe(need)} of temporaries ({w} at once) but "
                    f"memory_budget is {describe(budget)}; use a smaller tile (at most "
                    f"{source.side(budget // w)} fits) or leave tile=None"
                )
        side = tile if tile is not None else source.side(budget // w)
        itemsize = source.itemsize
        cache_bytes = symmetric_cache_bytes(n1, side, itemsize) if self.symmetric else n1 * n2 * itemsize
        self.cache_bytes = cache_bytes
        left = budget - cache_bytes
        if cache is False:
            self.cached = False
        elif tile is not None:
            self.cached = w * source.tile_bytes(tile, tile) <= left
        else:
            # the cache saves recomputing every tile at every product: worth smaller tiles,
            # down to a side of 64 (below that the per-tile overhead dominates)
            smallest = min(64, n1, n2)
            self.cached = left >= w * source.tile_bytes(smallest, smallest)
            if self.cached:
                side = min(side, source.side(left // w))
        if cache is True and not self.cached:
            raise MemoryBudgetError(
                f"cache=True needs {describe(cache_bytes)} for the tiles of this {n1}×{n2} kernel "
                f"plus one tile's temporaries, but memory_budget is {describe(budget)}; raise "
                "memory_budget or use cache=False"
            )
        self.tile = max(1, min(side, max(n1, n2)))
        self.block = block_side(self, block)
        backend.attach(self)

    # ------------------------------------------------------------------ properties
    @property
    def backend(self) -> str:
        """``"local"`` or ``"dask"`` (the backend object is :attr:`backend_impl`)."""
        return self.backend_impl.name

    @property
    def symmetric(self) -> bool:
        """True for a symmetric source (``x2=None`` or equal to ``x1``)."""
        return self.source.symmetric

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.source.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    @property
    def device(self) -> torch.device:
        return self.source.device

    @property
    def arch(self) -> Any:
        """The architecture of an architecture's source (``None`` for other sources)."""
        return getattr(self.source, "arch", None)

    @property
    def get(self) -> str | None:
        return getattr(self.source, "get", None)

    @property
    def x1(self) -> torch.Tensor | None:
        """The row inputs of a source with inputs (``None`` for a precomputed matrix)."""
        return getattr(self.source, "x1", None)

    @property
    def x2(self) -> torch.Tensor | None:
        """The column inputs (``x1`` itself for a symmetric operator)."""
        return getattr(self.source, "x2", None)

    @property
    def timeout(self) -> float | None:
        return getattr(self.backend_impl, "timeout", None)

    @property
    def _client(self) -> Any:
        return getattr(self.backend_impl, "client", None)

    @property
    def T(self) -> _Transposed:
        """The transposed operator ``Kᵀ`` (``op.T @ u``); for a symmetric one, ``op``."""
        return _Transposed(self)

    def __repr__(self) -> str:
        n1, n2 = self.shape
        return (
            f"KernelOperator({n1}×{n2}, source={type(self.source).__name__}, get={self.get!r}, "
            f"dtype={self.dtype}, symmetric={self.symmetric}, cached={self.cached}, "
            f"tile={self.tile}, backend={self.backend!r}, "
            f"memory_budget={format_bytes(self.memory_budget)})"
        )

    # ------------------------------------------------------------------ sub-operators
    def restrict(self, rows: Any = None, cols: Any = None, **options: Any) -> KernelOperator:
        """The operator ``K[rows][:, cols]`` (index arrays; ``None`` keeps all) with the same
        options and backend; keywords (``cache=``, ``memory_budget=``, ``tile=``,
        ``progress=``) override fields of :class:`OperatorOptions`. Pairs of an example
        with itself keep their exact values (see :meth:`columns`)."""
        return KernelOperator(self.source.restrict(rows, cols), options=self._options(options),
                              backend=self.backend_impl)

    def _options(self, changes: dict) -> OperatorOptions:
        return dataclasses.replace(self.options, **changes) if changes else self.options

    def columns(self, index: Any) -> KernelOperator:
        """The ``(n, M)`` operator ``K[:, index]`` of a symmetric operator (same settings).

        Its entries pairing an example with itself (row ``index[j]``, column ``j``) are the
        exact self-pair values of :meth:`diag`, as in the symmetric matrix, rather than the
        cross-pair evaluation (which is ``√ε``-accurate there for arc-cosine kernels).
        """
        if not self.symmetric:
            raise ParameterError("columns() needs a symmetric operator (x2=None)")
        idx = as_index(index, self.shape[0], "index", self.device)
        return self.restrict(cols=idx, cache="auto", tile=None)

    def with_inputs(self, x1: Any, x2: Any = None, **options: Any) -> KernelOperator:
        """The same kernel on other inputs (e.g. test points), same options and backend
        (keywords override fields of :class:`OperatorOptions`, as in :meth:`restrict`)."""
        return KernelOperator(self.source.with_inputs(x1, x2), options=self._options(options),
                              backend=self.backend_impl)

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
                sub = self.restrict(cols=support.nonzero().flatten(), cache=False, tile=None)
                try:
                    out = sub.matvec(vt[support])  # checked there
                finally:
                    sub.close()
                return out[:, 0] if squeeze else out
        if self.backend == "local":
            out = self._local_matvec(vt, False)
        else:
            out = self.backend_impl.matvec(self, vt, False)
        self.check_finite(out, "K @ v")
        return out[:, 0] if squeeze else out

    def _local_matvec(self, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        return self.backend_impl.matvec(self, v, transpose)

    def rmatvec(self, u: Any) -> torch.Tensor:
        """``Kᵀ u`` for ``u`` of shape ``(n1,)`` or ``(n1, k)``."""
        if self.symmetric:
            return self.matvec(u)
        ut, squeeze = self._prepare(u, self.shape[0], "u")
        out = self.backend_impl.matvec(self, ut, True)
        self.check_finite(out, "Kᵀ @ u")
        return out[:, 0] if squeeze else out

    def gram(self, v: Any) -> torch.Tensor:
        """``Kᵀ (K v)`` for ``v`` of shape ``(n2,)`` or ``(n2, k)``, each tile computed once.

        Without the cache the kernel is swept in full-width row panels ``K_I`` (as many
        rows as the budget allows), each used for ``K_Iᵀ (K_I v)``; when not even a
        one-row panel fits, it takes two sweeps (``K v``, then ``Kᵀ`` of that).
        """
        vt, squeeze = self._prepare(v, self.shape[1], "v")
        rows = self.panel_rows()
        if self.cached or self.symmetric or rows < 1:
            out = self.rmatvec(self.matvec(vt))
        else:
            out = self.backend_impl.gram(self, vt, rows)
            self.check_finite(out, "Kᵀ K v")
        return out[:, 0] if squeeze else out

    def gram_matrix(self, y: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(Kᵀ K, Kᵀ y)`` in float64 — ``(n2, n2)`` and ``(n2, k)`` — in one sweep.

        Each tile is computed once, into full-width row panels ``K_I`` (as many rows as the
        budget allows) accumulated with a symmetric rank-``|I|`` update (BLAS ``syrk``).
        Costs ``n1·n2`` kernel entries and ``n1·n2²`` flops; the ``n2²`` result is the
        caller's memory, not the budget's. ``y``: ``(n1,)`` or ``(n1, k)`` or ``None``.
        """
        n1 = self.shape[0]
        Y = None
        squeeze = False
        if y is not None:
            Y, squeeze = self._prepare(y, n1, "y")
            Y = Y.to(torch.float64)
        G, b = self.backend_impl.gram_matrix(self, Y)
        self.check_finite((G, b), "Kᵀ K")
        if b is not None and squeeze:
            b = b[:, 0]
        return G, b

    def _prepare(self, v: Any, n: int, name: str) -> tuple[torch.Tensor, bool]:
        vt = as_tensor(v, name, dtype=self.dtype, min_ndim=1, max_ndim=2, device=self.device)
        if vt.shape[0] != n:
            raise ShapeError(
                f"{name} must have {n} rows to multiply a {self.shape[0]}×{self.shape[1]} "
                f"kernel operator, got shape {tuple(vt.shape)}"
            )
        squeeze = vt.ndim == 1
        return (vt[:, None] if squeeze else vt), squeeze

    # ------------------------------------------------------------------ grids (backends)
    def tile_grid(self, side: int | None = None) -> list[Tile]:
        """Tiles of side ``side`` (default ``self.tile``); on/above the diagonal if symmetric."""
        n1, n2 = self.shape
        return grid(n1, n2, self.tile if side is None else side, symmetric=self.symmetric)

    def panel_grid(self, r0: int, r1: int) -> list[Tile]:
        """Tiles of the full-width row panel ``[r0, r1)`` (none marked diagonal)."""
        n1, n2 = self.shape
        return grid(n1, n2, self.tile, row_start=r0, row_stop=r1)

    def panel_rows(self) -> int:
        """Rows of a full-width panel that fit next to the tiles' temporaries."""
        n2 = self.shape[1]
        left = self.memory_budget - self.threads * self.source.tile_bytes(self.tile, self.tile)
        return min(self.shape[0], left // max(1, n2 * self.source.itemsize))

    _panel_rows = panel_rows

    def precompute(self) -> KernelOperator:
        """Compute and keep the tile cache now (only when the operator caches); returns self."""
        if self.cached:
            self.backend_impl.build_cache(self)
        return self

    # ------------------------------------------------------------------ dense views
    def diag(self) -> torch.Tensor:
        """The diagonal ``k(x1_i, x2_i)``, ``(min(n1, n2),)``, from the source."""
        return self.check_finite(self.source.diagonal(self.memory_budget), "the diagonal")

    def to_dense(self) -> torch.Tensor:
        """The ``(n1, n2)`` matrix; MemoryBudgetError when it does not fit ``memory_budget``.

        Refused when ``n1·n2·itemsize`` plus one tile's temporaries exceeds the budget. Uses
        the tile cache if it is already built; otherwise computes the tiles straight into
        the result (it does not build the cache).
        """
        n1, n2 = self.shape
        need = n1 * n2 * self.source.itemsize
        if need + self.source.tile_bytes(1, 1) > self.memory_budget:
            raise MemoryBudgetError(
                f"to_dense() needs {describe(need)} for the {n1}×{n2} {self.dtype} kernel matrix "
                f"plus one tile's temporaries, but memory_budget is {describe(self.memory_budget)}; "
                "raise memory_budget, or use the operator (op @ v) and an iterative solver"
            )
        per_tile = max(self.source.tile_bytes(1, 1), (self.memory_budget - need) // self.threads)
        return self._dense(sub=self.source.side(per_tile))

    def _dense(self, sub: int | None = None) -> torch.Tensor:
        """The dense matrix without the budget check on the result (callers own it)."""
        return self.check_finite(self.backend_impl.dense(self, sub), "the dense matrix")

    def check_finite(self, result: Any, what: str) -> Any:
        """``result`` (a tensor or a tuple of them), or NonFiniteError if it holds NaN/Inf.

        Every product and dense view is checked before it is returned (overflow never
        comes back as silent NaN/Inf); the message names the source and what to change
        (the source's ``overflow_hint``: for an architecture, lower ``W_std``/``b_std`` or
        the depth, rescale the inputs, use float64).
        """
        n1, n2 = self.shape
        check_finite_result(
            result, f"{what} of the {n1}×{n2} kernel operator ({type(self.source).__name__}, {self.dtype})",
            getattr(self.source, "overflow_hint", OVERFLOW_HINT),
        )
        return result

    def to_dask(self):
        """The kernel matrix as a ``dask.array`` of ``block × block`` chunks (lazy).

        With the Dask backend the chunks are computed on its cluster from the source sent
        there once; with the local backend the source is embedded in the graph. The lower
        blocks of a symmetric kernel are transposes of the upper ones.
        """
        if self.backend == "dask":
            return self.backend_impl.to_dask(self)
        return kernel_array(self)

    def close(self) -> None:
        """Drop the tile cache and the Dask futures (the source sent to the workers).

        A client this operator opened from an address is closed too; the operator can
        still compute locally-cached products afterwards, not Dask ones.
        """
        self._cache = None
        self.backend_impl.close(self)
        if self._owns_backend and hasattr(self.backend_impl, "shutdown"):
            self.backend_impl.shutdown()

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
