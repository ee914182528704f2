"""CPU-dependent choices (:mod:`ntkit.hardware`): each forced route and tile size gives the
same numbers to float32 round-off, the decision rules pick what they say, and small
computations never pay for a timing probe.

The reference of every product is the float64 kernel matrix (``arch.kernel``, an independent
dense path) times the same vector; the bound is float32 rounding of the entries and of the
sums, ``c·ε₃₂·(|K| |v|)``, per entry.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys

import pytest
import torch

import ntkit as nk
from ntkit import _fast_matmul, hardware, tiling
from ntkit.linalg import KernelOperator

F32, F64 = torch.float32, torch.float64
EPS32 = torch.finfo(F32).eps


def _arch():
    return nk.mlp(3, 64, "relu", W_std=2**0.5, b_std=0.1)


def _data(n=64, d=6, k=3):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g, dtype=F64)
    v = torch.randn(n, k, generator=g, dtype=F64)
    return x, v


@pytest.fixture
def route(monkeypatch):
    """``route(name)``: force the float32 product route for every product size; returns a
    list that counts the oneDNN calls."""
    calls = []

    def set_route(name: str):
        if name == "onednn" and not _fast_matmul._works(_fast_matmul._onednn, F32):
            pytest.skip("this torch build has no oneDNN linear op")

        def counted(a, b):
            calls.append(tuple(a.shape))
            return _fast_matmul._onednn(a, b)

        monkeypatch.setenv("NTKIT_FAST_MATMUL", "1" if name == "onednn" else "0")
        monkeypatch.setitem(_fast_matmul._ROUTES, F32, counted)
        monkeypatch.setattr(_fast_matmul, "MIN_FLOPS", 0)
        _fast_matmul.route.cache_clear()
        assert hardware.matmul_route(F32) == name
        calls.clear()
        return calls

    yield set_route
    _fast_matmul.route.cache_clear()


def _bound(arch, x, v):
    K = arch.kernel(x, get="ntk")
    return K @ v, 64 * EPS32 * (K.abs() @ v.abs())


@pytest.mark.parametrize("name", ["mm", "onednn"])
@pytest.mark.parametrize("tile", [7, 16, 64])
def test_every_route_and_tile_agrees_to_float32_round_off(route, name, tile):
    arch = _arch()
    x, v = _data()
    exact, bound = _bound(arch, x, v)
    calls = route(name)
    op = KernelOperator(arch, x, dtype=F32, cache=False, tile=tile)
    got = (op @ v.float()).double()
    assert op.tile == tile
    assert bool(((got - exact).abs() <= bound).all()), float(((got - exact).abs() / bound).max())
    # the forced route did the products (the Gram of each tile and K_IJ v_J), or none of them
    assert (len(calls) > 0) == (name == "onednn")


def test_routes_agree_with_each_other_on_a_rectangular_operator(route):
    arch = _arch()
    x, v = _data(n=70)
    xt = x[:41] + 0.1
    K = arch.kernel(xt, x, get="ntk")
    bound = 64 * EPS32 * (K.abs() @ v.abs())
    results = {}
    for name in ("mm", "onednn"):
        route(name)
        op = KernelOperator(arch, xt, x, dtype=F32, cache=False, tile=9)
        results[name] = (op @ v.float()).double()
        assert bool(((results[name] - K @ v).abs() <= bound).all())
        u = torch.ones(41, 2, dtype=F64)
        back = (op.T @ u.float()).double()
        assert bool(((back - K.T @ u).abs() <= 64 * EPS32 * (K.abs().T @ u)).all())
    assert bool(((results["mm"] - results["onednn"]).abs() <= 2 * bound).all())


def test_a_sign_flipped_product_fails_the_bound():
    """The bound of these tests is tight enough to see a wrong product."""
    arch = _arch()
    x, v = _data()
    exact, bound = _bound(arch, x, v)
    op = KernelOperator(arch, x, dtype=F32, cache=False, tile=16)
    wrong = (op @ v.float()).double()
    wrong[7] = -wrong[7]
    assert not bool(((wrong - exact).abs() <= bound).all())


@pytest.mark.parametrize("side", [10, 23])
def test_the_measured_tile_size_reaches_the_operator(monkeypatch, side):
    """A large walk takes its tile from hardware.tile_entries (forced here); the product is
    unchanged to round-off."""
    monkeypatch.setattr(tiling, "TUNE_MIN_PAIRS", 0)
    monkeypatch.setenv("NTKIT_TILE_ENTRIES", str(side * side))
    arch = _arch()
    x, v = _data()
    exact, bound = _bound(arch, x, v)
    op = KernelOperator(arch, x, dtype=F32, cache=False)
    assert op.tile == side
    got = (op @ v.float()).double()
    assert bool(((got - exact).abs() <= bound).all())
    # arch.kernel's own walk uses it too, with the same entries as the dense float64 kernel
    k32 = arch.kernel(x, get="ntk", dtype=F32).double()
    K = arch.kernel(x, get="ntk")
    assert float((k32 - K).abs().max()) <= 64 * EPS32 * float(K.abs().max())


def test_small_computations_never_time_anything(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a timing probe ran for a small computation")

    monkeypatch.setattr(hardware, "_cpu_seconds_per_entry", forbidden)
    monkeypatch.setattr(hardware, "_throughput", forbidden)
    monkeypatch.delenv("NTKIT_TILE_ENTRIES", raising=False)
    monkeypatch.delenv("NTKIT_TUNE", raising=False)
    hardware._measured_tile_entries.cache_clear()
    try:
        x, v = _data()
        arch = _arch()
        arch.kernel(x, get="ntk", dtype=F32)
        KernelOperator(arch, x, dtype=F32, cache=False) @ v.float()
        assert tiling.tile_cap(tiling.TUNE_MIN_PAIRS - 1, F32) == tiling.CACHE_TILE_ENTRIES
        assert tiling.tile_cap(10**12, F32, "meta") == tiling.CACHE_TILE_ENTRIES
        with pytest.raises(AssertionError, match="timing probe"):
            tiling.tile_cap(tiling.TUNE_MIN_PAIRS, F32)  # a large walk does ask
    finally:
        hardware._measured_tile_entries.cache_clear()


def test_tile_rule_keeps_the_default_unless_clearly_faster(monkeypatch):
    default = math.isqrt(hardware.DEFAULT_TILE_ENTRIES)
    for costs, expected in [
        ({256: 1.00, 362: 0.95, 512: 1.0, 724: 0.93, 1024: 1.2}, default),  # 7%: not enough
        ({256: 1.00, 362: 0.80, 512: 1.0, 724: 0.85, 1024: 1.2}, 362),
        ({256: 2.00, 362: 1.50, 512: 1.0, 724: 1.01, 1024: 0.5}, 1024),
    ]:
        monkeypatch.setattr(hardware, "_cpu_seconds_per_entry", lambda sides, dtype, c=costs: c)
        hardware._measured_tile_entries.cache_clear()
        assert hardware.tile_entries(F32) == expected * expected
    hardware._measured_tile_entries.cache_clear()


def test_no_tuning_means_fixed_defaults(monkeypatch):
    monkeypatch.setenv("NTKIT_TUNE", "0")
    monkeypatch.delenv("NTKIT_FAST_MATMUL", raising=False)
    monkeypatch.delenv("NTKIT_TILE_ENTRIES", raising=False)
    _fast_matmul.route.cache_clear()
    assert not hardware.tuning_enabled()
    assert hardware.tile_entries(F32) == hardware.DEFAULT_TILE_ENTRIES
    assert hardware.matmul_route(F32) == "mm"
    assert hardware.matmul_route(F64) == "mm"
    assert hardware.tile_threads() == torch.get_num_threads()
    assert hardware.keep_freed_memory() is False
    monkeypatch.setenv("NTKIT_TILE_ENTRIES", "0")
    with pytest.raises(ValueError, match="NTKIT_TILE_ENTRIES"):
        hardware.tile_entries(F32)
    _fast_matmul.route.cache_clear()


def test_hyperthreads_are_used_only_when_they_help(monkeypatch):
    info = hardware.cpu_info()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    ht = hardware.CPUInfo("test CPU", 2, 1, None, None, info.capability, 1)
    monkeypatch.setattr(hardware, "cpu_info", lambda: ht)
    for rates, expected in [({1: 10.0, 2: 12.0}, 2), ({1: 10.0, 2: 10.5}, 1)]:
        monkeypatch.setattr(hardware, "_throughput", lambda w, side, r=rates: r[w])
        hardware._hyperthread_workers.cache_clear()
        assert hardware.tile_threads() == expected
    hardware._hyperthread_workers.cache_clear()
    no_ht = hardware.CPUInfo("test CPU", 2, 2, None, None, info.capability, 1)
    monkeypatch.setattr(hardware, "cpu_info", lambda: no_ht)
    assert hardware.tile_threads() == 1  # torch's own count: no probe


def test_facts_and_probes_are_sane():
    info = hardware.cpu_info()
    assert info.logical >= 1 and info.model and info.describe()
    assert info.physical is None or 1 <= info.physical <= info.logical
    costs = hardware._cpu_seconds_per_entry((32, 48), F32, rounds=1)
    assert all(0 < c < 1e-3 for c in costs.values())
    assert hardware.gemm_rate(F32, "mm", (64, 64, 64), repeats=1) > 0
    assert hardware.bandwidth("add", nbytes=1 << 16, repeats=1) > 0
    with pytest.raises(ValueError, match="route"):
        hardware.gemm_rate(F64, "onednn", (8, 8, 8))
    with pytest.raises(ValueError, match="kind"):
        hardware.bandwidth("scale")


_FAULTS_SCRIPT = """
import json, resource, torch
import ntkit as nk
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x = torch.randn(40, 4, 40, generator=g, dtype=torch.float64)
a = (torch.rand(40, 40, 40, generator=g) < 0.2).double()
arch = nk.serial(nk.Aggregate(), nk.Dense(8, 2**0.5), nk.ReLU(), nk.Aggregate(), nk.Dense(8), nk.ReLU(),
                 nk.GlobalSumPool(), nk.Dense(1))
k0 = arch.kernel(x, pattern1=a)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
k1 = arch.kernel(x, pattern1=a)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
same = bool((k0.ntk == k1.ntk).all())
print(json.dumps({"faults": faults, "ntk": k1.ntk.flatten().tolist(), "same": same}))
"""


def _faults(tune: str) -> dict:
    env = {**os.environ, "NTKIT_TUNE": tune, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc only")
def test_kernel_evaluation_keeps_freed_memory():
    # A graph NTK's pair chunks (2-13 MiB) are allocated and freed per layer: without the
    # thresholds (NTKIT_TUNE=0) every chunk is faulted in afresh; with them a repeated
    # evaluation reuses the heap. Results are bit-identical (memory reuse only).
    on, off = _faults("1"), _faults("0")
    assert on["same"] and off["same"] and on["ntk"] == off["ntk"]
    # measured: 1 or ~2,000 faults with the thresholds (the second evaluation does not always
    # fit the first's freed heap), 7,700-20,800 without them
    assert on["faults"] * 2 < off["faults"], (on["faults"], off["faults"])


@pytest.mark.slow
@pytest.mark.parametrize("tile", [16, 24])
def test_compiled_fully_connected_tiles_agree_to_float32_round_off(monkeypatch, tile):
    """The compiled route (ntkit.infinite.fused_fc through a real torch.compile), kept
    whatever its speed, gives the operator's product within the same float32 bound; its
    tiles equal the same function run eagerly to round-off."""
    from ntkit.infinite import fused_fc

    monkeypatch.setattr(fused_fc, "_decided", {})
    monkeypatch.setattr(fused_fc, "MARGIN", -math.inf)
    monkeypatch.setenv("NTKIT_FUSED", "1")
    arch = _arch()
    x, v = _data()
    exact, bound = _bound(arch, x, v)
    op = KernelOperator(arch, x, dtype=F32, cache=False, tile=tile, threads=2)
    got = (op @ v.float()).double()
    assert fused_fc.choice(op.source._fused.steps, True, x.shape[1]) == "fused"
    assert bool(((got - exact).abs() <= bound).all()), float(((got - exact).abs() / bound).max())
    fused = op.source._fused
    rows, cols = slice(0, 40), slice(40, 64)
    compiled = fused.tile(rows, cols, engine=None)
    eager = fused_fc.fc_tile(x[rows].float() @ x[cols].float().T, fused.var1[:, rows], fused.var2[:, cols],
                             fused.steps, True, x.shape[1])
    assert float((compiled - eager).abs().max()) <= 16 * EPS32 * float(eager.abs().max())
