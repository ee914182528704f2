"""Several nets trained at once: full-batch (heavy-ball) gradient descent on a stack of nets.

The lab trains many nets that differ only in their labels or inputs (one per corruption
level or input condition of ``random-labels``, true and random labels in ``spectrum``), from
the same initialization and with the same optimizer settings. Training them one after the
other spends most of its time in per-step overhead and in small matrix products; here all of
them take their steps together:

- :func:`train_two_layer`: the lecture's two-layer ReLU net ``h(x) = (1/√m) Σ a_i relu(b_iᵀx)``
  with its gradients in closed form (``∂L/∂a = relu(XBᵀ)ᵀr/√m``,
  ``∂L/∂B = ((r aᵀ/√m) ⊙ 1[XBᵀ > 0])ᵀX``, ``r = (f − y)/n``), batched matrix products over
  the stack;
- :func:`train_stack`: any ``nn.Module`` (the CNN of ``--arch cnn``), its per-net gradients
  by ``torch.func.vmap`` over ``torch.func.grad`` of a ``functional_call``.

Both run exactly the update of ``torch.optim.SGD(lr, momentum)`` on ``(1/2n)‖f(X) − y‖²`` for
each net (``buf ← μ·buf + g``, ``w ← w − η·buf``; plain gradient descent when ``μ = 0``;
tested against :func:`ntkit.lab.training.train_mse`). A net whose loss falls below
``stop_below`` stops there, and it leaves the stack, so that it costs nothing afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ShapeError


@dataclass
class StackResult:
    """What :func:`train_two_layer` / :func:`train_stack` return.

    Attributes:
        losses: per net, the loss before each step and after the last one (``steps + 1``
            values, fewer when it fell below ``stop_below``: the first value below it is the
            last), as Python floats.
        params: per net, its final parameters (``{"a": (m,), "B": (m, d)}`` for the two-layer
            net, the module's parameter names otherwise).
    """

    losses: list[list[float]]
    params: list[dict[str, torch.Tensor]]


def _loss_values(loss: torch.Tensor) -> list[float]:
    return [float(v) for v in loss.tolist()]


def train_two_layer(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    B: torch.Tensor,
    *,
    lr: float,
    steps: int,
    momentum: float = 0.0,
    stop_below: float | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    bar: Any = None,
) -> StackResult:
    """Train ``C`` two-layer ReLU nets ``h(x) = (1/√m) relu(x Bᵀ) a`` together.

    Args:
        x: inputs ``(n, d)`` shared by all nets, or ``(C, n, d)``, one set per net.
        y: targets ``(C, n)``.
        a: initial output weights ``(m,)`` (every net starts there) or ``(C, m)``.
        B: initial input weights ``(m, d)`` or ``(C, m, d)``.
        lr, momentum: ``torch.optim.SGD``'s step size and heavy-ball momentum.
        steps: the most steps each net takes.
        stop_below: a net stops at its first loss below this.
        on_step: ``on_step(k, a, B)`` with the parameters ``(C, m)``, ``(C, m, d)`` after ``k``
            steps, ``k = 0..steps`` (only without ``stop_below``: every net is still there).
        bar: a progress bar (``update(1)`` per step of the stack).

    The computation runs in the dtype of ``a`` (``x``, ``y`` and ``B`` are cast to it).

    Returns:
        :class:`StackResult` (parameters ``{"a": (m,), "B": (m, d)}`` per net).

    Raises:
        ShapeError: shapes that do not fit together.
    """
    if on_step is not None and stop_below is not None:
        raise ValueError("on_step needs every net to take every step; give no stop_below")
    if y.ndim != 2:
        raise ShapeError(f"y must be (C, n), got {tuple(y.shape)}")
    C, n = y.shape
    dtype = a.dtype
    a = (a.expand(C, -1) if a.ndim == 1 else a).to(dtype).clone()
    B = (B.expand(C, -1, -1) if B.ndim == 2 else B).to(dtype).clone()
    x = (x.expand(C, -1, -1) if x.ndim == 2 else x).to(dtype)
    y = y.to(dtype)
    m = a.shape[1]
    if a.shape[0] != C or B.shape[:2] != (C, m) or x.shape[:2] != (C, n) or x.shape[2] != B.shape[2]:
        raise ShapeError(f"need x (C, n, d), y (C, n), a (C, m), B (C, m, d); got x {tuple(x.shape)}, "
                         f"y {tuple(y.shape)}, a {tuple(a.shape)}, B {tuple(B.shape)}")
    scale = 1.0 / math.sqrt(m)
    va, vB = torch.zeros_like(a), torch.zeros_like(B)
    live = list(range(C))
    losses: list[list[float]] = [[] for _ in range(C)]
    params: list[dict[str, torch.Tensor]] = [{} for _ in range(C)]
    for k in range(steps + 1):
        if on_step is not None:
            on_step(k, a, B)
        z = torch.bmm(x, B.transpose(1, 2))  # (C, n, m)
        s = z.clamp_min(0)
        f = torch.bmm(s, a.unsqueeze(2)).squeeze(2) * scale  # (C, n)
        r = f - y
        loss = 0.5 * (r * r).mean(dim=1)
        values = _loss_values(loss)
        done = _record(values, live, losses, last=k == steps, stop_below=stop_below)
        if done:
            for i in done:
                params[live[i]] = {"a": a[i].clone(), "B": B[i].clone()}
            if len(done) == len(live):
                break
            keep = [i for i in range(len(live)) if i not in done]
            idx = torch.tensor(keep)
            live = [live[i] for i in keep]
            a, B, va, vB, x, y = (t.index_select(0, idx) for t in (a, B, va, vB, x, y))
            z, s, r = (t.index_select(0, idx) for t in (z, s, r))
        r = r * (1.0 / n)
        ga = torch.bmm(r.unsqueeze(1), s).squeeze(1) * scale  # (C, m)
        gz = (r.unsqueeze(2) * (a * scale).unsqueeze(1)).mul_(z > 0)  # (C, n, m)
        gB = torch.bmm(gz.transpose(1, 2), x)  # (C, m, d)
        if momentum:
            va.mul_(momentum).add_(ga)
            vB.mul_(momentum).add_(gB)
            a.sub_(va, alpha=lr)
            B.sub_(vB, alpha=lr)
        else:
            a.sub_(ga, alpha=lr)
            B.sub_(gB, alpha=lr)
        if bar is not None:
            bar.update(1)
    return StackResult(losses, params)


def _record(values: list[float], live: list[int], losses: list[list[float]], *, last: bool,
            stop_below: float | None) -> list[int]:
    """Append each live net's loss; return the stack positions of the nets that stop now
    (last step, non-finite loss, or below ``stop_below``)."""
    done = []
    for i, v in enumerate(values):
        losses[live[i]].append(v)
        if last or not math.isfinite(v) or (stop_below is not None and v < stop_below):
            done.append(i)
    return done


def train_stack(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    steps: int,
    momentum: float = 0.0,
    stop_below: float | None = None,
    stacked_x: bool = False,
    bar: Any = None,
) -> StackResult:
    """Train ``C`` copies of ``net`` (all from its current parameters) together.

    Args:
        net: a module mapping a batch ``(n, ...)`` to outputs ``(n,)`` (or ``(n, 1)``); its
            forward must treat examples independently and be pure (no buffers changed).
        x: inputs ``(n, ...)`` shared by all copies, or (``stacked_x=True``) ``(C, n, ...)``,
            one set per copy.
        y: targets ``(C, n)``.
        lr, momentum, steps, stop_below, bar: as in :func:`train_two_layer`.

    Per-copy gradients by ``torch.func.vmap(torch.func.grad(...))``; the loss is computed in
    ``y``'s dtype.

    Returns:
        :class:`StackResult` (the module's parameter names → final values, per copy).
    """
    from torch.func import functional_call, grad, vmap

    if y.ndim != 2:
        raise ShapeError(f"y must be (C, n), got {tuple(y.shape)}")
    C, n = y.shape
    shared = not stacked_x
    if (x.shape[0] != n) if shared else (x.shape[:2] != (C, n)):
        raise ShapeError(f"x must be ({n}, ...) shared, or ({C}, {n}, ...) with stacked_x=True; "
                         f"got {tuple(x.shape)}")
    names = [k for k, p in net.named_parameters() if p.requires_grad]
    params = {k: p.detach().unsqueeze(0).expand(C, *p.shape).clone() for k, p in net.named_parameters()
              if k in names}
    bufs = {k: torch.zeros_like(v) for k, v in params.items()}

    def loss_fn(p: dict[str, torch.Tensor], xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        out = functional_call(net, p, (xx,)).reshape(-1).to(yy.dtype)
        loss = 0.5 * ((out - yy) ** 2).mean()
        return loss, loss

    step = vmap(grad(loss_fn, has_aux=True), in_dims=(0, None if shared else 0, 0))
    live = list(range(C))
    losses: list[list[float]] = [[] for _ in range(C)]
    final: list[dict[str, torch.Tensor]] = [{} for _ in range(C)]
    for k in range(steps + 1):
        g, loss = step(params, x, y)
        values = _loss_values(loss)
        done = _record(values, live, losses, last=k == steps, stop_below=stop_below)
        if done:
            for i in done:
                final[live[i]] = {kk: t[i].clone() for kk, t in params.items()}
            if len(done) == len(live):
                break
            keep = [i for i in range(len(live)) if i not in done]
            idx = torch.tensor(keep)
            live = [live[i] for i in keep]
            params = {kk: t.index_select(0, idx) for kk, t in params.items()}
            bufs = {kk: t.index_select(0, idx) for kk, t in bufs.items()}
            g = {kk: t.index_select(0, idx) for kk, t in g.items()}
            y = y.index_select(0, idx)
            if not shared:
                x = x.index_select(0, idx)
        for kk in params:
            if momentum:
                bufs[kk].mul_(momentum).add_(g[kk])
                params[kk].sub_(bufs[kk], alpha=lr)
            else:
                params[kk].sub_(g[kk], alpha=lr)
        if bar is not None:
            bar.update(1)
    return StackResult(losses, final)
