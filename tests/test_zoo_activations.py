"""Closed-form activation kernels of issue 17 against ntkit's own quadrature, and their errors.

Independent route: ``nk.Activation(layer.fn)`` (polar Gauss–Legendre × Gauss–Laguerre
quadrature, derivative by autograd) at a high degree. Errors are measured relative to the
Cauchy–Schwarz scale ``√(k(u, u)·k(v, v))`` of each entry (the natural size of a
covariance; plain relative error is meaningless where a kernel crosses 0).
"""

from __future__ import annotations

import math

import pytest
import torch

import ntkit as nk

LAYERS = {
    "gelu": nk.GELU(),
    "sin": nk.Sin(),
    "sin_abc": nk.Sin(1.3, 0.7, 0.4),
    "cos": nk.Cos(),
    "cos_abc": nk.Cos(0.5, 1.2, -0.3),
    "rbf": nk.Rbf(0.5),
    "exp": nk.Exp(0.7, 0.3),
    "gaussian": nk.Gaussian(),
    "gaussian_ab": nk.Gaussian(1.0, -0.3),
    "erf": nk.Erf(),
    "erf_abc": nk.Erf(1.5, 0.7, 0.2),
    "sign": nk.Sign(),
    "hermite": nk.Hermite(3),
    "hermite0": nk.Hermite(0),
    "monomial": nk.Monomial(4),
    "polynomial": nk.Polynomial([0.3, -1.0, 0.5, 0.2]),
    "rectified0": nk.RectifiedMonomial(0),
    "rectified2": nk.RectifiedMonomial(2),
    "rectified3": nk.RectifiedMonomial(3),
    "elementwise": nk.Elementwise(
        torch.erf,
        lambda c, v1, v2: torch.arcsin(2 * c / torch.sqrt((1 + 2 * v1) * (1 + 2 * v2))) * (2 / math.pi),
    ),
}

#: Pre-activation variance pairs (q11, q22) of the issue's range (1e-3 … 1e2): the fast grid
#: (both ends, the middle, and the widest mismatch), and the full 5 × 5 grid (slow). At
#: ``degree=24`` ntkit's graded quadrature is itself accurate to ~1e-14 there.
VARIANCES = ((1e-3, 1e-3), (1.0, 1.0), (1e2, 1e2), (1e-3, 1e2))
VARIANCES_FULL = tuple((a, b) for a in (1e-3, 0.1, 1.0, 10.0, 1e2) for b in (1e-3, 0.1, 1.0, 10.0, 1e2))
CORRELATIONS = (-1.0, -0.999, -0.5, 0.0, 0.3, 0.9, 0.999999, 1.0)
QUADRATURE_DEGREE = 24
#: ``exp(b·z)`` grows exponentially: E[exp(b·u)exp(b·v)] is carried by the tail
#: ``b·√q`` standard deviations out, where the quadrature's polynomial-growth accuracy
#: statement does not apply (at q = 1e2, b = 0.3 it is 4e-5 off the exact MGF), so Exp is
#: compared up to q = 10 only.
MAX_VARIANCE = {"exp": 10.0}


def _grid(pairs=VARIANCES):
    q11, q22, q12 = [], [], []
    for a, b in pairs:
        for r in CORRELATIONS:
            q11.append(a)
            q22.append(b)
            q12.append(r * math.sqrt(a * b))
    return [torch.tensor(v, dtype=torch.float64) for v in (q11, q22, q12)]


def _check_against_quadrature(name, variances):
    layer = LAYERS[name]
    cap = MAX_VARIANCE.get(name, math.inf)
    variances = tuple((a, b) for a, b in variances if max(a, b) <= cap) + ((cap, cap),) * (cap < math.inf)
    q11, q22, q12 = _grid(variances)
    nngp, dot = layer.expectations(q11, q22, q12, True)
    quad = nk.Activation(layer.fn, degree=QUADRATURE_DEGREE)
    ref_nngp, ref_dot = quad.expectations(q11, q22, q12, True)
    # Cauchy–Schwarz scales from the quadrature's own variances (independent of the layer).
    s11, d11 = quad.expectations(q11, q11, q11, True)
    s22, d22 = quad.expectations(q22, q22, q22, True)
    scale = (s11 * s22).sqrt() + 1e-300
    dscale = (d11 * d22).sqrt() + 1e-300
    assert float(((nngp - ref_nngp).abs() / scale).max()) < 1e-9
    assert float(((dot - ref_dot).abs() / dscale).max()) < 1e-9
    # The variance route (a point with itself) is the same formula at q11 = q22 = q12.
    torch.testing.assert_close(layer.expectations(q11, q11, q11, False)[0], s11, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_closed_form_equals_quadrature(name):
    _check_against_quadrature(name, VARIANCES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_closed_form_equals_quadrature_full_grid(name):
    _check_against_quadrature(name, VARIANCES_FULL)


def test_erf_default_is_unchanged():
    q11 = torch.tensor([0.3, 2.0, 1e-3], dtype=torch.float64)
    q22 = torch.tensor([1.5, 2.0, 4.0], dtype=torch.float64)
    q12 = torch.tensor([0.2, 2.0, -0.05], dtype=torch.float64)
    nngp, dot = nk.Erf().expectations(q11, q22, q12, True)
    arg = 2 * q12 / torch.sqrt((1 + 2 * q11) * (1 + 2 * q22))
    torch.testing.assert_close(nngp, torch.arcsin(arg) * 2 / math.pi, rtol=1e-14, atol=0)
    torch.testing.assert_close(dot, 4 / math.pi / torch.sqrt((1 + 2 * q11) * (1 + 2 * q22) - 4 * q12**2),
                               rtol=1e-12, atol=0)
    assert repr(nk.Erf()) == "Erf()"


def test_hermite_is_orthonormal_at_unit_variance():
    one = torch.ones(5, dtype=torch.float64)
    rho = torch.linspace(-1, 1, 5, dtype=torch.float64)
    for n in range(6):
        nngp, dot = nk.Hermite(n).expectations(one, one, rho, True)
        torch.testing.assert_close(nngp, rho**n, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(dot, n * rho ** max(n - 1, 0), rtol=1e-12, atol=1e-13)


def test_exp_normalized_kernel_and_derivative():
    q11 = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    q22 = torch.tensor([1.5, 2.0, 0.1], dtype=torch.float64)
    q12 = torch.tensor([0.2, 2.0, -0.3], dtype=torch.float64)
    layer = nk.ExpNormalized(gamma=0.7, shift=-1.0)
    nngp, dot = layer.expectations(q11, q22, q12, True)
    rho = q12 / (q11 * q22).sqrt()
    torch.testing.assert_close(nngp, (q11 * q22).sqrt() * torch.exp(0.7 * (rho - 1)), rtol=1e-14, atol=0)
    c = q12.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(layer.expectations(q11, q22, c, False)[0].sum(), c)
    torch.testing.assert_close(dot, grad, rtol=1e-12, atol=0)  # Price: ∂nngp/∂q12
    with pytest.raises(nk.NtkitError, match="kernel only"):
        nk.serial(nk.Dense(3), layer).build((2,))


def test_elementwise_autograd_derivative_equals_given_derivative():
    def nngp_fn(c, v1, v2):
        return torch.arcsin(2 * c / torch.sqrt((1 + 2 * v1) * (1 + 2 * v2))) * (2 / math.pi)

    def d_nngp_fn(c, v1, v2):
        return (4 / math.pi) / torch.sqrt((1 + 2 * v1) * (1 + 2 * v2) - 4 * c * c)

    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    auto = nk.serial(nk.Dense(8, 1.2, 0.1), nk.Elementwise(torch.erf, nngp_fn), nk.Dense(1))
    auto = auto.kernel(x[:3], x[3:])
    given = nk.serial(nk.Dense(8, 1.2, 0.1), nk.Elementwise(torch.erf, nngp_fn, d_nngp_fn), nk.Dense(1))
    erf = nk.serial(nk.Dense(8, 1.2, 0.1), nk.Erf(), nk.Dense(1)).kernel(x[:3], x[3:])
    torch.testing.assert_close(auto.ntk, given.kernel(x[:3], x[3:]).ntk, rtol=1e-12, atol=0)
    torch.testing.assert_close(auto.ntk, erf.ntk, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: nk.Hermite(-1), "non-negative integer"),
        (lambda: nk.Monomial(2.5), "non-negative integer"),
        (lambda: nk.RectifiedMonomial(-2), "non-negative integer"),
        (lambda: nk.Rbf(0.0), "gamma must be > 0"),
        (lambda: nk.Rbf(-1.0), "gamma must be > 0"),
        (lambda: nk.ExpNormalized(gamma=0), "gamma must be > 0"),
        (lambda: nk.Sin(a=float("nan")), "finite number"),
        (lambda: nk.Polynomial([]), "non-empty"),
        (lambda: nk.Polynomial(["x"]), "sequence of numbers"),
        (lambda: nk.GELU(approximate="erf"), "approximate"),
        (lambda: nk.Elementwise(torch.sin, "not callable"), "nngp_fn must be callable"),
        (lambda: nk.Elementwise(torch.sin, lambda c: c), "nngp_fn must accept"),
        (lambda: nk.Erf(a="1"), "finite number"),
    ],
)
def test_bad_parameters_raise_clear_errors(make, match):
    with pytest.raises(nk.NtkitError, match=match):
        make()


def test_gaussian_with_positive_b_diverges_clearly():
    x = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(nk.NtkitError, match="diverges"):
        nk.serial(nk.Dense(4, W_std=2.0), nk.Gaussian(1.0, 0.5)).kernel(x)
    ok = nk.serial(nk.Dense(4, W_std=0.5), nk.Gaussian(1.0, 0.5)).kernel(x)
    assert torch.isfinite(ok.ntk).all()
