"""The Dask backend of :class:`~ntkit.linalg.KernelOperator`: kernel blocks on a cluster.

``backend="dask"`` computes the kernel's blocks as tasks on a ``dask.distributed``
cluster:

- :meth:`KernelOperator.to_dask` is a ``dask.array`` whose chunks are the blocks (the
  lower blocks of a symmetric kernel are transposes of the upper ones, computed once);
  :meth:`~KernelOperator.to_dense` computes it on the cluster;
- ``op @ v`` submits one task per upper block returning ``K_IJ v_J`` (and ``K_IJᵀ v_I``);
  the driver adds them up. With the tile cache on, the blocks are computed once and stay
  in the workers' memory (as futures) for the many products of an iterative solver.

Inputs are sent to the cluster once per operator (as tasks, see :func:`put`). Nothing but the tasks' graph and
the inputs is shipped: every task builds its block from the inputs and the (picklable)
architecture. A worker that dies loses its tasks and its blocks; the scheduler recomputes
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

from ..errors import ParameterError
from ._errors import ClusterError

#: Seconds to wait for a scheduler address to answer.
DEFAULT_CONNECT_TIMEOUT = 10.0

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

    from ._tiles import identity

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
