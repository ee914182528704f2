"""The lab's stacked training against the plain route: one ``torch.optim.SGD`` loop per net."""

from __future__ import annotations

import pytest
import torch

from ntkit.errors import ShapeError
from ntkit.lab.batched import train_stack, train_two_layer
from ntkit.lab.training import steps_to_fit, train_mse
from ntkit.theory import TwoLayerNet

N, D, M = 24, 5, 32


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, N, D, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.sign(torch.randn(3, N, generator=g, dtype=torch.float64))
    y[1] *= 0.3  # a small target: this net reaches the threshold first
    return x, y


def _reference(net_factory, x, y, **kw):
    out = []
    for c in range(y.shape[0]):
        net = net_factory()
        losses = train_mse(net, x[c], y[c], **kw)
        out.append((losses, {k: p.detach().clone() for k, p in net.named_parameters()}))
    return out


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_two_layer_stack_equals_one_sgd_loop_per_net(momentum):
    x, y = _problem()
    kw = {"lr": 2.0, "steps": 60, "momentum": momentum, "stop_below": 0.02}
    ref = _reference(lambda: TwoLayerNet(D, M, seed=4), x, y, **kw)
    net = TwoLayerNet(D, M, seed=4)
    res = train_two_layer(x, y, net.a.detach(), net.B.detach(), **kw)
    stopped = [steps_to_fit(r[0], 0.02) for r in ref]
    assert len(set(stopped)) > 1 and stopped[1] is not None  # nets leave the stack at different steps
    for (losses, params), got, got_p in zip(ref, res.losses, res.params):
        assert len(got) == len(losses)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(losses), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got_p["a"], params["a"], rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(got_p["B"], params["B"], rtol=1e-11, atol=1e-13)


def test_two_layer_shared_inputs_and_on_step():
    x, y = _problem(1)
    seen = []
    net = TwoLayerNet(D, M, seed=2)
    res = train_two_layer(x[0], y, net.a.detach(), net.B.detach(), lr=1.0, steps=5,
                          on_step=lambda k, a, B: seen.append((k, a[2].clone())))
    assert [k for k, _ in seen] == list(range(6))
    torch.testing.assert_close(seen[-1][1], res.params[2]["a"])
    ref = TwoLayerNet(D, M, seed=2)
    losses = train_mse(ref, x[0], y[2], lr=1.0, steps=5)
    torch.testing.assert_close(torch.tensor(res.losses[2]), torch.tensor(losses), rtol=1e-12, atol=1e-14)
    with pytest.raises(ShapeError):
        train_two_layer(x[0], y[0], net.a.detach(), net.B.detach(), lr=1.0, steps=1)


def _small_cnn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    body = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * D, 1)).double()

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body(x.unsqueeze(1)).reshape(-1)

    return Flat()


def test_module_stack_equals_one_sgd_loop_per_copy():
    x, y = _problem(2)
    kw = {"lr": 0.5, "steps": 40, "momentum": 0.9, "stop_below": 0.05}
    ref = _reference(lambda: _small_cnn(7), x, y, **kw)
    res = train_stack(_small_cnn(7), x, y, stacked_x=True, **kw)
    for (losses, params), got, got_p in zip(ref, res.losses, res.params):
        assert len(got) == len(losses)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(losses), rtol=1e-10, atol=1e-12)
        for k, p in params.items():
            torch.testing.assert_close(got_p[k], p, rtol=1e-9, atol=1e-11)
    shared = train_stack(_small_cnn(7), x[0], y, lr=0.5, steps=3)
    one = train_mse(_small_cnn(7), x[0], y[1], lr=0.5, steps=3)
    torch.testing.assert_close(torch.tensor(shared.losses[1]), torch.tensor(one), rtol=1e-10, atol=1e-12)
    with pytest.raises(ShapeError):
        train_stack(_small_cnn(7), x[:, :5], y, lr=0.5, steps=1, stacked_x=True)


def test_linearized_losses_equal_sgd_on_a_linear_model_with_that_kernel():
    from ntkit.lab.fits import linearized_losses

    g = torch.Generator().manual_seed(5)
    feats = torch.randn(N, 3 * N, generator=g, dtype=torch.float64) / N
    K = feats @ feats.T  # the kernel of the linear model f = feats · w
    y = torch.sign(torch.randn(2, N, generator=g, dtype=torch.float64))
    kw = {"lr": 0.7 * N / float(torch.linalg.eigvalsh(K)[-1]), "momentum": 0.9, "steps": 80}
    got = linearized_losses(K, y, stop_below=1e-3, **kw)
    for c in range(2):
        lin = torch.nn.Linear(3 * N, 1, bias=False).double()
        torch.nn.init.zeros_(lin.weight)  # f_0 = 0: the residual starts at −y, as in the fits
        ref = train_mse(lin, feats, y[c], stop_below=1e-3, **kw)
        assert 3 < len(ref) < 81
        torch.testing.assert_close(torch.tensor(got[c]), torch.tensor(ref), rtol=1e-9, atol=1e-12)
