"""KernelOperator: products, diagonal, dense view and budgets, against arch.kernel (dense)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.errors import MemoryBudgetError, ParameterError, ShapeError
from ntkit.infinite.conv import Conv
from ntkit.infinite.pooling import Flatten, GlobalAvgPool
from ntkit.linalg import KernelOperator, parse_bytes

F64 = torch.float64


def fc_arch():
    return nk.mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1)


def conv_gap_arch():
    return nk.serial(Conv(4, 3, b_std=0.2), nk.ReLU(), Conv(4, 3), nk.ReLU(), GlobalAvgPool(), nk.Dense(1))


def conv_flat_arch():
    return nk.serial(Conv(4, 3, W_std=2**0.5), nk.Erf(), Flatten(), nk.Dense(1, b_std=0.1))


def rel(a, b) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.fixture
def fc_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(130, 7, generator=g, dtype=F64), torch.randn(45, 7, generator=g, dtype=F64)


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_fc_symmetric_matvec_equals_dense(fc_data, cache, get):
    x, _ = fc_data
    arch = fc_arch()
    K = arch.kernel(x, get=get)
    op = KernelOperator(arch, x, get=get, tile=32, cache=cache, memory_budget="4MiB")
    assert op.cached is cache and op.symmetric and op.shape == (130, 130)
    V = torch.randn(130, 3, dtype=F64)
    assert rel(op @ V, K @ V) < 1e-12
    assert rel(op @ V[:, 0], K @ V[:, 0]) < 1e-12  # vector in, vector out
    assert (op @ V[:, 0]).shape == (130,)
    assert rel(op.T @ V, K @ V) < 1e-12


@pytest.mark.parametrize("cache", [False, True])
def test_fc_cross_products_equal_dense(fc_data, cache):
    x, xt = fc_data
    arch = fc_arch()
    K = arch.kernel(xt, x, get="ntk")  # (45, 130)
    op = KernelOperator(arch, xt, x, tile=16, cache=cache, memory_budget="4MiB")
    assert not op.symmetric and op.shape == (45, 130)
    v, u = torch.randn(130, 2, dtype=F64), torch.randn(45, 2, dtype=F64)
    assert rel(op @ v, K @ v) < 1e-12
    assert rel(op.T @ u, K.T @ u) < 1e-12
    assert rel(op.gram(v), K.T @ (K @ v)) < 1e-12


@pytest.mark.parametrize("budget", [40_000, 2**24])
def test_gram_matrix_equals_dense(fc_data, budget):
    x, xt = fc_data
    arch = fc_arch()
    K = arch.kernel(x, xt, get="ntk")  # (130, 45)
    op = KernelOperator(arch, x, xt, tile=8, memory_budget=budget)
    y = torch.randn(130, 2, dtype=F64)
    G, b = op.gram_matrix(y)
    assert torch.equal(G, G.T)
    assert rel(G, K.T @ K) < 1e-13 and rel(b, K.T @ y) < 1e-13
    sym = KernelOperator(arch, x, tile=16, memory_budget=200_000)
    Ks = arch.kernel(x, get="ntk")
    assert rel(sym.gram_matrix()[0], Ks @ Ks) < 1e-13


def test_gram_streams_row_panels(fc_data):
    x, xt = fc_data
    arch = fc_arch()
    K = arch.kernel(x, xt, get="ntk")  # (130, 45)
    op = KernelOperator(arch, x, xt, tile=8, cache=False, memory_budget=40_000)
    assert 1 <= op._panel_rows() < 130  # several panels
    v = torch.randn(45, 3, dtype=F64)
    assert rel(op.gram(v), K.T @ (K @ v)) < 1e-12


def test_float32_operator(fc_data):
    x, _ = fc_data
    arch = fc_arch()
    K = arch.kernel(x, get="ntk", dtype=torch.float32)
    op = KernelOperator(arch, x, dtype=torch.float32, tile=40)
    v = torch.randn(130, dtype=torch.float32)
    out = op @ v
    assert out.dtype == torch.float32
    assert rel(out, K @ v) < 1e-5


def test_numpy_inputs_and_diag(fc_data):
    x, xt = fc_data
    arch = fc_arch()
    op = KernelOperator(arch, x.numpy(), tile=50)
    K = arch.kernel(x, get="ntk")
    assert torch.equal(op.diag(), arch.kernel(x, get="ntk", diagonal=True))
    assert float((op.diag() - K.diagonal()).abs().max()) < 1e-12 * float(K.diagonal().max())
    assert rel(op @ np.ones(130), K @ torch.ones(130, dtype=F64)) < 1e-12
    cross = KernelOperator(arch, xt, x[:45] + 1.0)
    assert rel(cross.diag(), arch.kernel(xt, x[:45] + 1.0, get="ntk", diagonal=True)) < 1e-14


@pytest.mark.parametrize("make_arch", [conv_gap_arch, conv_flat_arch])
def test_conv_matvec_equals_dense(make_arch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(23, 2, 6, generator=g, dtype=F64)
    xt = torch.randn(9, 2, 6, generator=g, dtype=F64)
    arch = make_arch()
    K = arch.kernel(x, get="ntk")
    Kt = arch.kernel(xt, x, get="ntk")
    v = torch.randn(23, 2, dtype=F64)
    for cache in (False, True):
        op = KernelOperator(arch, x, tile=5, cache=cache)
        assert rel(op @ v, K @ v) < 1e-12
        cross = KernelOperator(arch, xt, x, tile=4, cache=cache)
        assert rel(cross @ v, Kt @ v) < 1e-12
    assert rel(op.diag(), K.diagonal()) < 1e-12
    assert rel(KernelOperator(arch, x, tile=5).to_dense(), K) < 1e-12


def test_conv_without_readout_is_refused():
    x = torch.randn(5, 2, 6, dtype=F64)
    with pytest.raises(ShapeError, match="readout"):
        KernelOperator(nk.serial(Conv(4, 3), nk.ReLU()), x)


def test_to_dense_and_budget_errors(fc_data):
    x, _ = fc_data
    arch = fc_arch()
    K = arch.kernel(x, get="ntk")
    op = KernelOperator(arch, x, memory_budget="1MiB", tile=30)
    assert rel(op.to_dense(), K) < 1e-14
    small = KernelOperator(arch, x, memory_budget=100_000)
    need = 130 * 130 * 8
    with pytest.raises(MemoryBudgetError) as err:
        small.to_dense()
    msg = str(err.value)
    assert "memory_budget is 100000 bytes" in msg and f"needs {need} bytes" in msg
    # products still work under that budget
    assert not small.cached
    v = torch.randn(130, dtype=F64)
    assert rel(small @ v, K @ v) < 1e-12


def test_budget_too_small_for_one_tile(fc_data):
    x, _ = fc_data
    with pytest.raises(MemoryBudgetError, match="too small for one kernel tile"):
        KernelOperator(fc_arch(), x, memory_budget=64)
    with pytest.raises(MemoryBudgetError, match="too small for one kernel tile"):
        KernelOperator(conv_gap_arch(), torch.randn(4, 2, 6, dtype=F64), memory_budget=2_000)
    with pytest.raises(MemoryBudgetError, match="tile=100"):
        KernelOperator(fc_arch(), x, memory_budget=100_000, tile=100)
    with pytest.raises(MemoryBudgetError, match="cache=True"):
        KernelOperator(fc_arch(), x, memory_budget=50_000, cache=True)


def test_cache_auto_rule(fc_data):
    x, _ = fc_data
    arch = fc_arch()
    # one tile in flight (the budget arithmetic below; with w workers each holds a tile)
    one = {"backend": nk.linalg.LocalBackend(threads=1)}
    assert KernelOperator(arch, x, memory_budget="64MiB", **one).cached
    op = KernelOperator(arch, x, memory_budget=150_000, tile=10, **one)
    assert op.cached  # half of 130² float64 (68 kB) plus a 10×10 tile fits
    op = KernelOperator(arch, x, memory_budget=60_000, **one)
    assert not op.cached  # the upper half alone does not fit
    # without a tile: caching shrinks the tile to make room (down to 64)
    op = KernelOperator(arch, x, memory_budget=1_000_000, **one)
    assert op.cached and 64 <= op.tile < KernelOperator(arch, x, memory_budget=1_000_000, cache=False,
                                                        **one).tile
    assert not KernelOperator(arch, x, memory_budget=150_000, **one).cached  # a 64×64 tile would not fit
    # with two workers, two tiles are in flight beside the cache
    two = KernelOperator(arch, x, memory_budget=150_000, tile=10, backend=nk.linalg.LocalBackend(threads=2))
    assert two.threads == 2 and two.cached  # the cache (68 kB) plus two 10×10 tiles still fit


def test_columns_pin_self_pairs(fc_data):
    x, _ = fc_data
    arch = fc_arch()
    K = arch.kernel(x, get="ntk")
    op = KernelOperator(arch, x, tile=20)
    idx = torch.tensor([3, 77, 5, 129])
    cols = op.columns(idx)
    assert cols.shape == (130, 4)
    dense = cols.to_dense()
    # self pairs equal the symmetric matrix's exact diagonal, bit for bit
    assert torch.equal(dense[idx, torch.arange(4)], K[idx, idx])
    assert float((dense - K[:, idx]).abs().max()) < 1e-12 * float(K.max())
    v = torch.randn(4, dtype=F64)
    assert rel(cols @ v, K[:, idx] @ v) < 1e-12


def test_sparse_vectors_skip_zero_columns(fc_data, monkeypatch):
    x, xt = fc_data
    arch = fc_arch()
    K = arch.kernel(xt, x, get="ntk")
    op = KernelOperator(arch, xt, x, cache=False, tile=16)
    v = torch.zeros(130, 2, dtype=F64)
    v[[3, 50, 99]] = torch.randn(3, 2, dtype=F64)
    widths = []
    real = KernelOperator._local_matvec

    def spy(self, vt, transpose):
        widths.append(self.shape[1])
        return real(self, vt, transpose)

    monkeypatch.setattr(KernelOperator, "_local_matvec", spy)
    assert rel(op @ v, K @ v) < 1e-12
    assert widths == [3]  # only the three nonzero columns were computed
    assert torch.equal(op @ torch.zeros(130, dtype=F64), torch.zeros(45, dtype=F64))
    # the pinned self pairs of a columns() operator survive the subset
    sym = KernelOperator(arch, x, tile=16)
    cols = sym.columns(torch.arange(0, 130, 2))  # 65 columns
    w = torch.zeros(65, dtype=F64)
    w[[0, 7]] = 1.0
    dense = arch.kernel(x, get="ntk")
    # (a cross evaluation of a self pair would be off by ~√ε = 1.5e-8 relative)
    assert rel((cols @ w)[[0, 14]], dense[[0, 14]][:, [0, 14]].sum(1)) < 1e-13


def test_bad_inputs(fc_data):
    x, _ = fc_data
    arch = fc_arch()
    op = KernelOperator(arch, x)
    with pytest.raises(ShapeError, match="130 rows"):
        op @ torch.ones(7)
    with pytest.raises(ShapeError, match="same example shape"):
        KernelOperator(arch, x, torch.ones(3, 5))
    with pytest.raises(ParameterError):
        KernelOperator(arch, x, get="foo")
    with pytest.raises(ParameterError):
        KernelOperator("not an arch", x)
    with pytest.raises(ParameterError):
        KernelOperator(arch, x, memory_budget="lots")
    with pytest.raises(nk.NtkitError):
        KernelOperator(arch, x, backend="spark")


def test_parse_bytes():
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("2GB") == 2 * 10**9
    assert parse_bytes("1.5K") == 1536
    assert parse_bytes(1000) == 1000
    with pytest.raises(ParameterError):
        parse_bytes(-1)


def test_architectures_pickle():
    x = torch.randn(6, 2, 6, dtype=F64)
    for arch in (fc_arch(), conv_gap_arch(), conv_flat_arch()):
        again = pickle.loads(pickle.dumps(arch))
        data = x if "Conv" in repr(arch) else x.reshape(6, -1)
        assert torch.equal(again.kernel(data, get="ntk"), arch.kernel(data, get="ntk"))


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, torch, ntkit as nk
    from ntkit.linalg import KernelOperator
    torch.set_num_threads(1)
    arch = nk.mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn({n}, 40, generator=g, dtype=torch.float64)
    v = torch.randn({n}, 10, generator=g, dtype=torch.float64)
    small = KernelOperator(arch, x[:300], memory_budget={budget})
    small @ v[:300]  # warm-up: allocator, thread pools

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    def reset_peak():  # Linux: resets VmHWM (peak RSS) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status("VmRSS")

    base = reset_peak()
    op = KernelOperator(arch, x, memory_budget={budget})
    out = op @ v
    grew_op = status("VmHWM") - base
    base = reset_peak()
    dense = arch.kernel(x, get="ntk", memory_budget={budget}) @ v  # the n×n route, for contrast
    grew_dense = status("VmHWM") - base
    print(json.dumps(dict(op=grew_op, dense=grew_dense, cached=op.cached,
                          dense_bytes={n} * {n} * 8, err=float((out - dense).norm() / dense.norm()))))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset needs Linux /proc")
def test_peak_memory_stays_under_budget():
    budget = 12 * 2**20
    code = _PEAK_SCRIPT.format(n=2000, budget=budget)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(done.stdout.strip().splitlines()[-1])
    assert res["cached"] is False and res["err"] < 1e-12
    # The dense matrix is 32 MB; the operator must stay within its 12 MiB budget ...
    assert res["dense_bytes"] > 2.5 * budget
    assert res["op"] <= budget, f"peak grew by {res['op'] / 2**20:.1f} MiB > budget"
    # ... and the same measurement does see an n×n matrix (it is not blind).
    assert res["dense"] >= res["dense_bytes"]
