"""Fits shared by ``random-labels`` and ``bound``: one net trained per label/input condition.

Every fit trains a fresh net of the run's :class:`~ntkit.lab.models.LabModel`
(``--arch``) from the same initialization, with the **same optimizer settings for every condition** — as
Zhang et al. 2017 compare conditions under one training recipe: full-batch gradient descent
with heavy-ball momentum ``rl_momentum`` (``torch.optim.SGD``) on ``(1/2n)‖f − y‖²`` with
``η = n/λ_max(H)``, ``H`` the model's infinite-width NTK on the *true* training inputs (half
the stability limit of plain gradient descent, halved again for the CNN; randomized inputs
have a smaller ``λ_max`` here, so the same ``η`` is stable for them), until the loss is
below ``rl_threshold`` or ``rl_max_steps`` pass.

The net is trained with its initial outputs subtracted, ``f = h − h_0``: targets are shifted
to ``y + h_0(X)`` and test predictions are ``h(x) − h_0(x)``. The gradient dynamics are those
of ``h``, but the initial residual is the labels themselves — as with the small
initialization of Arora et al. 2019 — so that what is being fitted is ``y``, not ``h_0``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..predict import max_learning_rate
from .context import Context
from .corrupted import corrupted_labels
from .numbers import error_rate
from .training import steps_to_fit, train_mse


def learning_rate(ctx: Context) -> float:
    """``η = n/λ_max(H)`` of the run's model on the true training inputs, times the
    model's :attr:`~ntkit.lab.models.LabModel.lr_scale` (memoized)."""
    key = ("lr", "model", ctx.model.name)
    if key not in ctx.cache:
        H = ctx.model.kernel_cached(ctx.data.x_train, ctx.cache)
        ctx.cache[key] = 0.5 * ctx.model.lr_scale * max_learning_rate(H)
    return ctx.cache[key]


def _fit(ctx: Context, x: torch.Tensor, y: torch.Tensor, label: str) -> dict[str, Any]:
    s, data = ctx.sizes, ctx.data
    lr = learning_rate(ctx)
    net = ctx.model.net(data.d, ctx.seed_for("rl-net"), ctx.device)
    with torch.no_grad():
        f0 = net(x).reshape(-1)
    with ctx.bar(s.rl_max_steps, label) as bar:
        losses = train_mse(net, x, y + f0, lr=lr, steps=s.rl_max_steps,
                           momentum=s.rl_momentum, stop_below=s.rl_threshold, bar=bar)
    return {"net": net, "losses": losses, "steps_to_fit": steps_to_fit(losses, s.rl_threshold),
            "final_loss": losses[-1], "learning_rate": lr}


def corrupted_fit(ctx: Context, fraction: float) -> dict[str, Any]:
    """A net fitted to labels of which ``fraction`` were re-drawn at random
    (:func:`~ntkit.lab.corrupted.corrupted_labels`; memoized in ``ctx.cache``).

    Returns ``{"labels", "losses", "steps_to_fit", "final_loss", "test_error", "test_loss",
    "learning_rate"}`` (test error and loss on the clean test labels).
    """
    key = ("corrupted_fit", ctx.model.name, float(fraction))
    if key in ctx.cache:
        return ctx.cache[key]
    data = ctx.data
    labels = corrupted_labels(ctx, fraction)
    fit = _fit(ctx, data.x_train, labels, f"fit, {fraction:.0%} random labels")
    net = fit.pop("net")
    with torch.no_grad():
        ft0 = ctx.model.net(data.d, ctx.seed_for("rl-net"), ctx.device)(data.x_test).reshape(-1)
        pred = net(data.x_test).reshape(-1) - ft0
    fit.update(labels=labels, test_error=error_rate(pred, data.y_test),
               test_loss=float(0.5 * ((pred - data.y_test) ** 2).mean()))
    ctx.cache[key] = fit
    return fit


def variant_fit(ctx: Context, kind: str) -> dict[str, Any]:
    """A net fitted to the true labels on inputs randomized as in Zhang et al. 2017
    (:meth:`~ntkit.lab.dataset.LabData.variant`), same settings as :func:`corrupted_fit`."""
    data = ctx.data
    x = data.variant(kind, ctx.rng("rl-variant", kind))
    fit = _fit(ctx, x, data.y_train, f"fit, {kind.replace('_', ' ')}")
    fit.pop("net")
    return fit
