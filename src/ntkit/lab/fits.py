"""Fits shared by ``random-labels`` and ``bound``: one net trained per label/input condition.

Every fit trains a fresh net of the run's :class:`~ntkit.lab.models.LabModel`
(``--arch``) from the same initialization, with the **same optimizer settings for every condition** — as
Zhang et al. 2017 compare conditions under one training recipe: full-batch gradient descent
with heavy-ball momentum ``rl_momentum`` (the update of ``torch.optim.SGD``) on
``(1/2n)‖f − y‖²`` with ``η = n/λ_max(H)``, ``H`` the model's infinite-width NTK on the *true*
training inputs (half the stability limit of plain gradient descent, halved again for the
CNN; randomized inputs have a smaller ``λ_max`` here, so the same ``η`` is stable for them),
and for the CNN at most ``(1 − μ)/S_0``, ``S_0`` the finite net's own loss sharpness at
initialization (:func:`learning_rate_details`: a narrow CNN on large images is far from its
kernel, and the kernel's step diverged on MNIST),
until the loss is below ``rl_threshold`` or ``rl_max_steps`` pass.

All the conditions a run asks for are trained together, as one stack of nets
(:mod:`ntkit.lab.batched`: closed-form gradients of the two-layer net, ``torch.func.vmap``
for the CNN), in float32 (:data:`FIT_DTYPE`; the threshold 0.01 is far above float32
rounding): each net leaves the stack when it reaches the threshold.

The net is trained with its initial outputs subtracted, ``f = h − h_0``: targets are shifted
to ``y + h_0(X)`` and test predictions are ``h(x) − h_0(x)``. The gradient dynamics are those
of ``h``, but the initial residual is the labels themselves — as with the small
initialization of Arora et al. 2019 — so that what is being fitted is ``y``, not ``h_0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..predict import max_learning_rate
from .batched import train_stack, train_two_layer
from .context import Context
from .corrupted import corrupted_labels
from .numbers import error_rate
from .training import steps_to_fit


def learning_rate(ctx: Context) -> float:
    """The fits' step ``η`` (memoized; :func:`learning_rate_details` says how it was chosen)."""
    return learning_rate_details(ctx)["learning_rate"]


def learning_rate_details(ctx: Context) -> dict[str, Any]:
    """How the fits' step was chosen: ``η_kernel = n/λ_max(H)`` of the model's infinite-width
    NTK on the true training inputs times :attr:`~ntkit.lab.models.LabModel.lr_scale`, and,
    for the CNN, at most ``(1 − μ)/S_0``, where ``S_0`` is the sharpness (top Hessian
    eigenvalue, :func:`ntkit.lab.curvature.loss_sharpness`) of the finite net's training loss
    at initialization on the true labels and ``μ`` the momentum.

    Why the cap: heavy-ball momentum ``μ`` moves ``η/(1 − μ)`` per unit gradient along
    slowly varying directions (the effective step); the cap keeps that effective step at half
    gradient descent's stability limit ``2/S_0`` on the curvature of the net actually trained
    — the same margin as ``η = n/λ_max(H)``, half the limit ``2n/λ_max(H)``, for the kernel.
    The fully connected nets (width ≥ 512) are close to the lazy regime — their empirical NTK
    is within a few % of the kernel (``width``) and they fit true labels in the steps the
    kernel's linearized dynamics take (40 vs 38 on digits) — where heavy ball is stable up to
    ``ηλ_max/n < 2(1 + μ)``, so they keep the kernel's step. The 16-channel CNN does not:
    its residual term makes ``S_0`` several times ``λ_max(H)/n`` on large images (MNIST,
    stride 2: 4.3×), that curvature grows once training moves the weights, and the kernel's
    step diverged (loss → inf within 10 steps). On digits (8×8, stride 1, ``S_0 ≈ 0.74
    λ_max(H)/n``) the cap also applies (η 25.7 → 7.0): the kernel's step fitted there, with
    losses rising to 4× their initial value on the way, and one rule serves every image size.

    Returns ``{"learning_rate", "kernel_learning_rate", "sharpness", "kernel_curvature",
    "rule"}`` (``sharpness`` is ``None`` for ``fc``; ``kernel_curvature`` is ``λ_max(H)/n``).
    """
    key = ("lr", "model", ctx.model.name)
    if key not in ctx.cache:
        H = ctx.model.kernel_cached(ctx.data.x_train, ctx.cache)
        eta_k = 0.5 * ctx.model.lr_scale * max_learning_rate(H)
        n = H.shape[0]
        out: dict[str, Any] = {"learning_rate": eta_k, "kernel_learning_rate": eta_k, "sharpness": None,
                               "kernel_curvature": float(torch.linalg.eigvalsh(H)[-1]) / n, "rule": "kernel"}
        if ctx.model.name != "fc":
            from .curvature import loss_sharpness

            net = ctx.model.net(ctx.data.d, ctx.seed_for("rl-net"), ctx.device)
            x = ctx.data.x_train
            with torch.no_grad():
                target = ctx.data.y_train + net(x).reshape(-1)  # the fits train h − h_0 on y
            sharp = loss_sharpness(net, x, target, seed=ctx.seed_for("rl-sharpness"))
            out["sharpness"] = sharp
            cap = (1.0 - ctx.sizes.rl_momentum) / sharp if sharp > 0 else math.inf
            if cap < eta_k:
                out.update(learning_rate=cap, rule="sharpness")
        ctx.cache[key] = out
    return ctx.cache[key]


#: The dtype in which the fits of ``random-labels`` and ``bound`` train.
FIT_DTYPE = torch.float32


def _outputs(ctx: Context, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Outputs ``(n,)`` (float64) of the model's net with ``params`` on flat rows ``x``."""
    if ctx.model.name == "fc":
        a, B = params["a"].double(), params["B"].double()
        return torch.relu(x @ B.T) @ a / math.sqrt(a.numel())
    from torch.func import functional_call

    net = ctx.cache[("rl-net", ctx.model.name)]
    with torch.no_grad():
        return functional_call(net, params, (x.to(FIT_DTYPE),)).reshape(-1).double()


def train_conditions(ctx: Context, fractions: Sequence[float] = (), variants: Sequence[str] = ()) -> None:
    """Train, as one stack, the nets of the label-corruption ``fractions`` and input
    ``variants`` not yet in ``ctx.cache`` (see the module docstring); results are read with
    :func:`corrupted_fit` and :func:`variant_fit`."""
    s, data = ctx.sizes, ctx.data
    todo: list[tuple[tuple, torch.Tensor, torch.Tensor, str]] = []
    for f in fractions:
        key = ("corrupted_fit", ctx.model.name, float(f))
        if key not in ctx.cache and all(t[0] != key for t in todo):
            todo.append((key, data.x_train, corrupted_labels(ctx, f), f"{float(f):.0%} random labels"))
    for kind in variants:
        key = ("variant_fit", ctx.model.name, kind)
        if key not in ctx.cache and all(t[0] != key for t in todo):
            x = data.variant(kind, ctx.rng("rl-variant", kind))
            todo.append((key, x, data.y_train, kind.replace("_", " ")))
    if not todo:
        return
    lr = learning_rate(ctx)
    net = ctx.model.net(data.d, ctx.seed_for("rl-net"), ctx.device)
    with torch.no_grad():
        f0 = torch.stack([net(x).reshape(-1) for _, x, _, _ in todo])
    x = torch.stack([x for _, x, _, _ in todo]).to(FIT_DTYPE)
    y = (torch.stack([y for _, _, y, _ in todo]) + f0).to(FIT_DTYPE)
    desc = f"fitting {len(todo)} nets together ({', '.join(t[3] for t in todo)})"
    with ctx.bar(s.rl_max_steps, desc) as bar:
        if ctx.model.name == "fc":
            res = train_two_layer(x, y, net.a.detach().to(FIT_DTYPE), net.B.detach().to(FIT_DTYPE),
                                  lr=lr, steps=s.rl_max_steps, momentum=s.rl_momentum,
                                  stop_below=s.rl_threshold, bar=bar)
        else:  # the CNN computes in float32 whatever its inputs (models.CNN_DTYPE)
            res = train_stack(net, x, y, lr=lr, steps=s.rl_max_steps, momentum=s.rl_momentum,
                              stop_below=s.rl_threshold, stacked_x=True, bar=bar)
    ctx.cache[("rl-net", ctx.model.name)] = net
    with torch.no_grad():
        ft0 = net(data.x_test).reshape(-1)
    for (key, _, labels, _), losses, params in zip(todo, res.losses, res.params):
        fit: dict[str, Any] = {"losses": losses, "steps_to_fit": steps_to_fit(losses, s.rl_threshold),
                               "final_loss": losses[-1], "learning_rate": lr}
        if key[0] == "corrupted_fit":
            pred = _outputs(ctx, params, data.x_test) - ft0
            fit.update(labels=labels, test_error=error_rate(pred, data.y_test),
                       test_loss=float(0.5 * ((pred - data.y_test) ** 2).mean()))
        ctx.cache[key] = fit


def linearized_losses(K: torch.Tensor, ys: torch.Tensor, *, lr: float, momentum: float, steps: int,
                      stop_below: float | None = None) -> list[list[float]]:
    """Loss curves of the fits' recipe on the *linearized* model with kernel ``K``, in closed form.

    In the lazy regime (Jacot et al. 2018; Lee et al. 2019) the residual ``r = f − y`` of
    heavy-ball gradient descent on ``(1/2n)‖f − y‖²`` (``torch.optim.SGD``: ``u ← μu + Kr/n``,
    ``r ← r − ηu``) evolves independently along each eigenvector of ``K`` (Arora et al. 2019,
    Thm 4.1, for ``μ = 0``): one eigendecomposition, then two numbers per eigenvalue and step.
    The fits subtract the initial outputs, so ``r_0 = −y``.

    Args:
        K: ``(n, n)`` kernel on the training inputs (float64).
        ys: ``(C, n)`` label vectors.
        lr, momentum, steps, stop_below: the recipe (:func:`train_conditions`).

    Returns:
        Per label vector, the loss before each step (``steps + 1`` values, or up to the first
        one below ``stop_below``), as in :class:`ntkit.lab.batched.StackResult`.
    """
    n = K.shape[0]
    lam, V = torch.linalg.eigh(K.double())
    rate = lam.clamp_min(0) / n
    r = ys.double() @ V  # the residual along each eigenvector (its sign does not matter)
    u = torch.zeros_like(r)
    out: list[list[float]] = [[] for _ in range(ys.shape[0])]
    live = list(range(ys.shape[0]))
    for k in range(steps + 1):
        loss = 0.5 * (r * r).sum(dim=1) / n
        keep = []
        for i, v in enumerate(loss.tolist()):
            out[live[i]].append(v)
            if k < steps and (stop_below is None or v >= stop_below):
                keep.append(i)
        if not keep:
            break
        if len(keep) < len(live):
            idx = torch.tensor(keep)
            r, u, live = r[idx], u[idx], [live[i] for i in keep]
        u = momentum * u + rate * r
        r = r - lr * u
    return out


def corrupted_fit(ctx: Context, fraction: float) -> dict[str, Any]:
    """A net fitted to labels of which ``fraction`` were re-drawn at random
    (:func:`~ntkit.lab.corrupted.corrupted_labels`; memoized in ``ctx.cache``, trained by
    :func:`train_conditions` unless it already was).

    Returns ``{"labels", "losses", "steps_to_fit", "final_loss", "test_error", "test_loss",
    "learning_rate"}`` (test error and loss on the clean test labels).
    """
    train_conditions(ctx, fractions=[fraction])
    return ctx.cache[("corrupted_fit", ctx.model.name, float(fraction))]


def variant_fit(ctx: Context, kind: str) -> dict[str, Any]:
    """A net fitted to the true labels on inputs randomized as in Zhang et al. 2017
    (:meth:`~ntkit.lab.dataset.LabData.variant`), same settings as :func:`corrupted_fit`.

    Returns ``{"losses", "steps_to_fit", "final_loss", "learning_rate"}``.
    """
    train_conditions(ctx, variants=[kind])
    return ctx.cache[("variant_fit", ctx.model.name, kind)]
