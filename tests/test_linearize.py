"""nk.linearize: the first-order Taylor model f(w0, x) + <∇_w f(w0, x), w − w0> (Lee et al. 2019).

References are independent of torch.func: Jacobians from one ``autograd.grad`` per example
and output, and the gradient-descent trajectory written out in closed form here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.empirical import empirical_ntk
from ntkit.errors import ModelError, ParameterError
from ntkit.linearize import LinearizedModel, linearize

F64 = torch.float64



def model_jacobian(model, x, params):
    """``(n·o, P)`` rows ∂f_o(x_i)/∂w by plain autograd."""
    out = model(x).reshape(-1)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[k], params, retain_graph=True)])
            for k in range(out.numel())]
    return torch.stack(rows).detach()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 20), nn.Tanh(), nn.Linear(20, 2)).double()


def cnn():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 16, 2)).double()


@pytest.mark.parametrize(("make", "shape"), [(mlp, (3,)), (cnn, (1, 4, 4))])
def test_equals_model_and_its_gradient_is_the_jacobian_at_w0(make, shape):
    model = make()
    x = torch.randn(5, *shape, dtype=F64)
    lin = linearize(model)
    torch.testing.assert_close(lin(x), model(x), rtol=0, atol=1e-14)
    names = [k for k, _ in model.named_parameters()]
    want = model_jacobian(model, x, list(model.parameters()))
    got = model_jacobian(lin, x, [lin.params[k.replace(".", "__")] for k in names])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)


def test_affine_in_the_weights_and_trains_away_from_w0():
    model = mlp()
    x = torch.randn(4, 3, dtype=F64)
    lin = linearize(model)
    base = {k: p.detach().clone() for k, p in lin.params.items()}
    g = torch.Generator().manual_seed(3)
    d1 = {k: torch.randn(v.shape, generator=g, dtype=F64) for k, v in base.items()}
    d2 = {k: torch.randn(v.shape, generator=g, dtype=F64) for k, v in base.items()}

    def at(s, t):
        with torch.no_grad():
            for k, p in lin.params.items():
                p.copy_(base[k] + s * d1[k] + t * d2[k])
            return lin(x)

    # second differences vanish along lines and across directions; the model's would not
    assert (at(2, 0) - 2 * at(1, 0) + at(0, 0)).abs().max() < 1e-12
    assert (at(1, 1) - at(1, 0) - at(0, 1) + at(0, 0)).abs().max() < 1e-12
    assert (at(1, 0) - at(0, 0)).abs().max() > 1e-2
    # w0 is frozen: the expansion point does not move with the parameters
    for k, v in lin.w0().items():
        assert torch.equal(v, dict(model.named_parameters())[k].detach())


def closed_form_gd(H, f0, y, lr, k):
    """f_k = f_0 + (I − (I − ηH/n)^k)(y − f_0), for H (n·o, n·o) and flattened outputs."""
    n = f0.shape[0]
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    decay = torch.linalg.matrix_power(eye - lr * H / n, k)
    return (f0.reshape(-1) + (eye - decay) @ (y - f0).reshape(-1)).reshape(f0.shape)


@pytest.mark.parametrize("params", [None, ["0.weight"]])
def test_gradient_descent_reproduces_the_closed_form(params):
    """k steps of full-batch GD on (1/2n)‖f − y‖² with rate η: f_k from the NTK at w0."""
    model = mlp()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 3, generator=g, dtype=F64)
    y = torch.randn(8, 2, generator=g, dtype=F64)
    lin = linearize(model, params=params)
    H = empirical_ntk(model, x, output="full", params=params)  # (n, n, o, o)
    H = H.permute(0, 2, 1, 3).reshape(16, 16)
    n, lr = 8, 0.5
    f0 = lin(x).detach()
    opt = torch.optim.SGD(lin.parameters(), lr=lr)
    for k in range(1, 31):
        opt.zero_grad()
        (0.5 * ((lin(x) - y) ** 2).sum() / n).backward()
        opt.step()
        if k in (1, 5, 30):
            torch.testing.assert_close(lin(x).detach(), closed_form_gd(H, f0, y, lr, k),
                                       rtol=0, atol=1e-8)
    assert (lin(x) - f0).abs().max() > 0.1  # it did train


def test_scalar_outputs_and_other_optimizers():
    net = nk.theory.TwoLayerNet(2, 32, activation="erf", seed=0)
    x = torch.randn(6, 2, dtype=F64)
    y = torch.randn(6, dtype=F64)
    lin = linearize(net)
    H = empirical_ntk(net, x)  # (n, n) for the (n,) output
    f0 = lin(x).detach()
    opt = torch.optim.SGD(lin.parameters(), lr=0.3)
    for _ in range(10):
        opt.zero_grad()
        (0.5 * ((lin(x) - y) ** 2).sum() / 6).backward()
        opt.step()
    torch.testing.assert_close(lin(x).detach(), closed_form_gd(H, f0, y, 0.3, 10), rtol=0, atol=1e-8)
    adam = torch.optim.Adam(linearize(net).parameters(), lr=0.1)  # any optimizer works
    assert sum(p.numel() for g in adam.param_groups for p in g["params"]) == 32 * 3


def test_parameters_state_and_devices():
    model = mlp()
    lin = linearize(model, params="2")
    assert isinstance(lin, LinearizedModel) and isinstance(lin, nn.Module)
    assert list(lin.params) == ["2__weight", "2__bias"]  # the model's order
    assert sorted(k for k, _ in lin.named_parameters()) == ["params.2__bias", "params.2__weight"]
    assert {"w0__2__weight", "w0__2__bias", "params.2__weight"} <= set(lin.state_dict())
    with torch.no_grad():
        model[0].weight.add_(1.0)  # later changes to the original do not leak in
    x = torch.randn(3, 3, dtype=F64)
    assert not torch.allclose(lin(x), model(x))
    as32 = lin.float()
    assert as32(x.float()).dtype == torch.float32


def test_errors():
    with pytest.raises(ModelError, match=r"nn\.Module"):
        linearize(lambda z: z)
    with pytest.raises(ModelError, match="no trainable"):
        linearize(nn.ReLU())
    with pytest.raises(ParameterError, match="unknown parameter"):
        linearize(mlp(), params=["nope"])
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    with pytest.raises(ModelError, match=r"eval\(\)"):
        linearize(bn)
    linearize(bn.eval())
