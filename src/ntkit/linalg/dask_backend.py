"""The Dask backend of :class:`~ntkit.linalg.KernelOperator`: kernel blocks on a cluster.

``backend="dask"`` computes the kernel's blocks as tasks on a ``dask.distributed``
cluster:

- :meth:`KernelOperator.to_dask` is a ``dask.array`` whose chunks are the blocks (the
  lower blocks of a symmetric kernel are transposes of the upper ones, computed once);
  :meth:`~KernelOperator.to_dense` computes it on the cluster;
- ``op @ v`` submits one task per upper block returning ``K_IJ v_J`` (and ``K_IJᵀ v_I``);
  the driver adds them up. With the tile cache on, the blocks are computed once and stay
  in the workers' memory (as futures) for the many products of an iterative solver.

The operator's kernel source (its inputs and the picklable architecture or matrix) is sent
to the cluster once per operator (as a task, see :func:`put`); nothing else but the tasks'
graph is shipped: every task builds its block from the source (:mod:`ntkit.sources`).
All of ntkit's Dask code is in this module (:class:`DaskBackend` and the task bodies).
A worker that dies loses its tasks and its blocks; the scheduler recomputes
them elsewhere from their lineage, so the result does not change.

The cluster: ``client=None`` uses the current default ``distributed.Client`` if there is
one, else starts a :class:`distributed.LocalCluster` (processes, one thread each, torch
single-threaded inside) kept for the session (:func:`close_default_cluster` stops it);
``client="tcp://host:8786"`` connects to a running scheduler within ``connect_timeout``
seconds or raises :class:`~ntkit.linalg.ClusterError`; a ``distributed.Client`` is used
as given.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

import numpy as np
import torch

from ..errors import DeviceError, ParameterError
from ..tiling import grid
from ._errors import ClusterError

#: Seconds to wait for a scheduler address to answer.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Default side of a Dask block (a task): large enough to amortize the task overhead.
DEFAULT_DASK_BLOCK = 2048

_default: dict[str, Any] = {}
_lock = threading.Lock()


def _import_distributed():
    try:
        import dask.array  # noqa: F401
        import distributed
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ClusterError(
            "backend='dask' needs dask and distributed: pip install 'ntkit[dask]'"
        ) from err
    return distributed


def get_client(client: Any = None, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
    """Return a ``distributed.Client`` for ``client`` (None, an address, or a Client).

    Raises:
        ClusterError: the address does not answer within ``connect_timeout`` seconds, or
            dask/distributed are not installed.
    """
    distributed = _import_distributed()
    if isinstance(client, distributed.Client):
        if client.status not in ("running", "connecting", "newly-created"):
            raise ClusterError(f"the Dask client is {client.status}; pass a running Client")
        return client
    if isinstance(client, str):
        return _connect(distributed, client, connect_timeout)
    if client is not None:
        raise ParameterError(
            f"client must be None, a scheduler address such as 'tcp://host:8786', or a "
            f"distributed.Client; got {type(client).__name__}"
        )
    try:
        return distributed.default_client()
    except ValueError:
        pass
    return _default_local_client(distributed)


def _connect(distributed, address: str, timeout: float):
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ParameterError(f"connect_timeout must be a number of seconds > 0, got {timeout!r}")
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise ClusterError(
            f"could not connect to the Dask scheduler at {address!r} within {timeout:g} s "
            f"({type(err).__name__}: {err}); check that the scheduler runs and the address "
            "is reachable, or use backend='local'"
        ) from err
    except ValueError as err:
        raise ClusterError(f"{address!r} is not a Dask scheduler address: {err}") from err


def _default_local_client(distributed):
    with _lock:
        client = _default.get("client")
        if client is not None and client.status == "running":
            return client
        workers = max(1, min(4, os.cpu_count() or 1))
        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        client = distributed.Client(cluster, set_as_default=False)
        _default.update(cluster=cluster, client=client)
        return client


def close_default_cluster() -> None:
    """Stop the LocalCluster that ``backend='dask'`` started by default (if any)."""
    with _lock:
        client = _default.pop("client", None)
        cluster = _default.pop("cluster", None)
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


atexit.register(close_default_cluster)


def put(client, array):
    """Ship ``array`` to the cluster as a task's result.

    Unlike ``client.scatter`` the data is part of the task, so if every worker holding it
    dies the scheduler recomputes it instead of failing the tasks that need it.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Large object.*")
        return client.submit(identity, array, pure=False)


def wait_all(futures, timeout: float | None, what: str):
    """Results of ``futures`` in order, waiting at most ``timeout`` seconds in all."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    results = []
    try:
        for fut in futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            results.append(fut.result(timeout=left))
    except TimeoutError as err:
        raise ClusterError(
            f"{what} did not finish within timeout={timeout:g} s on the Dask cluster; raise "
            "the timeout, add workers, or use backend='local'"
        ) from err
    return results


# ------------------------------------------------------------------ the backend


class DaskBackend:
    """Kernel blocks as tasks on a ``dask.distributed`` cluster (see the module docstring).

    Args:
        client: ``None`` (default client or a LocalCluster), a scheduler address, or a
            ``distributed.Client``.
        block: side of a block, one task (default :data:`DEFAULT_DASK_BLOCK`, reduced to
            fit the operator's budget; each task holds one block plus one tile's
            temporaries).
        timeout: seconds to wait for one computation (``None``: no limit).
        connect_timeout: seconds to wait for a scheduler address to answer.

    The client is connected at construction (a scheduler that does not answer fails
    there); a client opened from an address is closed by :meth:`close`.
    """

    name = "dask"

    def __init__(self, client: Any = None, *, block: int | None = None, timeout: float | None = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        if block is not None and (
            isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1
        ):
            raise ParameterError(f"block must be an integer >= 1, got {block!r}")
        self.block = None if block is None else int(block)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.client = get_client(client, connect_timeout=connect_timeout)
        self.owns_client = isinstance(client, str)  # we opened it: close() closes it
        self.threads = 1  # the workers are the parallelism

    def __repr__(self) -> str:
        return f"DaskBackend(block={self.block}, timeout={self.timeout})"

    # ------------------------------------------------------------------ set-up
    def attach(self, op) -> None:
        if op.device.type != "cpu":
            raise DeviceError(
                f"backend='dask' ships NumPy arrays to workers; inputs on {op.device} are not "
                "supported — move them to the CPU or use backend='local'"
            )
        op.block = block_side(op, self.block)

    def _remote(self, op):
        """The operator's source on the cluster (sent once, as a task)."""
        if op._remote is None:
            op._remote = put(self.client, op.source)
        return op._remote

    def _grid(self, op) -> list[tuple[int, int, int, int]]:
        n1, n2 = op.shape
        return [(t.r0, t.r1, t.c0, t.c1) for t in grid(n1, n2, op.block, symmetric=op.symmetric)]

    def _sub(self, op) -> int:
        return min(op.tile, op.block)

    # ------------------------------------------------------------------ products
    def build_cache(self, op) -> None:
        if op._cache is not None:
            return
        src, sub = self._remote(op), self._sub(op)
        op._cache = {
            key: self.client.submit(block_task, src, *key, sub, pure=False) for key in self._grid(op)
        }

    def matvec(self, op, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        src, sub = self._remote(op), self._sub(op)
        n1, n2 = op.shape
        vf = put(self.client, v.numpy())
        if op.cached:
            self.build_cache(op)
        futures, keys = [], []
        for key in self._grid(op):
            r0, r1, c0, c1 = key
            if transpose:
                mode = "transpose"
            else:
                mode = "both" if op.symmetric and c0 != r0 else "forward"
            if op.cached:
                fut = self.client.submit(block_matvec_task, op._cache[key], vf, *key, mode, pure=False)
            else:
                fut = self.client.submit(compute_matvec_task, src, *key, sub, vf, mode, pure=False)
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

    def gram(self, op, v: torch.Tensor, rows: int) -> torch.Tensor:
        src, sub = self._remote(op), self._sub(op)
        n1, n2 = op.shape
        vf = put(self.client, v.numpy())
        futures = [
            self.client.submit(compute_gram_task, src, r0, min(n1, r0 + rows), n2, sub, vf, pure=False)
            for r0 in range(0, n1, rows)
        ]
        out = v.new_zeros((n2, v.shape[1]))
        for part in wait_all(futures, self.timeout, "Kᵀ K v"):
            out += torch.from_numpy(part)
        return out

    def gram_matrix(self, op, Y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One task per full-width row panel, each returning ``(K_Iᵀ K_I, K_Iᵀ y_I)``."""
        src, sub = self._remote(op), self._sub(op)
        n1, n2 = op.shape
        rows = max(1, op.panel_rows())
        yf = None if Y is None else put(self.client, Y.numpy())
        futures = [
            self.client.submit(gram_matrix_task, src, r0, min(n1, r0 + rows), n2, sub, yf, pure=False)
            for r0 in range(0, n1, rows)
        ]
        G = torch.zeros((n2, n2), dtype=torch.float64)
        b = None if Y is None else torch.zeros((n2, Y.shape[1]), dtype=torch.float64)
        for g_part, b_part in wait_all(futures, self.timeout, "Kᵀ K"):
            G += torch.from_numpy(g_part)
            if b is not None:
                b += torch.from_numpy(b_part)
        return G, b

    def to_dask(self, op):
        """The kernel matrix as a ``dask.array`` of blocks computed on this cluster."""
        return kernel_array(op, self._remote(op))

    def dense(self, op, sub: int | None = None) -> torch.Tensor:
        future = self.client.compute(self.to_dask(op))
        (result,) = wait_all([future], self.timeout, "to_dense()")
        return torch.from_numpy(np.ascontiguousarray(result))

    def close(self, op) -> None:
        if op._remote is not None:
            op._remote.release()
            op._remote = None

    def shutdown(self) -> None:
        """Close the client if this backend opened it from an address."""
        if self.owns_client and self.client is not None:
            self.client.close()
            self.client = None


def block_side(op, block: int | None) -> int:
    """Side of a Dask block of ``op``: ``block``, or the default reduced to fit the budget."""
    n = max(op.shape)
    if block is not None:
        return min(int(block), n)
    side = min(n, DEFAULT_DASK_BLOCK)
    tile_bytes = op.source.tile_bytes(op.tile, op.tile)
    while side > op.tile and side * side * op.source.itemsize + tile_bytes > op.memory_budget:
        side = max(op.tile, side // 2)
    return side


def kernel_array(op, src=None):
    """``op``'s matrix as a ``dask.array`` of ``op.block``-sided chunks (lazy).

    ``src``: the source as sent to a cluster (a future), or ``None`` to embed it in the
    graph. The lower blocks of a symmetric kernel are transposes of the upper ones.
    """
    import dask
    import dask.array as da

    if src is None:
        src = dask.delayed(op.source, pure=True)
    dtype = np.dtype(str(op.dtype).replace("torch.", ""))
    n1, n2 = op.shape
    b = op.block
    sub = min(op.tile, op.block)
    upper = {}
    rows: dict[int, list] = {}
    for t in grid(n1, n2, b):  # every block; the lower ones of a symmetric kernel are transposes
        if op.symmetric and t.c0 < t.r0:
            value = dask.delayed(transpose_task, pure=True)(upper[(t.c0, t.r0)])
        else:
            value = dask.delayed(block_task, pure=False)(src, t.r0, t.r1, t.c0, t.c1, sub)
            upper[(t.r0, t.c0)] = value
        chunk = da.from_delayed(value, shape=(t.r1 - t.r0, t.c1 - t.c0), dtype=dtype)
        rows.setdefault(t.r0, []).append(chunk)
    return da.block([rows[r0] for r0 in sorted(rows)])


# ------------------------------------------------------------------ task bodies
# NumPy in and out: dask.array chunks are NumPy arrays, and NumPy pickles cheaply.


def block_task(source, r0, r1, c0, c1, sub) -> np.ndarray:
    """Task: the block ``K[r0:r1, c0:c1]`` of ``source`` as a NumPy array."""
    return source.dense_block(r0, r1, c0, c1, sub).numpy()


def identity(value):
    """Task: return its argument (inputs as tasks, so a lost copy is recomputed, not lost)."""
    return value


def transpose_task(block: np.ndarray) -> np.ndarray:
    """Task: a block's transpose (the lower blocks of a symmetric kernel)."""
    return np.ascontiguousarray(block.T)


def block_matvec_task(block: np.ndarray, v: np.ndarray, r0, r1, c0, c1, mode: str):
    """Task: products of one block with ``v``.

    ``mode="forward"``: ``(K_IJ v_J, None)``; ``"both"`` (an upper block of a symmetric
    kernel): ``(K_IJ v_J, K_IJᵀ v_I)``; ``"transpose"``: ``(None, K_IJᵀ v_I)``.
    """
    k = torch.from_numpy(block)
    vt = torch.from_numpy(v)
    forward = (k @ vt[c0:c1]).numpy() if mode != "transpose" else None
    backward = (k.T @ vt[r0:r1]).numpy() if mode != "forward" else None
    return forward, backward


def compute_matvec_task(source, r0, r1, c0, c1, sub, v, mode: str):
    """Task: compute a block and return its products with ``v`` (nothing else is kept)."""
    return block_matvec_task(block_task(source, r0, r1, c0, c1, sub), v, r0, r1, c0, c1, mode)


def compute_gram_task(source, r0, r1, n2, sub, v) -> np.ndarray:
    """Task: compute a full-width row panel ``K_I`` and return ``K_Iᵀ (K_I v)``."""
    k = torch.from_numpy(block_task(source, r0, r1, 0, n2, sub))
    return (k.T @ (k @ torch.from_numpy(v))).numpy()


def gram_matrix_task(source, r0, r1, n2, sub, y):
    """Task: ``(K_Iᵀ K_I, K_Iᵀ y_I)`` in float64 for one full-width row panel."""
    k = torch.from_numpy(block_task(source, r0, r1, 0, n2, sub)).to(torch.float64)
    g = (k.T @ k).numpy()
    return g, None if y is None else (k.T @ torch.from_numpy(y[r0:r1])).numpy()
