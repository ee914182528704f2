"""Fits on partly random labels, shared by the ``random-labels`` and ``bound`` experiments."""

from __future__ import annotations

import math
from typing import Any

import torch

from .context import Context
from .numbers import error_rate
from .training import lecture_learning_rate, lecture_net, steps_to_fit, train_mse


def corrupted_labels(ctx: Context, fraction: float) -> torch.Tensor:
    """Training labels of which a ``fraction`` is re-drawn uniformly from ``{−1, +1}``.

    As in Zhang et al. 2017, each corrupted label is a uniformly random class, so about half
    of them keep their value. The corrupted sets are nested: one random order of the
    examples and one random label per example are drawn from the run's seed, and the
    fraction ``f`` re-draws the first ``round(f·n)`` examples of that order — so a larger
    fraction corrupts everything a smaller one does, and curves against the fraction are
    not blurred by independent draws.
    """
    y = ctx.data.y_train
    n = y.shape[0]
    rng = ctx.rng("corrupt")
    order = rng.permutation(n)
    fresh = torch.as_tensor(rng.choice([-1.0, 1.0], size=n), dtype=y.dtype, device=y.device)
    k = math.floor(float(fraction) * n + 0.5)
    idx = torch.as_tensor(order[:k], device=y.device)
    out = y.clone()
    out[idx] = fresh[idx]
    return out


def corrupted_fit(ctx: Context, fraction: float) -> dict[str, Any]:
    """Train the lecture's net (width ``rl_width``) on labels of which ``fraction`` were
    re-drawn at random (:func:`corrupted_labels`, Zhang et al. 2017), until the training loss is below
    ``rl_threshold`` or ``rl_max_steps`` pass. Shared by ``random-labels`` and ``bound``
    (memoized in ``ctx.cache``, so a full run trains each net once).

    The net is trained with its initial outputs subtracted, ``f = h − h_0``: targets are
    shifted to ``y + h_0(X)`` and test predictions are ``h(x) − h_0(x)``. The gradient
    dynamics are those of ``h``, but the initial residual is the labels themselves — as with
    the small initialization of Arora et al. 2019 — so that what is being fitted is ``y``,
    not the random function ``h_0``.

    Returns ``{"labels", "losses", "steps_to_fit", "test_error", "final_loss"}``.
    """
    key = ("corrupted_fit", float(fraction))
    if key in ctx.cache:
        return ctx.cache[key]
    s, data = ctx.sizes, ctx.data
    labels = corrupted_labels(ctx, fraction)
    lr = ctx.cache.setdefault(("lr", "train"), lecture_learning_rate(data.x_train))
    net = lecture_net(data.d, s.rl_width, ctx.seed_for("rl-net"), ctx.device)
    with torch.no_grad():
        f0, ft0 = net(data.x_train), net(data.x_test)
    with ctx.bar(s.rl_max_steps, f"fit, {fraction:.0%} random labels") as bar:
        losses = train_mse(net, data.x_train, labels + f0, lr=lr, steps=s.rl_max_steps,
                           momentum=s.rl_momentum, stop_below=s.rl_threshold, bar=bar)
    with torch.no_grad():
        test_error = error_rate(net(data.x_test) - ft0, data.y_test)
    out = {
        "labels": labels,
        "losses": losses,
        "steps_to_fit": steps_to_fit(losses, s.rl_threshold),
        "test_error": test_error,
        "final_loss": losses[-1],
        "learning_rate": lr,
    }
    ctx.cache[key] = out
    return out
