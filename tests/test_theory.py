"""docs/DESIGN.md identities 1–3: the lecture's two-layer kernels, each by independent routes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit as nk
from conftest import loglog_slope, naive_empirical_ntk, relative_error
from ntkit.theory import TwoLayerNet, one_d_finite_kernel, one_d_limit_kernel, two_layer_ntk


@pytest.fixture
def x():
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_relu_closed_form_equals_quadrature(x):
    closed = two_layer_ntk(x, activation="relu", method="closed_form")
    quad = two_layer_ntk(x, activation="relu", method="quadrature", degree=12)
    torch.testing.assert_close(quad, closed, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["erf", nk.ABReLU(-0.4, 1.3), nk.LeakyReLU(0.2), "abs"])
def test_other_closed_forms_equal_quadrature(x, activation):
    # Pre-activation variances of order 1 (erf saturates to a step for large ones, where
    # the quadrature needs a higher degree).
    x = 1.5 * x / x.norm(dim=1, keepdim=True)
    closed = two_layer_ntk(x, activation=activation, method="closed_form")
    quad = two_layer_ntk(x, activation=activation, method="quadrature", degree=16)
    torch.testing.assert_close(quad, closed, rtol=1e-8, atol=1e-12)


def test_callable_activation_uses_autograd_derivative(x):
    """A plain callable (derivative by autograd) agrees with the named closed form."""
    by_callable = two_layer_ntk(x, activation=torch.relu, method="quadrature", degree=12)
    torch.testing.assert_close(by_callable, two_layer_ntk(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer", [nk.ReLU(), nk.LeakyReLU(0.2), nk.Abs(), nk.ABReLU(-0.5, 2.0)],
                         ids=repr)
def test_relu_family_derivative_in_closed_form_equals_autograd(layer):
    from ntkit.infinite.quadrature import autograd_derivative

    z = torch.tensor([-2.0, -1e-300, 0.0, 1e-300, 0.5, 3.0], dtype=torch.float64)
    ref = autograd_derivative(lambda t: layer.a * torch.clamp(t, max=0) + layer.b * torch.clamp(t, min=0))
    assert torch.equal(layer._derivative(z), ref(z))
    assert torch.equal(layer.fn(z), layer.a * torch.clamp(z, max=0) + layer.b * torch.clamp(z, min=0))
    assert torch.equal(autograd_derivative(layer.fn)(z), ref(z))


def test_monte_carlo_over_B_converges_like_inverse_sqrt(x):
    exact = two_layer_ntk(x)
    sizes = [1_000, 4_000, 16_000, 64_000]
    errors = []
    for s in sizes:
        errs = [relative_error(two_layer_ntk(x, method="monte_carlo", n_samples=s, seed=k), exact)
                for k in range(6)]
        errors.append(np.mean(errs))
    slope = loglog_slope(sizes, errors)
    assert -0.7 < slope < -0.3, (slope, errors)
    assert errors[-1] < 0.02


def test_empirical_ntk_of_finite_net_converges_like_inverse_sqrt_width():
    """Identity 1, last route: autograd NTK of h(x) = (1/√m) Σ a_i relu(b_iᵀx) → closed form."""
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = two_layer_ntk(x)
    widths = [64, 256, 1024, 4096]
    errors = []
    for m in widths:
        errs = [relative_error(naive_empirical_ntk(TwoLayerNet(3, m, seed=s), x), exact)
                for s in range(8)]
        errors.append(np.mean(errs))
    slope = loglog_slope(widths, errors)
    assert -0.75 < slope < -0.35, (slope, errors)
    assert errors[-1] < 0.05


def test_finite_formula_equals_autograd_ntk(x):
    net = TwoLayerNet(4, 50, activation="erf", seed=3)
    formula = nk.theory.two_layer_finite_ntk(x, a=net.a.detach(), B=net.B.detach(), activation="erf")
    torch.testing.assert_close(naive_empirical_ntk(net, x), formula, rtol=1e-12, atol=1e-13)


def test_slides_kappa_is_twice_the_standard_form():
    """Identity 2: κ(ξ) = (2ξ/π)(π − arccos ξ) + √(1 − ξ²)/π on unit vectors = 2 × N(0,1) form."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    xi = (x @ x.T).clamp(-1, 1)
    xi.fill_diagonal_(1.0)  # unit vectors; arccos would turn the rounding of 1 into √ε
    kappa = (2 * xi / math.pi) * (math.pi - torch.arccos(xi)) + torch.sqrt(1 - xi**2) / math.pi
    torch.testing.assert_close(two_layer_ntk(x, normalization="slides"), kappa, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(2 * two_layer_ntk(x), kappa, rtol=1e-12, atol=1e-12)
    assert nk.theory.slides_scale("relu") == pytest.approx(2.0, rel=1e-14)


def test_compositional_engine_gives_lecture_kernel_over_d(x):
    """Identity 2: serial(Dense, ReLU, Dense(1)) without biases divides the input kernel by d."""
    arch = nk.serial(nk.Dense(100, W_std=1.0, b_std=None), nk.ReLU(), nk.Dense(1, W_std=1.0))
    torch.testing.assert_close(arch.kernel(x, get="ntk"), two_layer_ntk(x) / x.shape[1],
                               rtol=1e-12, atol=1e-14)


def test_one_d_finite_kernel_equals_autograd_ntk_and_tends_to_limit():
    """Identity 3: the slides' 1-D kernel at width m is the autograd NTK, and → its limit."""
    xs = torch.tensor([-1.5, -0.3, 0.4, 1.0, 2.2], dtype=torch.float64)
    net = TwoLayerNet(1, 40, seed=5)
    finite = one_d_finite_kernel(xs, None, net.a.detach(), net.B.detach()[:, 0])
    torch.testing.assert_close(naive_empirical_ntk(net, xs[:, None]), finite, rtol=1e-12, atol=1e-13)

    limit = one_d_limit_kernel(xs)
    outer = xs[:, None] * xs[None, :]
    # In 1-D every pair has |ρ| = 1, where the arc-cosine kernel is √-sensitive to rounding.
    torch.testing.assert_close(limit, torch.where(outer > 0, outer, 0.0), rtol=1e-7, atol=1e-8)
    errors = []
    for m in (100, 10_000, 1_000_000):
        g = torch.Generator().manual_seed(m)
        a = torch.randn(m, generator=g, dtype=torch.float64)
        b = torch.randn(m, generator=g, dtype=torch.float64)
        errors.append(relative_error(one_d_finite_kernel(xs, None, a, b), limit))
    assert errors[2] < errors[0] / 10 and errors[2] < 5e-3, errors


def test_zero_input_gives_finite_limit():
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    k = two_layer_ntk(x)
    assert torch.isfinite(k).all()
    assert k[0].abs().max() == 0  # h(0) has zero gradient w.r.t. every weight: σ(0) = 0, x = 0


def test_bad_arguments_raise_clear_errors(x):
    with pytest.raises(nk.NtkitError, match="normalization"):
        two_layer_ntk(x, normalization="he")
    with pytest.raises(nk.NtkitError, match="method"):
        two_layer_ntk(x, method="magic")
    with pytest.raises(nk.NtkitError, match="quadrature"):
        two_layer_ntk(x, activation=torch.tanh, method="closed_form")
    with pytest.raises(nk.NtkitError, match="activation"):
        two_layer_ntk(x, activation=3)
    with pytest.raises(nk.NtkitError, match="features"):
        two_layer_ntk(x, x[:, :2])
