"""Fused fully-connected tiles (ntkit.infinite.fused_fc): the same kernel as the layer engine.

The tile function is plain torch ops, so its numerics are checked here eagerly (no
compilation, fast); the compiled route through a real ``torch.compile`` is the slow test in
tests/test_cpu_choices.py.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import pytest
import torch

import ntkit as nk
from ntkit.infinite import fused_fc
from ntkit.infinite.engine import kernel_block
from ntkit.infinite.fused_fc import FusedTiles, fc_steps, fc_tile, variances, wanted
from ntkit.infinite.source import LayerSource
from ntkit.linalg import KernelOperator

ARCHS = {
    "relu": lambda: nk.mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1),
    "relu-no-bias": lambda: nk.mlp(3, 512, "relu", W_std=2**0.5),
    "leaky-abs": lambda: nk.serial(nk.Dense(8, 1.3, 0.2), nk.LeakyReLU(0.5), nk.Dense(8, 1.1), nk.Abs(),
                                   nk.Dense(8), nk.LeakyReLU(0.1), nk.Dense(1)),
    "abrelu": lambda: nk.serial(nk.serial(nk.Dense(8, 1.3, 0.2), nk.ABReLU(-0.5, 2.0)), nk.Dense(8, 1.0, 0.5),
                                nk.ReLU(), nk.Dense(1)),
    "linear-slopes": lambda: nk.serial(nk.Dense(8, 1.2, 0.3), nk.ABReLU(0.7, 0.7), nk.Dense(1)),
}


def _inputs(n: int = 120, d: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[1] = -1.5 * x[0] + 0.1 * x[8]  # ρ ≈ −1 (t ≈ 0.07): the 1 − t·cot t series
    x[3] = -x[2]  # exactly antiparallel
    x[5] = x[4] * (1 + 1e-6)  # near-duplicate: ρ ≈ 1
    x[7] = 3.0 * x[6]  # parallel, other norm
    return x.float()


def _fused(arch, x1, x2, get):
    steps = fc_steps(arch)
    d = x1.shape[1]
    return fc_tile(x1 @ x2.T, variances((x1 * x1).sum(1) / d, steps), variances((x2 * x2).sum(1) / d, steps),
                   steps, get == "ntk", d)


@pytest.mark.parametrize("get", ["ntk", "nngp"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_fused_tile_equals_the_engine(name, get):
    """Against the engine in float64 on the float32 inputs: the fused float32 tile is as
    accurate as the engine's float32 tile (entrywise, relative to the entry)."""
    arch = ARCHS[name]()
    x = _inputs()
    a, b = x[:60], x  # rows paired with every column, the special pairs included
    ref = getattr(kernel_block(arch, a.double(), b.double(), want_ntk=get == "ntk"), get)
    ref32 = getattr(kernel_block(arch, a, b, want_ntk=get == "ntk"), get).double()
    out = _fused(arch, a, b, get)
    assert out.dtype == torch.float32 and out.shape == (60, 120)
    floor = 1e-4 * ref.abs().max()
    err = ((out.double() - ref).abs() / ref.abs().clamp_min(floor)).max()
    err32 = ((ref32 - ref).abs() / ref.abs().clamp_min(floor)).max()
    assert err <= max(4 * err32, 2e-6), (float(err), float(err32))


def test_antiparallel_pairs_keep_relative_accuracy():
    """At ρ ≈ −1 the NNGP of an ABReLU is a small difference; its series keeps it to float32
    accuracy relative to the entry itself (no floor)."""
    arch = nk.serial(nk.Dense(8, 1.0), nk.ReLU(), nk.Dense(1))
    x = _inputs()
    ref = kernel_block(arch, x[:4].double(), x[:4].double(), want_ntk=False).nngp
    out = _fused(arch, x[:4], x[:4], "nngp").double()
    assert 0 < ref[0, 1] < 1e-4 * ref[0, 0]  # really the cancelling corner
    assert float(abs(out[0, 1] - ref[0, 1]) / ref[0, 1]) < 2e-5  # the engine's float32: 6e-6
    assert ref[2, 3] == 0 and abs(float(out[2, 3])) < 1e-7 * float(ref[2, 2])  # exactly antiparallel


def test_atan2_polynomial_against_torch():
    y = torch.linspace(0, 3, 301, dtype=torch.float64)
    yy, xx = torch.meshgrid(y, y, indexing="ij")
    keep = (yy > 0) | (xx > 0)
    got = fused_fc._atan2_nonneg(yy[keep].float(), xx[keep].float()).double()
    want = torch.atan2(yy[keep].float().double(), xx[keep].float().double())
    assert float((got - want).abs().max()) < 2.5e-7
    assert float(fused_fc._atan2_nonneg(torch.tensor(1.0), torch.tensor(0.0))) == pytest.approx(math.pi / 2)
    assert float(fused_fc._atan2_nonneg(torch.tensor(0.0), torch.tensor(2.0))) == 0.0


def test_steps_of_supported_and_unsupported_architectures():
    steps = fc_steps(nk.mlp(2, 64, "relu", W_std=1.5, b_std=0.2))
    assert steps == (("dense", 2.25, 0.2**2), ("abrelu", 0.0, 1.0), ("dense", 2.25, 0.2**2))
    assert fc_steps(ARCHS["abrelu"]())[1] == ("abrelu", -0.5, 2.0)  # nested serial opened
    for arch in (
        nk.mlp(2, 64, "erf"),
        nk.mlp(2, 64, "relu", parameterization="standard"),
        nk.serial(nk.Dense(8, torch.tensor(1.5, requires_grad=True)), nk.ReLU(), nk.Dense(1)),
        nk.serial(nk.Conv(4, (3,)), nk.ReLU(), nk.Flatten(), nk.Dense(1)),
    ):
        assert fc_steps(arch) is None


def test_walk_size_and_environment_decide_whether_to_compile(monkeypatch):
    monkeypatch.delenv("NTKIT_FUSED", raising=False)
    monkeypatch.delenv("NTKIT_TUNE", raising=False)
    assert not wanted(fused_fc.MIN_ENTRIES - 1) and wanted(fused_fc.MIN_ENTRIES)
    monkeypatch.setenv("NTKIT_TUNE", "0")
    assert not wanted(fused_fc.MIN_ENTRIES)
    monkeypatch.setenv("NTKIT_FUSED", "1")
    assert wanted(1)
    monkeypatch.setenv("NTKIT_FUSED", "0")
    monkeypatch.delenv("NTKIT_TUNE")
    assert not wanted(10 * fused_fc.MIN_ENTRIES)


def _eager_compile(steps, want_ntk, fan_in, example):
    """Stand-in for torch.compile: the same function, eagerly (the numbers are the point)."""
    return partial(fc_tile, steps=steps, want_ntk=want_ntk, fan_in=fan_in)


@pytest.fixture
def fresh_decisions(monkeypatch):
    monkeypatch.setattr(fused_fc, "_decided", {})
    monkeypatch.setenv("NTKIT_FUSED", "1")
    return monkeypatch


def test_operator_product_through_fused_tiles(fresh_decisions):
    """Off-diagonal tiles fused, diagonal ones from the engine: K @ v as the engine's operator."""
    fresh_decisions.setattr(fused_fc, "_compile", _eager_compile)
    fresh_decisions.setattr(fused_fc, "MARGIN", -math.inf)  # keep the fused tile whatever its speed
    arch = ARCHS["relu"]()
    x = _inputs(300)
    v = torch.randn(300, 3, generator=torch.Generator().manual_seed(1))
    op = KernelOperator(arch, x, dtype=torch.float32, tile=64, cache=False, threads=2)
    assert op.source._fused is not None
    got = (op @ v).double()
    assert fused_fc.choice(op.source._fused.steps, True, 16) == "fused" and op.source.serial_tiles
    diag = op.source.block(slice(64, 128), slice(64, 128))  # a diagonal tile, now compiled too
    assert torch.equal(diag, diag.T)
    assert torch.equal(diag.diagonal(), arch.kernel(x[64:128], get="ntk", diagonal=True, dtype=torch.float32))
    fresh_decisions.setenv("NTKIT_FUSED", "0")
    plain = KernelOperator(arch, x, dtype=torch.float32, tile=64, cache=False, threads=2)
    assert plain.source._fused is None
    exact = KernelOperator(arch, x.double(), tile=64, cache=False) @ v.double()
    want = (plain @ v).double()
    scale = exact.abs().max()
    assert float((got - exact).abs().max() / scale) < 4 * max(float((want - exact).abs().max() / scale), 1e-7)
    # a rectangular source (prediction) too, with its self pairs pinned exactly
    fresh_decisions.setenv("NTKIT_FUSED", "1")
    rect = LayerSource(arch, x, dtype=torch.float32).restrict(rows=torch.arange(50))
    assert rect._fused is not None and not rect.symmetric
    tile = rect.block(slice(0, 50), slice(0, 300)).double()
    ref = kernel_block(arch, x[:50].double(), x.double(), want_ntk=True).ntk
    pinned = arch.kernel(x[:50], get="ntk", diagonal=True, dtype=torch.float32).double()
    assert torch.equal(tile.diagonal(), pinned)  # self pairs pinned to the exact diagonal
    ref32 = kernel_block(arch, x[:50], x, want_ntk=True).ntk.double()
    err = ((tile - ref).abs() / ref.abs()).max()
    assert err <= max(4 * ((ref32 - ref).abs() / ref.abs()).max(), 2e-6)


def test_failed_compilation_keeps_the_engine(fresh_decisions):
    def broken(*args):
        raise RuntimeError("no C++ compiler")

    fresh_decisions.setattr(fused_fc, "_compile", broken)
    arch = ARCHS["relu"]()
    x = _inputs(200)
    src = LayerSource(arch, x[:100], x[100:], dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        first = src.block(slice(0, 100), slice(0, 100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = src.block(slice(0, 100), slice(0, 100))  # decided once: no second warning
    engine = kernel_block(arch, x[:100], x[100:], want_ntk=True).ntk
    assert torch.equal(first, engine) and torch.equal(again, engine)
    assert fused_fc.choice(src._fused.steps, True, 16) == "engine"


def test_wrong_compiled_tiles_are_refused(fresh_decisions):
    def wrong(steps, want_ntk, fan_in, example):
        return lambda gram, var1, var2: fc_tile(gram, var1, var2, steps, want_ntk, fan_in) * 1.001

    fresh_decisions.setattr(fused_fc, "_compile", wrong)
    fresh_decisions.setattr(fused_fc, "MARGIN", -math.inf)
    x = _inputs(200)
    src = LayerSource(ARCHS["relu"](), x[:100], x[100:], dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="disagree"):
        src.block(slice(0, 100), slice(0, 100))
    assert fused_fc.choice(src._fused.steps, True, 16) == "engine"


def test_zero_variance_examples_stay_on_the_engine(fresh_decisions):
    fresh_decisions.setattr(fused_fc, "_compile", _eager_compile)
    x = _inputs(100)
    x[10] = 0.0
    src = LayerSource(ARCHS["relu-no-bias"](), x[:50], x[50:], dtype=torch.float32)
    assert not src._fused.usable
    tile = src.block(slice(0, 50), slice(0, 50))
    assert torch.equal(tile, kernel_block(ARCHS["relu-no-bias"](), x[:50], x[50:], want_ntk=True).ntk)
    assert fused_fc.choice(src._fused.steps, True, 16) is None  # never asked
    assert FusedTiles(src._fused.steps, True, x.double(), x.double()).usable is False  # float64


def test_compiled_walks_take_their_own_tile_side(fresh_decisions):
    """The engine's measured side does not apply to compiled tiles (fused_fc.TILE_ENTRIES)."""
    fresh_decisions.setattr(fused_fc, "TILE_ENTRIES", 40 * 40)
    x = _inputs(300)
    assert LayerSource(ARCHS["relu"](), x, dtype=torch.float32).side(2**30) == 40
    fresh_decisions.setenv("NTKIT_TILE_ENTRIES", str(30 * 30))
    assert LayerSource(ARCHS["relu"](), x, dtype=torch.float32).side(2**30) == 30
    fresh_decisions.setenv("NTKIT_FUSED", "0")
    fresh_decisions.delenv("NTKIT_TILE_ENTRIES")
    assert LayerSource(ARCHS["relu"](), x, dtype=torch.float32).side(2**30) != 40
