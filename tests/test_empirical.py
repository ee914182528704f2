"""Empirical NTK: every method against a naive per-example autograd loop, and each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk
from conftest import loglog_slope, naive_empirical_ntk, relative_error
from ntkit.empirical import empirical_ntk
from ntkit.theory import TwoLayerNet, one_d_finite_kernel

METHODS = ["jacobian", "ntk_vp", "structured", "auto"]


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 12)
        self.block = nn.Sequential(nn.Tanh(), nn.Linear(12, 12))
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(torch.relu(h + self.block(h)))


class WithBuffers(nn.Module):
    """A frozen affine input normalization held in buffers, then an MLP."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.linspace(-1, 1, 4))
        self.register_buffer("scale", torch.linspace(0.5, 2, 4))
        self.net = nn.Sequential(nn.Linear(4, 10), nn.ELU(), nn.Linear(10, 2))
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(self.net((x - self.shift) * self.scale))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3),
                         nn.Flatten(), nn.Linear(2 * 2 * 2, 2))


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)), (4,)),
    "cnn": (cnn, (1, 4, 4)),
    "residual": (Residual, (4,)),
    "buffers": (lambda: WithBuffers().eval(), (4,)),
}


@pytest.fixture(params=sorted(MODELS))
def model_and_data(request):
    torch.manual_seed(0)
    make, shape = MODELS[request.param]
    model = make().double()
    g = torch.Generator().manual_seed(1)
    return request.param, model, torch.randn(5, *shape, generator=g, dtype=torch.float64), \
        torch.randn(3, *shape, generator=g, dtype=torch.float64)


def test_methods_agree_with_naive_loop(model_and_data):
    name, model, x1, x2 = model_and_data
    reference = naive_empirical_ntk(model, x1, x2)
    for method in METHODS:
        if method == "structured" and name in ("cnn", "buffers"):
            with pytest.raises(nk.errors.ModelError, match="structured"):
                empirical_ntk(model, x1, x2, method=method)
            continue
        full = empirical_ntk(model, x1, x2, output="full", method=method, batch_size=2)
        trace = empirical_ntk(model, x1, x2, output="trace", method=method)
        diag = empirical_ntk(model, x1, x2, output="diagonal", method=method)
        torch.testing.assert_close(trace, reference, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(full.diagonal(dim1=2, dim2=3).sum(-1), trace, rtol=1e-10,
                                   atol=1e-12)
        torch.testing.assert_close(diag, full.diagonal(dim1=2, dim2=3), rtol=1e-12, atol=1e-13)


def test_symmetric_half_equals_explicit_pair_and_is_psd(model_and_data):
    _, model, x1, _ = model_and_data
    for method in ("jacobian", "ntk_vp", "auto"):
        k = empirical_ntk(model, x1, method=method, batch_size=2, output="full")
        torch.testing.assert_close(k, empirical_ntk(model, x1, x1.clone(), method=method,
                                                    output="full"), rtol=1e-10, atol=1e-12)
        flat = k.permute(0, 2, 1, 3).reshape(k.shape[0] * k.shape[2], -1)
        torch.testing.assert_close(flat, flat.T, rtol=0, atol=0)
        eig = torch.linalg.eigvalsh(flat)
        assert eig.min() >= -1e-10 * eig.max()


def test_params_selects_first_layer_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    first = empirical_ntk(model, x, params=["0.weight", "0.bias"])
    by_predicate = empirical_ntk(model, x, params=lambda name, p: name.startswith("0."))
    for p in model[2].parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(first, naive_empirical_ntk(model, x), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(by_predicate, first, rtol=0, atol=0)


def test_lecture_one_d_net_formula_equals_autograd():
    xs = torch.tensor([-2.0, -0.5, 0.3, 1.1, 1.7], dtype=torch.float64)
    for activation in ("relu", "erf"):
        net = TwoLayerNet(1, 64, activation=activation, seed=2)
        formula = one_d_finite_kernel(xs, None, net.a.detach(), net.B.detach()[:, 0], activation)
        for method in ("jacobian", "ntk_vp", "auto"):
            torch.testing.assert_close(empirical_ntk(net, xs[:, None], method=method), formula,
                                       rtol=1e-12, atol=1e-13)


def width_errors(arch, x, widths, seeds):
    errors = []
    for w in widths:
        a = arch(w)
        exact = a.kernel(x, get="ntk")
        errors.append(np.mean([relative_error(empirical_ntk(a.build(x.shape[1:], seed=s), x), exact)
                               for s in range(seeds)]))
    return errors


def test_width_convergence_quick():
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    widths = [64, 256, 1024]
    errors = width_errors(lambda w: nk.mlp(2, w, "relu", W_std=2**0.5, b_std=0.1), x, widths, 4)
    assert -0.8 < loglog_slope(widths, errors) < -0.3, errors


@pytest.mark.slow
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_width_convergence_slope(depth, activation):
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    widths = [64, 256, 1024, 4096]
    errors = width_errors(lambda w: nk.mlp(depth, w, activation, W_std=1.5, b_std=0.1), x,
                          widths, 4)
    assert -0.75 <= loglog_slope(widths, errors) <= -0.35, errors


def test_bad_inputs():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(nk.errors.ShapeError, match="same example shape"):
        empirical_ntk(model, x, torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(nk.errors.ParameterError, match="selects no parameter"):
        empirical_ntk(model, x, params=lambda n, p: False)
    with pytest.raises(nk.errors.ParameterError, match="unknown parameter"):
        empirical_ntk(model, x, params=["nope"])
    with pytest.raises(nk.errors.ModelError, match="batch axis"):
        empirical_ntk(lambda_module(lambda z: model(z).sum()), x)
    with pytest.raises(nk.errors.ModelError, match="no parameters"):
        empirical_ntk(nn.ReLU(), x)
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    with pytest.raises(nk.errors.ModelError, match=r"eval\(\)"):
        empirical_ntk(bn, x)
    empirical_ntk(bn.eval(), x)  # fine once in eval mode
    with pytest.raises(nk.errors.ParameterError, match="output"):
        empirical_ntk(model, x, output="all")


class lambda_module(nn.Module):  # noqa: N801 - a tiny adapter used as a function
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.w = nn.Parameter(torch.ones(1, dtype=torch.float64))

    def forward(self, x):
        return self.fn(x) * self.w
