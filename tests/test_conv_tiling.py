"""Cost control of the convolutional kernels (issue 5): shortcut, tiling, symmetry, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ntkit as nk
from conv_reference import one_thread
from ntkit.errors import MemoryBudgetError
from ntkit.infinite import engine
from ntkit.infinite.conv import Conv
from ntkit.infinite.pooling import AvgPool, Flatten, GlobalAvgPool


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


class FullSpatialIdentity(nk.Identity):
    """The identity, but demanding full spatial covariances: forces the full computation."""

    def needs_full_spatial(self) -> bool:
        return True


def _x(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _body():
    return [Conv(16, 3, b_std=0.1), nk.ReLU(), Conv(16, (2, 3), stride=(2, 1), padding="circular"),
            nk.ReLU(), Conv(16, 2, padding="valid"), nk.Erf()]


def test_flatten_readout_uses_the_diagonal_shortcut_with_the_same_values(monkeypatch):
    x1, x2 = _x(5, 2, 6, 5), _x(4, 2, 6, 5, seed=1)
    calls = []
    real = engine.evaluate_pairs
    monkeypatch.setattr(engine, "evaluate_pairs", lambda *a, **k: calls.append(1) or real(*a, **k))
    short = nk.serial(*_body(), Flatten(), nk.Dense(1))
    full = nk.serial(FullSpatialIdentity(), *_body(), Flatten(), nk.Dense(1))
    for args in ((x1,), (x1, x2)):
        a, b = short.kernel(*args), full.kernel(*args)
        torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-12, atol=0)
        torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-12, atol=0)
        torch.testing.assert_close(a.var1, b.var1, rtol=1e-12, atol=0)
    assert len(calls) == 2  # only the forced architecture took the full route
    # Without a readout too: the shortcut's spatial kernel is the full kernel's diagonal.
    a = nk.serial(*_body()).kernel(x1, x2, get="ntk")
    b = nk.serial(FullSpatialIdentity(), *_body()).kernel(x1, x2, get="ntk")
    p = a[0, 0].numel()
    diagonal = b.reshape(5, 4, p, p).diagonal(dim1=2, dim2=3).reshape(a.shape)
    torch.testing.assert_close(a, diagonal, rtol=1e-12, atol=0)


@pytest.mark.parametrize("readout", ["gap", "flatten", "spatial"])
def test_tiled_equals_untiled(readout):
    head = {"gap": [AvgPool(2, 1), GlobalAvgPool(), nk.Dense(1)], "flatten": [Flatten(), nk.Dense(1)],
            "spatial": [AvgPool(2, 1, padding="same")]}[readout]
    arch = nk.serial(*_body(), *head)
    x1, x2 = _x(11, 2, 6, 5), _x(7, 2, 6, 5, seed=1)
    per_pair = engine.pair_bytes(arch, x1, True)
    small = 3 * per_pair  # the smallest chunk: one pair and its two self pairs
    for args in ((x1,), (x1, x2)):
        for diagonal in (False, True):
            if diagonal and len(args) == 2:
                args = (x1[:7], x2)
            tiled = arch.kernel(*args, diagonal=diagonal, memory_budget=small)
            whole = arch.kernel(*args, diagonal=diagonal, memory_budget=2**34)
            for name in ("nngp", "ntk", "var1", "var2"):
                torch.testing.assert_close(getattr(tiled, name), getattr(whole, name), rtol=1e-12, atol=1e-15)


def test_symmetric_kernel_is_symmetric_and_equals_the_x2_route():
    arch = nk.serial(*_body(), AvgPool(2, 1))  # spatial output (n, n, *S, *S)
    x = _x(6, 2, 6, 5)
    k = arch.kernel(x, memory_budget=3 * engine.pair_bytes(arch, x, True))
    d = k.ntk.ndim - 2
    swapped = k.ntk.permute(1, 0, *range(2 + d // 2, 2 + d), *range(2, 2 + d // 2))
    torch.testing.assert_close(k.ntk, swapped, rtol=1e-12, atol=0)
    # Pairs of distinct examples equal the x2-given computation (which computes all pairs).
    k12 = arch.kernel(x[:3], x[3:])
    torch.testing.assert_close(k.ntk[:3, 3:], k12.ntk, rtol=1e-12, atol=0)


def test_memory_budget_error_names_the_budget_and_the_size_needed():
    arch = nk.serial(Conv(8, 3), nk.ReLU(), GlobalAvgPool(), nk.Dense(1))
    x = _x(4, 1, 8, 8)
    with pytest.raises(MemoryBudgetError, match=r"memory_budget is 0\.1 MiB.*at least \d+ bytes"):
        arch.kernel(x, x, memory_budget=100_000)
    with pytest.raises(MemoryBudgetError, match="memory_budget"):
        nk.serial(Conv(8, 3), Flatten()).kernel(x, memory_budget=1000)
    # The estimate it names is enough.
    need = 3 * engine.pair_bytes(arch, x, True)
    assert arch.kernel(x, x, memory_budget=need, get="ntk").shape == (4, 4)


_PEAK_SCRIPT = """
import json, sys, torch
import ntkit as nk
from ntkit.infinite.conv import Conv
from ntkit.infinite.pooling import GlobalAvgPool
torch.set_num_threads(1)

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

budget = int(sys.argv[1])
arch = nk.serial(Conv(64, 3), nk.ReLU(), Conv(64, 3), nk.ReLU(), GlobalAvgPool(), nk.Dense(1))
x = torch.randn(48, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
arch.kernel(x[:3], memory_budget=budget)  # warm-up: lazy initialization is not the kernel's
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
base = status("VmRSS:")
k = arch.kernel(x, memory_budget=budget)
print(json.dumps({"peak": status("VmHWM:") - base, "ok": bool(torch.isfinite(k.ntk).all())}))
"""


def _peak_above_start(budget: int) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PEAK_SCRIPT), str(budget)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"]
    return out["peak"]


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.access("/proc/self/clear_refs", os.W_OK),
    reason="needs Linux /proc/self/clear_refs to reset the peak resident size",
)
def test_peak_memory_stays_under_the_budget():
    """48 8x8 images with GAP: ~1.2k pairs of 4096-entry covariances (~38 MiB per tensor)."""
    budget = 16 * 2**20
    small = _peak_above_start(budget)
    assert small < budget, small / 2**20
    # The measurement can fail: with a large budget the chunks (and the peak) are larger.
    large = _peak_above_start(2**34)
    assert large > 2 * small, (small / 2**20, large / 2**20)


def test_kernel_block_of_a_pooling_architecture_equals_kernel():
    """``engine.kernel_block`` (one tile, for blockwise consumers) takes the pair route too."""
    arch = nk.serial(*_body(), GlobalAvgPool(), nk.Dense(1))
    a, b = _x(3, 2, 6, 5), _x(4, 2, 6, 5, seed=1)
    block = engine.kernel_block(arch, a, b, want_ntk=True)
    whole = arch.kernel(a, b)
    torch.testing.assert_close(block.ntk, whole.ntk, rtol=1e-12, atol=0)
    torch.testing.assert_close(block.var1, whole.var1, rtol=1e-12, atol=0)
    torch.testing.assert_close(block.var2, whole.var2, rtol=1e-12, atol=0)
    same = engine.kernel_block(arch, a, None, want_ntk=True)
    torch.testing.assert_close(same.nngp, arch.kernel(a).nngp, rtol=1e-12, atol=0)
    diag = engine.kernel_block(arch, a, b[:3], want_ntk=True, diagonal=True)
    torch.testing.assert_close(diag.ntk, arch.kernel(a, b[:3]).ntk.diagonal(), rtol=1e-12, atol=0)
