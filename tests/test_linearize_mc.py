"""nk.linearize and nk.monte_carlo_kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import ntkit as nk
from conftest import loglog_slope, relative_error
from ntkit.empirical import empirical_ntk
from ntkit.linearize import linearize
from ntkit.monte_carlo import monte_carlo_kernel


@pytest.fixture
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 20), nn.Tanh(), nn.Linear(20, 2)).double()


def test_equals_model_at_w0_and_gradient_is_jacobian(net):
    x = torch.randn(6, 3, dtype=torch.float64)
    lin = linearize(net)
    torch.testing.assert_close(lin(x), net(x), rtol=0, atol=1e-14)
    params = {k: p.detach() for k, p in net.named_parameters()}
    jac_model = jacrev(lambda p: functional_call(net, p, (x,)))(params)
    lin_params = dict(lin.params.items())
    jac_lin = jacrev(lambda p: functional_call(lin, {f"params.{k}": v for k, v in p.items()},
                                               (x,)))(lin_params)
    for k in params:
        torch.testing.assert_close(jac_lin[k.replace(".", "__")], jac_model[k], rtol=1e-12,
                                   atol=1e-13)


def test_affine_in_the_weights(net):
    x = torch.randn(4, 3, dtype=torch.float64)
    lin = linearize(net)
    base = {k: p.detach().clone() for k, p in lin.params.items()}
    g = torch.Generator().manual_seed(3)
    d = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in base.items()}

    def at(t):
        with torch.no_grad():
            for k, p in lin.params.items():
                p.copy_(base[k] + t * d[k])
        return lin(x)

    second = at(2.0) - 2 * at(1.0) + at(0.0)
    assert second.abs().max() < 1e-12
    assert (at(1.0) - at(0.0)).abs().max() > 1e-3  # it does move


def test_gd_on_linearized_model_matches_closed_form(net):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, 2, generator=g, dtype=torch.float64)
    lin = linearize(net)
    f0 = lin(x).detach()
    H = empirical_ntk(net, x, output="full")  # (n, n, o, o); outputs independent for Linear
    n, lr = 8, 0.3
    opt = torch.optim.SGD(lin.parameters(), lr=lr)
    steps = {0: f0}
    for k in range(1, 41):
        opt.zero_grad()
        (0.5 * ((lin(x) - y) ** 2).sum() / n).backward()
        opt.step()
        if k in (1, 7, 40):
            steps[k] = lin(x).detach()
    flat_H = H.permute(0, 2, 1, 3).reshape(n * 2, n * 2)
    eye = torch.eye(n * 2, dtype=torch.float64)
    for k, fk in steps.items():
        decay = torch.linalg.matrix_power(eye - lr * flat_H / n, k)
        closed = f0.reshape(-1) + (eye - decay) @ (y - f0).reshape(-1)
        torch.testing.assert_close(fk.reshape(-1), closed, rtol=1e-8, atol=1e-9)
    # The same through nk.predict with the (n, n, o, o) kernel.
    pred = nk.predict.gradient_descent_mse(H, y, learning_rate=lr)
    torch.testing.assert_close(pred.train([1, 7, 40], fx_train_0=f0),
                               torch.stack([steps[1], steps[7], steps[40]]), rtol=1e-8, atol=1e-9)


def test_linearize_rejects_non_modules():
    with pytest.raises(nk.NtkitError):
        linearize(lambda x: x)
    with pytest.raises(nk.errors.ModelError, match="no trainable"):
        linearize(nn.ReLU())


def test_monte_carlo_kernel_converges_to_analytic():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    arch = nk.mlp(2, 256, "erf", W_std=1.5, b_std=0.2)
    exact = arch.kernel(x)
    errors = [np.mean([relative_error(monte_carlo_kernel(arch, x, n_samples=s, seed=100 * r).nngp,
                                      exact.nngp) for r in range(4)]) for s in (2, 8, 32)]
    assert -0.8 < loglog_slope([2, 8, 32], errors) < -0.3, errors
    k = monte_carlo_kernel(arch, x, n_samples=16)
    assert relative_error(k.ntk, exact.ntk) < 0.05
    torch.testing.assert_close(k.var1, k.nngp.diagonal())
