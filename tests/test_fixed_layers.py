"""fix_layers (the NTK of the top layers only) and the all-depths recursion, against independent routes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.empirical import empirical_ntk
from ntkit.errors import ParameterError
from ntkit.infinite.depths import mlp_kernels
from ntkit.infinite.fixed import FixedLayers, fix_layers, trained_layers

F64 = torch.float64



def _x(n=6, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_fix_zero_is_the_ntk_and_fix_top_is_the_nngp():
    x = _x()
    arch = nk.mlp(4, 1, "erf", W_std=1.3, b_std=0.2)
    assert fix_layers(arch, 0) is arch
    k = arch.kernel(x)
    top = fix_layers(arch, 3).kernel(x)
    torch.testing.assert_close(top.ntk, k.nngp, rtol=1e-14, atol=0)
    torch.testing.assert_close(top.nngp, k.nngp, rtol=0, atol=0)
    # strictly between: each fixed layer removes a positive (PSD, nonzero) gradient term
    values = [fix_layers(arch, f).kernel(x, get="ntk") for f in range(4)]
    for a, b in itertools.pairwise(values):
        assert float(torch.diagonal(a - b).min()) > 1e-3


def test_two_layer_relu_readout_only_is_the_arc_cosine_closed_form():
    # Independent route: the depth-2 net with the first layer fixed is trained in its readout
    # only, so its NTK is W²·E[relu(u) relu(v)] + b² (Cho & Saul 2009) written out by hand.
    x = _x()
    W, b = 1.7, 0.3
    got = fix_layers(nk.mlp(2, 1, "relu", W_std=W, b_std=b), 1).kernel(x, get="ntk")
    q = W**2 * (x @ x.T) / x.shape[1] + b**2
    d = torch.sqrt(torch.diagonal(q))
    rho = (q / torch.outer(d, d)).clamp(-1, 1)
    theta = torch.arccos(rho)
    relu = torch.outer(d, d) * (torch.sin(theta) + (math.pi - theta) * rho) / (2 * math.pi)
    torch.testing.assert_close(got, W**2 * relu + b**2, rtol=1e-10, atol=1e-12)


def test_counts_layers_with_parameters_along_the_chain():
    res = nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.serial(nk.ReLU(), nk.Dense(8)), nk.Identity()),
                    nk.FanInSum(), nk.ReLU(), nk.Dense(1))
    assert trained_layers(res) == 3  # Dense, the parallel block, the readout
    fixed = fix_layers(res, 2)
    assert isinstance(fixed, FixedLayers) and fixed.trained_prefixes() == ["5"]
    net = fixed.build((4,), seed=0)
    assert [n for n, _ in net.named_parameters() if n.startswith("5.")] == ["5.weight"]
    torch.testing.assert_close(fixed.kernel(_x(d=4), get="ntk"), res.kernel(_x(d=4), get="nngp"))


@pytest.mark.parametrize("layer", [
    nk.Dense(3), nk.Conv(3, 3), nk.ConvLocal(3, 3), nk.ConvTranspose(3, 3), nk.ReLU(), nk.Erf(),
    nk.AvgPool(2), nk.GlobalAvgPool(), nk.Flatten(), nk.LayerNorm(axis=1), nk.Identity(),
    nk.serial(nk.ReLU(), nk.Conv(2, 1)), nk.serial(nk.ReLU(), nk.Tanh()),
])
def test_has_parameters_agrees_with_the_built_module(layer):
    module = layer.build((2, 4, 4), seed=0)
    assert layer.has_parameters == any(p.numel() for p in module.parameters())


def test_bad_fix_layers_are_refused():
    arch = nk.mlp(3, 1)
    for bad in (3, -1, 1.5, True):
        with pytest.raises(ParameterError, match="fix_layers"):
            fix_layers(arch, bad)
    with pytest.raises(ParameterError, match="architecture"):
        fix_layers("mlp", 1)


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
def test_all_depths_recursion_equals_each_fixed_mlp(activation):
    x, x2 = _x(7, 3), _x(4, 3, seed=1)
    seen = []
    for depth, fix, K in mlp_kernels(x, x2, depths=[4, 1, 2], fix_layers=[2, 0, 1], activation=activation,
                                     W_std=1.3, b_std=0.2):
        seen.append((depth, fix))
        ref = fix_layers(nk.mlp(depth, 1, activation, W_std=1.3, b_std=0.2), fix).kernel(x, x2, get="ntk")
        torch.testing.assert_close(K, ref, rtol=1e-12, atol=1e-14)
    assert seen == [(1, 0), (2, 0), (2, 1), (4, 0), (4, 1), (4, 2)]
    for depth, fix, K in mlp_kernels(x, depths=[1, 3], fix_layers=[0, 1], activation=activation, get="nngp"):
        assert fix == 0
        torch.testing.assert_close(K, nk.mlp(depth, 1, activation).kernel(x, get="nngp"), rtol=1e-12, atol=0)


def _mc_fixed_ntk(fixed, x, seeds):
    """Average over initializations of the empirical NTK of the trained (top) layers only."""
    total = 0
    for s in range(seeds):
        net = fixed.build(tuple(x.shape[1:]), seed=1000 + s)
        total = total + empirical_ntk(net, x, params=fixed.trained_prefixes())
    return total / seeds


@pytest.mark.slow
@pytest.mark.parametrize("n_fixed", [1, 2])
def test_fixed_kernel_is_the_monte_carlo_limit_of_finite_nets_mlp(n_fixed):
    x = _x(5, 4)
    arch = nk.mlp(4, 1024, "relu", W_std=2**0.5, b_std=0.1)
    fixed = fix_layers(arch, n_fixed)
    exact = fixed.kernel(x, get="ntk")
    mc = _mc_fixed_ntk(fixed, x, 24)
    assert _rel(mc, exact) < 0.06  # measured 0.023 (L'=1), 0.032 (L'=2)
    # the test can fail: the full NTK and one more fixed layer are far from the estimate
    assert _rel(mc, arch.kernel(x, get="ntk")) > 0.15
    assert _rel(mc, fix_layers(arch, n_fixed + 1).kernel(x, get="ntk")) > 0.15


@pytest.mark.slow
def test_fixed_kernel_is_the_monte_carlo_limit_of_finite_nets_cnn():
    x = torch.randn(4, 2, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    arch = nk.serial(nk.Conv(256, 3, W_std=2**0.5, b_std=0.1), nk.ReLU(),
                     nk.Conv(256, 3, W_std=2**0.5, b_std=0.1), nk.ReLU(),
                     nk.GlobalAvgPool(), nk.Dense(1, W_std=2**0.5, b_std=0.1))
    fixed = fix_layers(arch, 1)
    exact = fixed.kernel(x, get="ntk")
    mc = _mc_fixed_ntk(fixed, x, 24)
    assert _rel(mc, exact) < 0.07  # measured 0.032
    assert _rel(mc, arch.kernel(x, get="ntk")) > 0.12  # measured 0.18
    assert _rel(mc, fix_layers(arch, 2).kernel(x, get="ntk")) > 0.12


def test_fixed_kernel_monte_carlo_quick():
    # depth 2 (Dense-erf-Dense) with the first layer fixed: the empirical readout NTK is an
    # average of φ(u)φ(v) over Gaussian units, unbiased at any width (pure sampling noise).
    x = _x(4, 3)
    fixed = fix_layers(nk.mlp(2, 256, "erf", W_std=1.5, b_std=0.2), 1)
    mc = _mc_fixed_ntk(fixed, x, 8)
    assert _rel(mc, fixed.kernel(x, get="ntk")) < 0.05
    assert _rel(mc, nk.mlp(2, 1, "erf", W_std=1.5, b_std=0.2).kernel(x, get="ntk")) > 0.2


def test_recursion_memory_error_names_the_alternative(monkeypatch):
    monkeypatch.setenv("NTKIT_MAX_OUTPUT", "1KiB")
    with pytest.raises(nk.errors.MemoryBudgetError, match="fix_layers"):
        next(mlp_kernels(np.ones((40, 2)), depths=[2], fix_layers=[0, 1]))


def test_recursion_is_symmetric_on_near_duplicate_rows():
    # Arc-cosine kernels turn a rounding-level asymmetry of x xᵀ near correlation 1 into ~√ε;
    # the solvers refuse kernels asymmetric beyond rounding (found on unit-norm rows of data).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 39))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = np.vstack([x, x[:20] + 1e-9 * rng.normal(size=(20, 39))])
    for _, _, K in mlp_kernels(x, depths=[2, 5], fix_layers=[0, 3], activation="relu", W_std=2**0.5):
        assert torch.equal(K, K.T)


@pytest.mark.parametrize("activation", ["relu", "erf", "identity"])
def test_recursion_yields_own_kernels_or_views_of_its_stack(activation):
    # The NTK stack is updated in place: copy=True hands out copies (kept intact), copy=False
    # views valid until the iteration resumes. "identity" takes the generic layer path.
    x = _x(6, 3)
    kw = dict(depths=[1, 2, 4], fix_layers=[0, 1], activation=activation, W_std=1.2, b_std=0.3)
    held = list(mlp_kernels(x, **kw))
    for depth, fix, K in held:
        ref = fix_layers(nk.mlp(depth, 1, activation, W_std=1.2, b_std=0.3), fix).kernel(x, get="ntk")
        torch.testing.assert_close(K, ref, rtol=1e-12, atol=1e-14)
    views = []
    for (*_, K), (*_, own) in zip(mlp_kernels(x, copy=False, **kw), held):
        assert torch.equal(K, own)  # at the time it is yielded
        views.append(K)
    assert not torch.equal(views[0], held[0][2])  # depth 1's view was overwritten by depth 2, 4
