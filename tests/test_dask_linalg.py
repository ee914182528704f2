"""The Dask backend equals the local one; survives a killed worker; fails fast on a dead address.

Clusters are real ``distributed.LocalCluster`` s with worker processes (the architectures
are pickled to them), closed by fixtures; every wait is bounded by a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
import torch

import ntkit as nk
from ntkit.infinite.conv import Conv
from ntkit.infinite.pooling import GlobalAvgPool
from ntkit.linalg import ClusterError, KernelOperator, get_client, nystrom, solve

distributed = pytest.importorskip("distributed")

F64 = torch.float64
WAIT = 120  # seconds: an upper bound for any single wait in this file


def rel(a, b) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def fc_arch():
    return nk.mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1)


def _cluster():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        death_timeout=WAIT,
    )
    client = distributed.Client(cluster, set_as_default=False, timeout=WAIT)
    return cluster, client


def _close(cluster, client):
    client.close(timeout=30)
    cluster.close(timeout=30)


@pytest.fixture(scope="module")
def client():
    cluster, client = _cluster()
    yield client
    _close(cluster, client)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(300, 12, generator=g, dtype=F64), torch.randn(70, 12, generator=g, dtype=F64)


@pytest.mark.parametrize("cache", [False, True])
def test_dask_products_equal_local(client, data, cache):
    x, xt = data
    arch = fc_arch()
    v = torch.randn(300, 3, dtype=F64)
    u = torch.randn(70, 3, dtype=F64)
    local = KernelOperator(arch, x, tile=32)
    remote = KernelOperator(arch, x, backend="dask", client=client, block=64, cache=cache, timeout=WAIT)
    assert rel(remote @ v, local @ v) < 1e-12
    assert rel(remote @ v[:, 0], local @ v[:, 0]) < 1e-12
    assert rel(remote @ v, local @ v) < 1e-12  # again (cached blocks reused)
    cross_l = KernelOperator(arch, xt, x, tile=32)
    cross_r = KernelOperator(arch, xt, x, backend="dask", client=client, block=50, cache=cache, timeout=WAIT)
    assert rel(cross_r @ v, cross_l @ v) < 1e-12
    assert rel(cross_r.T @ u, cross_l.T @ u) < 1e-12
    assert rel(cross_r.gram(v), cross_l.gram(v)) < 1e-12
    G_r, b_r = cross_r.gram_matrix(u)
    G_l, b_l = cross_l.gram_matrix(u)
    assert rel(G_r, G_l) < 1e-12 and rel(b_r, b_l) < 1e-12
    remote.close()
    cross_r.close()


def test_dask_by_scheduler_address(client, data):
    x, _ = data
    arch = fc_arch()
    address = client.scheduler.address
    with KernelOperator(arch, x, backend="dask", client=address, block=100, timeout=WAIT) as op:
        assert op._client is not client and op._client.status == "running"
        v = torch.randn(300, dtype=F64)
        assert rel(op @ v, KernelOperator(arch, x) @ v) < 1e-12
        opened = op._client
    assert opened.status == "closed"  # the operator closed the client it opened
    assert client.status == "running"


def test_dask_kernel_matrix_equals_local(client, data):
    x, xt = data
    arch = fc_arch()
    remote = KernelOperator(arch, x, backend="dask", client=client, block=64, timeout=WAIT)
    dense = remote.to_dense()
    assert rel(dense, arch.kernel(x, get="ntk")) < 1e-12
    assert torch.equal(dense, dense.T)
    arr = remote.to_dask()
    assert arr.chunks[0] == (64, 64, 64, 64, 44)
    cross = KernelOperator(arch, xt, x, backend="dask", client=client, block=40, timeout=WAIT)
    assert rel(cross.to_dense(), arch.kernel(xt, x, get="ntk")) < 1e-12


def test_dask_conv_architecture(client):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20, 2, 6, generator=g, dtype=F64)
    arch = nk.serial(Conv(4, 3), nk.ReLU(), GlobalAvgPool(), nk.Dense(1))
    v = torch.randn(20, dtype=F64)
    remote = KernelOperator(arch, x, backend="dask", client=client, block=7, timeout=WAIT)
    assert rel(remote @ v, KernelOperator(arch, x) @ v) < 1e-12
    assert rel(remote.to_dense(), arch.kernel(x, get="ntk")) < 1e-12


def test_dask_solvers_equal_local(client, data):
    x, _ = data
    arch = fc_arch()
    y = torch.randn(300, 2, dtype=F64)
    local = KernelOperator(arch, x)
    remote = KernelOperator(arch, x, backend="dask", client=client, block=100, timeout=WAIT)
    ridge = 1e-3
    a_l = solve(local, y, solver="cg", ridge=ridge, tol=1e-12)
    a_r = solve(remote, y, solver="cg", ridge=ridge, tol=1e-12)
    # Products agree to 1e-12 (above); the solvers amplify that rounding by the
    # condition number of K + ridge·I, so their solutions agree to about 1e-10.
    assert rel(a_r, a_l) < 1e-8
    n_l = nystrom(local, y, centers=60, ridge=ridge)
    n_r = nystrom(remote, y, centers=60, ridge=ridge)
    assert rel(n_r.beta, n_l.beta) < 1e-8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_address_fails_fast():
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    x = torch.randn(5, 3, dtype=F64)
    start = time.monotonic()
    with pytest.raises(ClusterError, match="could not connect") as err:
        KernelOperator(fc_arch(), x, backend="dask", client=address, connect_timeout=1.5)
    assert time.monotonic() - start < 20
    assert address in str(err.value)
    with pytest.raises(ClusterError):
        get_client(address, connect_timeout=1.0)
    with pytest.raises(nk.NtkitError):
        get_client(42)


def _kill_during(client, future, is_block, min_done: int = 3):
    """Kill a worker holding ``min_done`` finished blocks (``is_block(key)``) while ``future`` runs."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        held = client.has_what()
        for addr, keys in held.items():
            done = [k for k in keys if is_block(k)]
            if len(done) >= min_done and addr in pids:
                assert not future.done(), "the computation finished before the kill: make it bigger"
                os.kill(pids[addr], signal.SIGKILL)
                return addr, len(done)
        time.sleep(0.01)
    raise AssertionError("no worker finished blocks in time")


def test_killed_worker_does_not_change_the_kernel(client):
    """Last in this file: it kills one of the shared cluster's workers (its nanny restarts it)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1200, 40, generator=g, dtype=F64)
    arch = fc_arch()
    expected = arch.kernel(x, get="ntk")
    op = KernelOperator(arch, x, backend="dask", client=client, block=60, timeout=WAIT)
    t0 = time.monotonic()
    future = client.compute(op.to_dask())  # 210 upper blocks (and their transposes)
    # the blocks of a dask.array are its chunks, keyed (name, i, j)
    victim, lost = _kill_during(client, future, lambda key: isinstance(key, tuple))
    t_kill = time.monotonic() - t0
    result = torch.from_numpy(future.result(timeout=WAIT))
    print(f"killed {victim} at {t_kill:.2f} s with {lost} blocks; done at {time.monotonic() - t0:.2f} s")
    # the killed worker left the cluster (its nanny starts a fresh one)
    deadline = time.monotonic() + WAIT
    while victim in client.scheduler_info()["workers"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim not in client.scheduler_info()["workers"]
    assert lost >= 3
    assert rel(result, expected) < 1e-12


@pytest.mark.slow
def test_killed_worker_during_cg_on_cached_blocks():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3000, 40, generator=g, dtype=F64)
    y = torch.randn(3000, dtype=F64)
    arch = fc_arch()
    ridge = 1e-2
    expected = solve(KernelOperator(arch, x, memory_budget="1GiB"), y, solver="cg", ridge=ridge,
                     tol=1e-10, preconditioner=None, maxiter=3000)
    cluster, client = _cluster()
    try:
        op = KernelOperator(arch, x, backend="dask", client=client, block=150, cache=True,
                            timeout=WAIT, memory_budget="1GiB")
        out = {}
        thread = threading.Thread(
            target=lambda: out.update(a=solve(op, y, solver="cg", ridge=ridge, tol=1e-10,
                                              preconditioner=None, maxiter=3000)),
            daemon=True,
        )
        thread.start()
        # wait until blocks are cached on the workers, then kill one holding some
        _kill_during(client, _Running(thread), lambda key: str(key).startswith("block_task"), 5)
        thread.join(timeout=5 * WAIT)
        assert not thread.is_alive()
        assert rel(out["a"], expected) < 1e-8
    finally:
        _close(cluster, client)


class _Running:
    def __init__(self, thread):
        self.thread = thread

    def done(self):
        return not self.thread.is_alive()


@pytest.mark.slow
def test_default_local_cluster():
    from ntkit.linalg import close_default_cluster

    x = torch.randn(50, 4, dtype=F64)
    try:
        op = KernelOperator(fc_arch(), x, backend="dask", timeout=WAIT)
        assert rel(op @ torch.ones(50, dtype=F64), KernelOperator(fc_arch(), x) @ torch.ones(50)) < 1e-12
    finally:
        close_default_cluster()
