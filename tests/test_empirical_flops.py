"""The probe's flop count read off known layers equals torch's FlopCounterMode, and only
models with unknown modules use FlopCounterMode; the structured route of a float64 model of
known layers never imports torch._dynamo (which any dispatch mode or torch.func transform
imports, seconds of start-up for ``ntkit lab``)."""

from __future__ import annotations

import pytest
import torch
import torch.utils.flop_counter as flop_counter
from torch import nn

import ntkit as nk
from ntkit.empirical._flops import counts_from_layers
from ntkit.empirical._params import prepare


def _reference_flops(model: nn.Module, x: torch.Tensor) -> float:
    with flop_counter.FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / len(x)


class _Custom(nn.Module):
    """A forward with a matmul outside any layer: its flops are not known from the layers."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 5)
        self.w = nn.Parameter(torch.randn(5, 3))

    def forward(self, x):
        return torch.relu(self.lin(x)) @ self.w


def _models():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(3, 4, 9, 8, generator=g)
    flat = torch.randn(3, 6, generator=g)
    return [
        ("torch mlp", nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 2)), flat),
        ("torch cnn", nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.ReLU(),
                                    nn.Conv2d(6, 5, (2, 3)), nn.GELU(), nn.Flatten(), nn.Linear(40, 3)),
         img),
        ("ntkit mlp", nk.serial(nk.Dense(7, b_std=0.1), nk.ReLU(), nk.Dense(7), nk.Erf(), nk.Dense(2))
         .build((6,), seed=1), flat),
        ("ntkit standard", nk.serial(nk.Dense(7, parameterization="standard", b_std=0.1), nk.ReLU(),
                                     nk.Dense(1, parameterization="standard")).build((6,), seed=1), flat),
        ("ntkit cnn", nk.serial(nk.Conv(5, (3, 3), stride=2, padding="same"), nk.ReLU(), nk.Dense(3),
                                nk.Conv(4, (2, 2), padding="valid"), nk.Flatten(), nk.Dense(2))
         .build((4, 9, 8), seed=2), img),
    ]


@pytest.mark.parametrize("name, model, x", _models(), ids=[m[0] for m in _models()])
def test_flops_from_layers_equal_flop_counter_mode(name, model, x, monkeypatch):
    model = model.to(x.dtype)
    assert counts_from_layers(model)
    expected = _reference_flops(model, x)
    assert expected > 0

    def refuse(*args, **kwargs):
        raise AssertionError("FlopCounterMode used for a model of known layers")

    monkeypatch.setattr(flop_counter, "FlopCounterMode", refuse)
    problem = prepare(model, None, x[:2])
    assert problem.forward_flops == pytest.approx(expected, rel=1e-12)


def test_unknown_module_is_counted_by_flop_counter_mode():
    model, x = _Custom(), torch.randn(2, 6)
    assert not counts_from_layers(model)
    # a known container holding it is not known either; nor is a subclass of a known layer
    assert not counts_from_layers(nn.Sequential(nn.ReLU(), model))
    assert not counts_from_layers(type("MyLinear", (nn.Linear,), {})(3, 2))
    problem = prepare(model, None, x)
    assert problem.forward_flops == pytest.approx(_reference_flops(model, x), rel=1e-12)
    assert problem.forward_flops == 2 * 6 * 5 + 2 * 5 * 3


def test_fast_matmul_mode_only_where_a_route_exists():
    from ntkit._fast_matmul import fast_matmuls, fast_matmuls_for, route

    assert not isinstance(fast_matmuls_for([torch.ones(2, dtype=torch.float64)]), fast_matmuls)
    f32 = fast_matmuls_for([torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float32)])
    assert isinstance(f32, fast_matmuls) == (route(torch.float32) is not None)


@pytest.mark.slow
def test_structured_ntk_of_known_layers_does_not_import_dynamo():
    """A fresh process: the float64 MLP's NTK by the structured route (probe, its check, the
    features) runs without torch._dynamo, which any dispatch mode or torch.func transform
    imports (seconds; the ``ntkit lab`` width experiment takes this route), and without sympy
    (which ``torch.autograd.grad(..., grad_outputs=...)`` imports)."""
    import subprocess
    import sys

    code = (
        "import sys, torch, ntkit as nk\n"
        "net = nk.serial(nk.Dense(32), nk.ReLU(), nk.Dense(1)).build((5,), seed=0)\n"
        "x = torch.randn(6, 5, dtype=torch.float64)\n"
        "k = nk.empirical_ntk(net, x, output='trace', method='structured')\n"
        "assert k.shape == (6, 6)\n"
        "print('torch._dynamo' in sys.modules, 'sympy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
