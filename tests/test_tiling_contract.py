"""The tiling contract, over every kernel source: tiles change nothing but memory.

For each source (infinite FC, infinite CNN with pooling, the empirical NTK of a small MLP, a
precomputed matrix): the tiled matrix equals the one-tile matrix to 1e-12 (float64) at
budgets that force 1, 2 and many tiles; the symmetric walk (``x2=None``) is exactly
symmetric and its mirrored blocks equal the cross blocks computed directly; peak memory of
a tiled computation, measured in a fresh process, stays under budget + inputs + output.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.empirical import EmpiricalNTKSource
from ntkit.infinite import engine
from ntkit.linalg import KernelOperator, TensorSource
from ntkit.tiling import Tile, assemble, even_bounds, grid, map_tiles, square_side, walk

F64 = torch.float64
N = 24


def _x(*shape, seed=0):
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _fc():
    return nk.mlp(3, 1, "relu", b_std=0.1)


def _cnn():
    return nk.serial(nk.Conv(4, (3, 3), padding="same"), nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(1))


def _mlp_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2)).double()


def _sources():
    x_fc, x_img = _x(N, 5), _x(N, 2, 4, 4, seed=1)
    K = nk.mlp(2, 1, "erf").kernel(_x(N, 5, seed=2), get="ntk")
    return {
        "infinite_fc": _fc().kernel_source(x_fc),
        "infinite_cnn_pool": _cnn().kernel_source(x_img),
        "empirical_ntk": EmpiricalNTKSource(_mlp_model(), x_fc, method="jacobian"),
        "tensor": TensorSource(K),
    }


SOURCES = _sources()


def _untiled(src) -> torch.Tensor:
    n1, n2 = src.shape
    return src.block(slice(0, n1), slice(0, n2))


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", list(SOURCES))
@pytest.mark.parametrize("tiles_per_side", [1, 2, 8])
def test_tiled_equals_untiled(name, tiles_per_side):
    src = SOURCES[name]
    n = src.shape[0]
    side = math.ceil(n / tiles_per_side)
    budget = src.tile_bytes(side, side)  # exactly one tile of this side fits
    op = KernelOperator(src, memory_budget=budget, cache=False, threads=1)
    assert op.tile == min(side, src.side(budget)) and op.tile <= side
    assert len(op.tile_grid()) >= (tiles_per_side * (tiles_per_side + 1)) // 2
    dense = op @ torch.eye(n, dtype=F64)  # every tile, streamed into the products
    ref = _untiled(src)
    assert _rel(dense, ref) < 1e-12
    # on several threads the result is the same, bit for bit (fixed summation order)
    op2 = KernelOperator(src, memory_budget=2 * budget, cache=False, threads=2)
    if op2.tile == op.tile:
        assert torch.equal(op2 @ torch.eye(n, dtype=F64), dense)
    # and the cached route gives the same matrix
    cached = KernelOperator(src, memory_budget=budget + n * n * 8, tile=op.tile, threads=1)
    assert cached.cached
    assert _rel(cached @ torch.eye(n, dtype=F64), ref) < 1e-12


@pytest.mark.parametrize("name", list(SOURCES))
def test_symmetric_walk_equals_cross_blocks(name):
    src = SOURCES[name]
    assert src.symmetric
    n = src.shape[0]
    k = n // 3
    op = KernelOperator(src, memory_budget=src.tile_bytes(5, 5), cache=False, threads=1)
    dense = op @ torch.eye(n, dtype=F64)
    assert torch.equal(dense, dense.T)  # mirrored exactly
    cross = src.restrict(rows=torch.arange(k), cols=torch.arange(k, n))
    assert not cross.symmetric
    assert _rel(dense[:k, k:], _untiled(cross)) < 1e-12
    # x2 given equal to x1: the same matrix
    same = _untiled(src.restrict(rows=torch.arange(n), cols=torch.arange(n)))
    assert _rel(dense, same) < 1e-12


def test_empirical_source_x2_equal_x1():
    """``EmpiricalNTKSource(model, x, x)`` is the symmetric source; the cross route (columns
    permuted, so no pair of blocks is a diagonal one) gives the same matrix."""
    model, x = _mlp_model(), _x(N, 5)
    sym = EmpiricalNTKSource(model, x, method="jacobian")
    assert EmpiricalNTKSource(model, x, x.clone(), method="jacobian").symmetric
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    cross = EmpiricalNTKSource(model, x, x[perm], method="jacobian")
    assert not cross.symmetric
    budget = sym.tile_bytes(7, 7)
    dense = KernelOperator(sym, memory_budget=budget, cache=False) @ torch.eye(N, dtype=F64)
    dense_cross = KernelOperator(cross, memory_budget=budget, cache=False) @ torch.eye(N, dtype=F64)
    assert torch.equal(dense, dense.T)
    assert _rel(dense_cross, dense[:, perm]) < 1e-12


@pytest.mark.parametrize("arch_name", ["fc", "cnn"])
@pytest.mark.parametrize("tiles_per_side", [1, 2, 8])
def test_engine_tiles_equal_untiled(arch_name, tiles_per_side):
    """``arch.kernel``'s own walk (dense and pair-list paths) under forcing budgets."""
    arch, x = (_fc(), _x(N, 5)) if arch_name == "fc" else (_cnn(), _x(N, 2, 4, 4, seed=1))
    full = arch.kernel(x, memory_budget="1GiB")
    per_pair = engine.pair_bytes(arch, x, True)
    side = math.ceil(N / tiles_per_side)
    pairs = side * side + (2 * side if arch.needs_full_spatial() else 0)
    k = arch.kernel(x, memory_budget=per_pair * pairs)
    for a, b in ((k.ntk, full.ntk), (k.nngp, full.nngp)):
        assert _rel(a, b) < 1e-12
    assert torch.equal(k.ntk, k.ntk.T)
    cross = arch.kernel(x, x + 0.0, memory_budget=per_pair * pairs)  # x2 == x1: symmetric
    assert torch.equal(cross.ntk, k.ntk)
    k12 = arch.kernel(x[:10], x[10:], memory_budget=per_pair * pairs)
    assert _rel(k.ntk[:10, 10:], k12.ntk) < 1e-12


@pytest.mark.parametrize("batch", [N, N // 2, 3])
def test_empirical_blocks_equal_untiled(batch):
    model = _mlp_model()
    x = _x(N, 5)
    ref = nk.empirical_ntk(model, x, batch_size=N, method="jacobian")
    k = nk.empirical_ntk(model, x, batch_size=batch, method="jacobian")
    assert _rel(k, ref) < 1e-12 and torch.equal(k, k.T)
    k2 = nk.empirical_ntk(model, x, x.clone(), batch_size=batch, method="jacobian")
    assert _rel(k2, ref) < 1e-12
    k12 = nk.empirical_ntk(model, x[:10], x[10:], batch_size=batch, method="jacobian")
    assert _rel(k12, ref[:10, 10:]) < 1e-12


@pytest.mark.parametrize("batch", [None, 40])
def test_structured_self_chunks_equal_untiled(monkeypatch, batch):
    """The structured method's own walk of a block with itself (row chunks, upper half,
    mirrored: ``ntkit.tiling``) against the one-product block and the Jacobian route."""
    from ntkit.empirical import structured
    from ntkit.empirical.jacobian import Accumulator

    model, x = _mlp_model(), _x(3 * N, 5)
    ref = nk.empirical_ntk(model, x, method="jacobian")
    whole = nk.empirical_ntk(model, x, method="structured", batch_size=batch)
    monkeypatch.setattr(structured, "SYMMETRIC_CHUNK_FLOPS", 0)
    monkeypatch.setattr(structured, "SYMMETRIC_CHUNK_MIN", 5)
    calls = []
    mirror = Accumulator.mirror
    monkeypatch.setattr(Accumulator, "mirror",
                        lambda acc, *bounds: calls.append(bounds) or mirror(acc, *bounds))
    chunked = nk.empirical_ntk(model, x, method="structured", batch_size=batch)
    assert len(calls) >= (3 if batch is None else 2)  # chunk pairs above the diagonal, mirrored
    assert torch.equal(chunked, chunked.T)
    assert _rel(chunked, ref) < 1e-12 and _rel(chunked, whole) < 1e-12
    for output in ("full", "diagonal"):
        a = nk.empirical_ntk(model, x, output=output, method="structured", batch_size=batch)
        b = nk.empirical_ntk(model, x, output=output, method="jacobian")
        assert _rel(a, b) < 1e-12


def test_walk_primitives():
    tiles = grid(5, 5, 2, symmetric=True)
    assert [(t.r0, t.c0, t.diagonal) for t in tiles] == [
        (0, 0, True), (0, 2, False), (0, 4, False), (2, 2, True), (2, 4, False), (4, 4, True)
    ]
    assert len(grid(5, 3, 2, 2)) == 6
    assert even_bounds(11, 4) == [(0, 2), (2, 5), (5, 8), (8, 11)]
    b = even_bounds(11, 4)
    assert [(t.r0, t.c0, t.diagonal) for t in walk(b, b, symmetric=True)][:5] == [
        (0, 0, True), (0, 2, False), (0, 5, False), (0, 8, False), (2, 2, True)
    ]
    assert len(walk(b, b, symmetric=True)) == 10 and len(walk(b, b)) == 16
    assert square_side(8, 8 * 100) == 10 and square_side(8, 8 * 100, cap_pairs=16) == 4
    A = torch.arange(25.0, dtype=F64).reshape(5, 5)
    S = A + A.T

    def compute(t: Tile):
        return (S[t.rows, t.cols] + (1.0 if t.diagonal else 0.0),)

    (out,) = assemble(tiles, compute, lambda p: [torch.empty(5, 5, dtype=F64)], symmetric=True)
    assert torch.equal(out, S + torch.block_diag(*(torch.ones(2, 2), torch.ones(2, 2), torch.ones(1, 1))))
    assert list(map_tiles(lambda i: i * i, range(7), threads=3)) == [i * i for i in range(7)]


# ------------------------------------------------------------------ peak memory

_PEAK = textwrap.dedent(
    """
    import json, resource, sys, torch
    torch.set_num_threads(1)
    import ntkit as nk
    from torch import nn
    case, budget = sys.argv[1], int(sys.argv[2])
    g = torch.Generator().manual_seed(0)
    if case == "fc_operator":
        x = torch.randn(2000, 20, dtype=torch.float64, generator=g)
        src = nk.mlp(3, 1, "relu").kernel_source(x)
        out_bytes = 2000 * 8
    elif case == "cnn_operator":
        x = torch.randn(120, 3, 4, 4, dtype=torch.float64, generator=g)
        arch = nk.serial(nk.Conv(4, (3, 3), padding="same"), nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(1))
        src = arch.kernel_source(x)
        out_bytes = 120 * 8  # untiled, the (120, 120, 16, 16) pair tensors: 29 MB each
    elif case == "empirical_operator":
        x = torch.randn(2000, 20, dtype=torch.float64, generator=g)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 1)).double()
        src = nk.empirical.EmpiricalNTKSource(model, x, method="jacobian", memory_budget=budget)
        out_bytes = 2000 * 8
    elif case == "fc_kernel":
        x = torch.randn(2000, 20, dtype=torch.float64, generator=g)
        out_bytes = 2000 * 2000 * 8
    v = torch.ones(x.shape[0], dtype=torch.float64)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if case == "fc_kernel":
        r = nk.mlp(3, 1, "relu").kernel(x, get="ntk", memory_budget=budget)
    else:
        op = nk.linalg.KernelOperator(src, memory_budget=budget, cache=False, threads=1)
        r = op @ v
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(grew=peak - base, out=out_bytes, inputs=x.numel() * 8)))
    """
)


@pytest.mark.parametrize("case", [
    "fc_operator", "cnn_operator", pytest.param("empirical_operator", marks=pytest.mark.slow), "fc_kernel",
])
def test_peak_memory_under_budget_inputs_and_output(case):
    budget = 8 * 2**20  # a dense 2000×2000 float64 matrix (32 MB) would not fit the bound
    proc = subprocess.run([sys.executable, "-c", _PEAK, case, str(budget)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    slack = 12 * 2**20  # allocator granularity, autograd/vmap bookkeeping, the product vector
    assert r["grew"] <= budget + r["inputs"] + r["out"] + slack, r
