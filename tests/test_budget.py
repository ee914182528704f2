"""One memory budget: the same spellings, the same meaning, the same errors everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.budget import (
    ACCEPTED_FORMS,
    DEFAULT_MEMORY_BUDGET,
    Budget,
    check_output,
    format_bytes,
    parse_budget,
)
from ntkit.errors import MemoryBudgetError, ParameterError
from ntkit.infinite import engine
from ntkit.sklearn import NTKClassifier, NTKRegressor

GOOD = [2**28, 2.5e8, "256MiB", "1GiB"]
BAD = ["lots", -1, 0]

_X = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
_Y = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _mlp_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _call_layer_kernel(b):
    return nk.mlp(2, 1, "relu").kernel(_X, get="ntk", memory_budget=b)


def _call_operator(b):
    return nk.linalg.KernelOperator(nk.mlp(2, 1, "relu"), _X, memory_budget=b) @ _Y


def _call_linalg_predict(b):
    return nk.linalg.predict(nk.mlp(2, 1, "relu"), _X[:2], _X, _Y, memory_budget=b)


def _call_nystrom_predict(b):
    op = nk.linalg.KernelOperator(nk.mlp(2, 1, "relu"), _X)
    sol = nk.linalg.nystrom(op, _Y, centers=3, ridge=1e-3, seed=0)
    return sol.predict(_X[:2], memory_budget=b)


def _call_regressor(b):
    return NTKRegressor(depth=2, memory_budget=b).fit(_X.numpy(), _Y.numpy()).predict(_X.numpy())


def _call_regressor_cg(b):
    return NTKRegressor(depth=2, solver="cg", memory_budget=b).fit(_X.numpy(), _Y.numpy())


def _call_classifier(b):
    y = np.array([0, 1, 0, 1, 0, 1])
    return NTKClassifier(depth=2, memory_budget=b).fit(_X.numpy(), y).predict(_X.numpy())


def _call_empirical_ntk(b):
    return nk.empirical_ntk(_mlp_model(), _X, memory_budget=b)


def _call_plan_empirical_ntk(b):
    return nk.empirical.plan_empirical_ntk(_mlp_model(), _X, memory_budget=b)


def _call_empirical_nngp(b):
    return nk.empirical_nngp(_mlp_model(), _X, memory_budget=b)


def _call_monte_carlo(b):
    return nk.monte_carlo_kernel(nk.mlp(2, 4, "relu"), _X, n_samples=1, seed=0, memory_budget=b)


def _call_empirical_source(b):
    src = nk.EmpiricalNTKSource(_mlp_model(), _X, method="jacobian", memory_budget=b)
    return nk.linalg.KernelOperator(src, memory_budget=b) @ _Y


ENTRY_POINTS = [
    _call_layer_kernel, _call_operator, _call_empirical_ntk, _call_plan_empirical_ntk,
    _call_empirical_nngp, _call_monte_carlo, _call_empirical_source,
    _call_linalg_predict, _call_nystrom_predict, _call_regressor, _call_regressor_cg,
    _call_classifier,
]


@pytest.mark.parametrize("spelling", GOOD, ids=str)
@pytest.mark.parametrize("call", ENTRY_POINTS, ids=lambda f: f.__name__[6:])
def test_every_entry_point_accepts_every_spelling(call, spelling):
    out = call(spelling)
    assert out is not None


@pytest.mark.parametrize("spelling", BAD, ids=str)
@pytest.mark.parametrize("call", ENTRY_POINTS, ids=lambda f: f.__name__[6:])
def test_every_entry_point_rejects_the_same_way(call, spelling):
    with pytest.raises(ParameterError) as info:
        call(spelling)
    message = str(info.value)
    assert "memory_budget" in message
    assert ACCEPTED_FORMS in message  # names the accepted forms, the same words everywhere
    assert repr(spelling) in message


def test_same_meaning_same_result():
    """Every spelling of one size gives the same bytes, and kernels do not depend on it."""
    assert parse_budget(2**28) == parse_budget("256MiB") == parse_budget(268435456.0) == 2**28
    assert parse_budget("1GiB") == 2**30 == parse_budget("1G") == int(Budget.parse("1 GiB"))
    assert parse_budget("2GB") == 2 * 10**9
    assert parse_budget(2.5e8) == 250_000_000
    assert parse_budget(None) == DEFAULT_MEMORY_BUDGET == 2**30
    assert parse_budget(Budget(12345)) == 12345
    assert nk.linalg.parse_bytes("4GiB") == 4 * 2**30
    assert nk.linalg.DEFAULT_MEMORY_BUDGET == DEFAULT_MEMORY_BUDGET
    arch = nk.mlp(3, 1, "relu")
    a = arch.kernel(_X, get="ntk", memory_budget="1GiB")
    b = arch.kernel(_X, get="ntk", memory_budget=2**30)
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [True, float("nan"), float("inf"), "1 parsec", [1], 0.5, "-3GiB"])
def test_more_bad_spellings(bad):
    with pytest.raises(ParameterError, match="memory_budget must be"):
        parse_budget(bad)


def test_format_bytes():
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(5 * 2**40) == "5.0 TiB"
    assert str(Budget(2**20)) == "1.0 MiB"
    assert format_bytes(100_000) == "97.7 KiB"
    assert format_bytes(100_000, "MiB") == "0.1 MiB"
    assert format_bytes(64 * 2**20) == "64.0 MiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(40 * 2**10) == "40.0 KiB"


def test_too_small_budget_names_the_size():
    with pytest.raises(MemoryBudgetError, match="raise memory_budget"):
        nk.mlp(2, 1, "relu").kernel(_X, get="ntk", memory_budget=10)


# ------------------------------------------------------------------ outputs (issue 12, 3)


def _no_work(*args, **kwargs):
    raise AssertionError("a kernel tile was computed before the output check")


def test_output_check_message(monkeypatch):
    monkeypatch.setenv("NTKIT_MAX_OUTPUT", "1MiB")
    check_output(2**20, "ok", "nothing")
    with pytest.raises(MemoryBudgetError, match=r"2097152 bytes \(2.0 MiB\).*NTKIT_MAX_OUTPUT.*Use this"):
        check_output(2**21, "the thing", "Use this")


def test_huge_kernel_refused_before_any_work(monkeypatch):
    """60000×784: the 2×28.8 GB outputs are refused at once (here the limit is set low so
    that the test does not depend on this machine's memory)."""
    monkeypatch.setenv("NTKIT_MAX_OUTPUT", "1GiB")
    x = torch.rand(60000, 784, dtype=torch.float32)
    arch = nk.mlp(3, 512, "relu")
    monkeypatch.setattr(engine, "kernel_block", _no_work)  # no tile may be computed
    with pytest.raises(MemoryBudgetError) as info:
        arch.kernel(x)
    msg = str(info.value)
    assert "57600000000 bytes" in msg  # NNGP and NTK, float64
    assert "KernelOperator" in msg and "diagonal=True" in msg and "iterative" in msg
    # get="ntk" counts (and keeps) only the NTK
    with pytest.raises(MemoryBudgetError, match="28800000000 bytes"):
        arch.kernel(x, get="ntk")
    # the diagonal is small and fine
    monkeypatch.undo()
    assert arch.kernel(x[:100], get="ntk", diagonal=True).shape == (100,)


def test_output_larger_than_any_machine_refused():
    """No environment variable: 10⁷ examples need 1.6 PB, more than any machine has."""
    x = torch.zeros(10**7, 1, dtype=torch.float64)
    with pytest.raises(MemoryBudgetError, match="available memory"):
        nk.mlp(2, 1, "relu").kernel(x, get="nngp")


def test_spatial_output_counts_positions(monkeypatch):
    """A conv net without a readout returns positions per pair; the check counts them."""
    arch = nk.serial(nk.Conv(1, (3, 3), padding="same"), nk.ReLU())
    x = torch.randn(40, 2, 6, 6, dtype=torch.float64)
    per_pair = 36 * 8  # 36 positions, float64, one kernel
    monkeypatch.setenv("NTKIT_MAX_OUTPUT", str(40 * 40 * per_pair - 1))
    with pytest.raises(MemoryBudgetError, match="36 entries per pair"):
        arch.kernel(x, get="ntk")
    monkeypatch.setenv("NTKIT_MAX_OUTPUT", str(40 * 40 * per_pair))
    assert arch.kernel(x, get="ntk").shape == (40, 40, 6, 6)


def test_ntk_only_keeps_no_nngp():
    k = nk.mlp(3, 1, "relu").kernel(_X, get=("ntk",))
    assert k.nngp is None and k.ntk.shape == (6, 6)
    both = nk.mlp(3, 1, "relu").kernel(_X)
    torch.testing.assert_close(k.ntk, both.ntk, rtol=0, atol=0)
    conv = nk.serial(nk.Conv(2, (3, 3), padding="same"), nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(1))
    xc = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    kc = conv.kernel(xc, get=("ntk",))
    assert kc.nngp is None
    torch.testing.assert_close(kc.ntk, conv.kernel(xc).ntk, rtol=0, atol=0)


def test_empirical_full_output_refused_before_any_block(monkeypatch):
    """An (n, n, o, o) empirical NTK larger than the machine is refused up front (issue 12)."""
    from ntkit.empirical import core

    monkeypatch.setenv("NTKIT_MAX_OUTPUT", "1GiB")

    def no_block(*args, **kwargs):
        raise AssertionError("a block was computed before the output check")

    monkeypatch.setattr(core, "tile", no_block)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 10)).double()
    x = torch.randn(20_000, 3, dtype=torch.float64)
    with pytest.raises(MemoryBudgetError, match="320000000000 bytes") as err:
        nk.empirical_ntk(model, x, output="full")
    assert "output='trace'" in str(err.value)
    # the trace output of the same problem (3.2 GB) is refused too under a 1 GiB cap
    with pytest.raises(MemoryBudgetError, match="3200000000 bytes"):
        nk.empirical_ntk(model, x, output="trace")
