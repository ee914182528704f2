"""Reflections ``f(−x) = α f(x) + β x + γ`` in the graded quadrature: same numbers, half the work."""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from ntkit.errors import ParameterError
from ntkit.infinite.quadrature import Reflection, gaussian_expectation

CASES = {
    "tanh": (torch.tanh, Reflection(-1.0)),
    "sigmoid": (torch.sigmoid, Reflection(-1.0, 0.0, 1.0)),
    "softplus": (torch.nn.functional.softplus, Reflection(1.0, -1.0)),
    "silu": (torch.nn.functional.silu, Reflection(1.0, -1.0)),
}


def _covariances():
    g = torch.Generator().manual_seed(3)
    q11 = 10.0 ** (4 * torch.rand(40, generator=g, dtype=torch.float64) - 2)
    q22 = 10.0 ** (4 * torch.rand(40, generator=g, dtype=torch.float64) - 2)
    rho = 2 * torch.rand(40, generator=g, dtype=torch.float64) - 1
    rho[:3] = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    return q11, q22, rho * (q11 * q22).sqrt()


@pytest.mark.parametrize("name", sorted(CASES))
def test_reflected_rule_equals_plain_rule(name):
    fn, reflection = CASES[name]
    q11, q22, q12 = _covariances()
    with_reflection = nk.Activation(fn, name=name, reflection=reflection).expectations(q11, q22, q12, True)
    plain = nk.Activation(fn, name=name).expectations(q11, q22, q12, True)
    # Round-off only: f(x) − x cancels for softplus/SiLU at large x (|x| ~ 100 here), so
    # those differ from the plain rule by ~|x|·eps per node, far inside the 1e-8 quadrature tol.
    tol = 1e-13 if reflection.beta == 0 else 1e-11
    for got, ref in zip(with_reflection, plain):
        scale = ref.abs().max()
        assert float((got - ref).abs().max() / scale) < tol


@pytest.mark.parametrize("name", sorted(CASES))
def test_derivative_reflection_follows_by_differentiation(name):
    fn, reflection = CASES[name]
    x = torch.linspace(-6, 6, 121, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(fn(x).sum(), x)
    (d_minus,) = torch.autograd.grad(fn(-x).sum(), x)  # = −f'(−x)
    torch.testing.assert_close(-d_minus, reflection.derivative().apply(x, d), rtol=1e-12, atol=1e-14)


def test_mixed_parities_cancel():
    # E[tanh(u)·sech²(v)] = 0: odd times even under a centred Gaussian.
    q = torch.tensor([0.5, 3.0], dtype=torch.float64)
    q12 = torch.tensor([0.2, -1.0], dtype=torch.float64)
    sech2 = lambda z: 1 / torch.cosh(z) ** 2  # noqa: E731
    out = gaussian_expectation(torch.tanh, sech2, q, q, q12,
                               reflect_f=Reflection(-1.0), reflect_g=Reflection(1.0))
    assert float(out.abs().max()) == 0.0
    plain = gaussian_expectation(torch.tanh, sech2, q, q, q12)
    assert float(plain.abs().max()) < 1e-15


@pytest.mark.parametrize("bad", [(1.0, 0.0, 0.0), (-1.0, 0.0, 0.5), (2.0, 0.0, 0.0), ("a", 0, 0)])
def test_wrong_reflection_is_refused(bad):
    with pytest.raises(ParameterError, match="reflection"):
        nk.Activation(torch.tanh, reflection=bad)


def test_builtin_activations_carry_their_reflection():
    assert nk.Tanh().reflection == Reflection(-1.0)
    assert nk.Sigmoid().reflection == Reflection(-1.0, 0.0, 1.0)
    assert nk.Softplus().reflection == Reflection(1.0, -1.0)
