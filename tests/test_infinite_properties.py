"""Structural properties of every fully-connected layer and a few composed nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from conftest import naive_empirical_ntk, relative_error
from ntkit.infinite.quadrature import autograd_derivative

ACTIVATIONS = {
    "relu": nk.ReLU(),
    "leaky": nk.LeakyReLU(0.1),
    "abrelu": nk.ABReLU(-0.5, 2.0),
    "abs": nk.Abs(),
    "erf": nk.Erf(),
    "identity": nk.Identity(),
    "tanh": nk.Tanh(degree=6),
    "sigmoid": nk.Sigmoid(degree=6),
    "gelu": nk.GELU(),
    "softplus": nk.Softplus(degree=6),
    "custom": nk.Activation(torch.sin, degree=6),
    # Closed forms of issue 17.
    "sin": nk.Sin(1.2, 0.8, 0.3),
    "cos": nk.Cos(),
    "rbf": nk.Rbf(0.7),
    "exp": nk.Exp(0.8, 0.5),
    "gaussian": nk.Gaussian(),
    "exp_normalized": nk.ExpNormalized(),
    "sign": nk.Sign(),
    "hermite": nk.Hermite(3),
    "monomial": nk.Monomial(2),
    "rectified_monomial": nk.RectifiedMonomial(2),
    "polynomial": nk.Polynomial([0.1, 1.0, -0.3, 0.2]),
    "erf_abc": nk.Erf(1.5, 0.6, 0.2),
    "elementwise": nk.Elementwise(
        torch.erf,
        lambda c, v1, v2: torch.arcsin(2 * c / torch.sqrt((1 + 2 * v1) * (1 + 2 * v2))) * (2 / np.pi),
    ),
}


def composed():
    return {
        "mlp3_relu": nk.mlp(3, 16, "relu", W_std=2**0.5, b_std=0.1),
        "mlp4_erf": nk.mlp(4, 16, "erf", W_std=1.3, b_std=0.2),
        "standard": nk.mlp(3, 16, "relu", W_std=1.2, b_std=0.5, parameterization="standard"),
        "residual": nk.serial(
            nk.Dense(16, 1.0, 0.1), nk.FanOut(2),
            nk.parallel(nk.serial(nk.ReLU(), nk.Dense(16, 1.5, 0.1)), nk.Identity()),
            nk.FanInSum(), nk.Erf(), nk.Dense(1),
        ),
    }


def architectures():
    archs = {f"dense_{k}": nk.serial(nk.Dense(8, 1.5, 0.3), a, nk.Dense(1, 1.2, 0.1))
             for k, a in ACTIVATIONS.items()}
    archs.update(composed())
    return archs


ARCHS = architectures()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(9, 5, generator=g, dtype=torch.float64)
    x2 = torch.randn(4, 5, generator=g, dtype=torch.float64)
    return x1, x2


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_symmetry_self_consistency_psd_and_diagonal(name, data):
    x1, x2 = data
    arch = ARCHS[name]
    k = arch.kernel(x1)
    k_xx = arch.kernel(x1, x1.clone())
    k_diag = arch.kernel(x1, diagonal=True)
    for field in ("nngp", "ntk"):
        mat = k.get(field)
        assert mat.shape == (9, 9) and mat.dtype == torch.float64
        torch.testing.assert_close(mat, mat.T, rtol=0, atol=0)
        torch.testing.assert_close(k_xx.get(field), mat, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(k_diag.get(field), mat.diagonal(), rtol=1e-12, atol=1e-14)
        eig = torch.linalg.eigvalsh(mat)
        assert eig.min() >= -1e-10 * eig.max()
    torch.testing.assert_close(k.var1, k.nngp.diagonal(), rtol=1e-12, atol=1e-14)
    # Cross kernel: a block of the kernel on the concatenation.
    k_cross = arch.kernel(x1, x2)
    k_all = arch.kernel(torch.cat([x1, x2]))
    torch.testing.assert_close(k_cross.ntk, k_all.ntk[:9, 9:], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(k_cross.var2, k_all.var1[9:], rtol=1e-12, atol=1e-14)
    diag_pairs = arch.kernel(x1[:4], x2, diagonal=True)
    torch.testing.assert_close(diag_pairs.ntk, k_cross.ntk[:4].diagonal(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_float32_close_to_float64(name, data):
    x1, x2 = data
    arch = ARCHS[name]
    k64 = arch.kernel(x1, x2)
    k32 = arch.kernel(x1.float(), x2.float(), dtype=torch.float32)
    assert k32.ntk.dtype == torch.float32
    for field in ("nngp", "ntk"):
        a, b = k32.get(field).double(), k64.get(field)
        assert relative_error(a, b) < 1e-4


def test_numpy_input_and_get_forms(data):
    x1, x2 = data
    arch = ARCHS["mlp3_relu"]
    k = arch.kernel(x1.numpy(), x2.numpy())
    torch.testing.assert_close(k.ntk, arch.kernel(x1, x2, get="ntk"))
    only_ntk = arch.kernel(x1, get=("ntk",))
    assert only_ntk.nngp is None and only_ntk.ntk.shape == (9, 9)
    with pytest.raises(nk.NtkitError, match="nngp was not computed"):
        only_ntk.get("nngp")


@pytest.mark.parametrize("budget", [2_000, 30_000])
def test_tiles_equal_one_block(budget):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(37, 6, generator=g, dtype=torch.float64)
    y = torch.randn(23, 6, generator=g, dtype=torch.float64)
    arch = ARCHS["residual"]
    for x2 in (None, y):
        whole = arch.kernel(x, x2)
        tiled = arch.kernel(x, x2, memory_budget=budget)
        torch.testing.assert_close(tiled.nngp, whole.nngp, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(tiled.ntk, whole.ntk, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(tiled.var2, whole.var2, rtol=1e-12, atol=1e-14)


def test_quadrature_activation_with_autograd_derivative_matches_analytic_derivative(data):
    x1, _ = data
    by_autograd = nk.serial(nk.Dense(8, 1.5), nk.Activation(torch.tanh, degree=8), nk.Dense(1))
    analytic = nk.serial(nk.Dense(8, 1.5), nk.Tanh(degree=8), nk.Dense(1))
    torch.testing.assert_close(by_autograd.kernel(x1).ntk, analytic.kernel(x1).ntk,
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["tanh", "gelu", "sigmoid", "softplus", "sin", "cos", "rbf", "exp",
                                  "gaussian", "sign", "hermite", "monomial", "rectified_monomial",
                                  "polynomial", "erf_abc", "elementwise"])
def test_quadrature_expectations_match_monte_carlo(name):
    """E[φ(u)φ(v)] and E[φ'(u)φ'(v)] against 2·10⁶ Gaussian samples (error ~1e-3)."""
    layer = ACTIVATIONS[name]
    q = torch.tensor([[1.3, 0.6], [0.6, 0.8]], dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2_000_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(q).T
    u, v = z[:, 0], z[:, 1]
    dphi = autograd_derivative(layer.fn)
    nngp, dot = layer.expectations(q[0, 0], q[1, 1], q[0, 1], True)
    mc_nngp = (layer.fn(u) * layer.fn(v)).mean()
    mc_dot = (dphi(u) * dphi(v)).mean()
    assert abs(nngp - mc_nngp) < 5e-3 * max(1.0, abs(float(mc_nngp)))
    assert abs(dot - mc_dot) < 5e-3 * max(1.0, abs(float(mc_dot)))


def test_standard_parameterization_matches_finite_network():
    """The standard-parameterization NTK grows with the widths; MC over finite nets agrees."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    arch = nk.mlp(3, 256, "relu", W_std=1.4, b_std=0.3, parameterization="standard")
    exact = arch.kernel(x)
    ntks = [naive_empirical_ntk(arch.build((3,), seed=s), x) for s in range(6)]
    assert relative_error(torch.stack(ntks).mean(0), exact.ntk) < 0.08
    ntk_param = nk.mlp(3, 256, "relu", W_std=1.4, b_std=0.3).kernel(x)
    assert exact.ntk.mean() > 50 * ntk_param.ntk.mean()  # ∝ width, not O(1)


def test_ntk_parameterization_build_converges(data):
    """A quick version of the width sweep (the full one is in the empirical-NTK tests)."""
    x1, _ = data
    errors = []
    for width in (32, 1024):
        arch = nk.mlp(3, width, "relu", W_std=2**0.5, b_std=0.1)
        exact = arch.kernel(x1[:4]).ntk
        errors.append(np.mean([relative_error(naive_empirical_ntk(arch.build((5,), seed=s), x1[:4]),
                                              exact) for s in range(6)]))
    assert errors[1] < 0.12 and errors[1] < errors[0] / 2.5, errors


def test_build_is_seeded_and_has_stated_widths():
    arch = nk.mlp(3, 7, "erf", b_std=0.1)
    a, b = arch.build(4, seed=1), arch.build((4,), seed=1)
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x))
    shapes = [tuple(p.shape) for p in a.parameters()]
    assert shapes == [(7, 4), (7,), (7, 7), (7,), (1, 7), (1,)]
    assert not torch.equal(arch.build(4, seed=2)(x), a(x))


def test_zero_norm_inputs_are_finite():
    x = torch.zeros(3, 4, dtype=torch.float64)
    x[1] = 1.0
    for arch in (ARCHS["mlp3_relu"], ARCHS["dense_erf"], ARCHS["dense_tanh"],
                 nk.mlp(3, 8, "relu")):
        k = arch.kernel(x)
        assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
    k = nk.mlp(3, 8, "relu").kernel(x)
    assert k.ntk[0].abs().max() == 0 and k.ntk[1, 1] > 0  # no bias: x = 0 has zero gradient


def test_bad_inputs_raise_ntkit_errors(data):
    x1, x2 = data
    arch = ARCHS["mlp3_relu"]
    bad = x1.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(nk.errors.NonFiniteError, match="NaN"):
        arch.kernel(bad)
    bad[0, 0] = float("inf")
    with pytest.raises(nk.errors.NonFiniteError):
        arch.kernel(x1, bad)
    with pytest.raises(nk.errors.ShapeError, match="rank"):
        arch.kernel(x1[0])
    with pytest.raises(nk.errors.ShapeError, match="same example shape"):
        arch.kernel(x1, x2[:, :3])
    with pytest.raises(nk.errors.ShapeError, match="empty"):
        arch.kernel(x1[:0])
    # Images: Dense acts on the channels at every position (issue 16), the kernel stays spatial.
    assert arch.kernel(torch.randn(3, 2, 4, 4), get="ntk").shape == (3, 3, 4, 4)
    with pytest.raises(nk.errors.ShapeError, match="numeric"):
        arch.kernel(np.array([["a", "b"]]))
    with pytest.raises(nk.errors.ParameterError, match="get must be"):
        arch.kernel(x1, get="ntkk")
    with pytest.raises(nk.errors.ShapeError, match="same number of rows"):
        arch.kernel(x1, x2, diagonal=True)
    with pytest.raises(nk.errors.MemoryBudgetError, match="memory_budget"):
        arch.kernel(x1, memory_budget=10)


def test_bad_layer_arguments_raise_ntkit_errors():
    with pytest.raises(nk.errors.ParameterError, match="W_std"):
        nk.Dense(4, W_std=-1.0)
    with pytest.raises(nk.errors.ParameterError, match="b_std"):
        nk.Dense(4, b_std=-0.1)
    with pytest.raises(nk.errors.ParameterError, match="width"):
        nk.Dense(0)
    with pytest.raises(nk.errors.ParameterError, match="parameterization"):
        nk.Dense(4, parameterization="mup")
    with pytest.raises(nk.errors.ParameterError, match="callable"):
        nk.Activation("tanh")
    with pytest.raises(nk.errors.ParameterError, match="elementwise"):
        nk.Activation(lambda x: x.sum())
    with pytest.raises(nk.errors.ParameterError, match="unknown activation"):
        nk.mlp(2, 4, "swish")
    with pytest.raises(nk.errors.ParameterError, match="ntkit layers"):
        nk.serial(nk.Dense(3), torch.nn.ReLU())
    with pytest.raises(nk.errors.ShapeError, match="FanOut"):
        nk.serial(nk.Dense(3), nk.parallel(nk.ReLU(), nk.ReLU())).kernel(torch.randn(2, 3))
    with pytest.raises(nk.errors.ShapeError, match="do not simply add"):
        nk.serial(nk.Dense(3), nk.FanOut(2), nk.parallel(nk.ReLU(), nk.Identity()),
                  nk.FanInSum()).kernel(torch.randn(2, 3))
    with pytest.raises(nk.errors.ShapeError, match="branches"):
        nk.serial(nk.Dense(3), nk.FanOut(2)).kernel(torch.randn(2, 3))
