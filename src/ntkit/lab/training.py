"""The lecture's finite nets and their training: the two-layer net, full-batch GD, step size."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from ..theory import TwoLayerNet


def lecture_net(d: int, m: int, seed: int, device: torch.device) -> TwoLayerNet:
    """The lecture's two-layer ReLU net ``h(x) = (1/√m) Σ a_i relu(b_iᵀx)`` (float64)."""
    return TwoLayerNet(d, m, activation=torch.relu, seed=seed).to(device)


def flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def train_mse(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    steps: int,
    momentum: float = 0.0,
    stop_below: float | None = None,
    on_step: Callable[[int], None] | None = None,
    bar: tqdm | None = None,
) -> list[float]:
    """Full-batch (heavy-ball) gradient descent on ``(1/2n)‖f(x) − y‖²`` with ``torch.optim.SGD``.

    Returns the loss before each step and after the last one (``steps + 1`` values, fewer if
    the loss fell below ``stop_below``: training stops at the first loss below it).
    ``on_step(k)`` is called with the parameters after ``k`` steps, ``k = 0..steps``.
    """
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    losses: list[float] = []
    for k in range(steps + 1):
        if on_step is not None:
            with torch.no_grad():
                on_step(k)
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((net(x).reshape(-1) - y) ** 2).mean()
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value):
            break
        if k == steps or (stop_below is not None and value < stop_below):
            break
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
    return losses


def steps_to_fit(losses: Sequence[float], threshold: float) -> int | None:
    """The first step whose loss is below ``threshold`` (``None``: never)."""
    for k, v in enumerate(losses):
        if v < threshold:
            return k
    return None


def lecture_learning_rate(x: torch.Tensor) -> float:
    """``η = n / λ_max(H)`` for the lecture's infinite-width NTK ``H`` on ``x``.

    Half of the stability limit ``2n / λ_max`` of gradient descent on ``(1/2n)‖f − y‖²``
    (:func:`ntkit.predict.max_learning_rate`), so that finite nets, whose kernel fluctuates
    around ``H``, stay stable too.
    """
    from ..predict import max_learning_rate
    from ..theory import two_layer_ntk

    return 0.5 * max_learning_rate(two_layer_ntk(x))
