"""Lazy training: wide nets move their weights little and track their linearization.

Lee et al. 2019 ("Wide neural networks of any depth evolve as linear models under gradient
descent") and Jacot et al. 2018: trained by gradient descent, a wide network stays close to
its first-order Taylor expansion around the initialization ``w0``; the relative weight
change ``‖w − w0‖/‖w0‖`` and the relative kernel change ``‖K_t − K_0‖/‖K_0‖`` vanish like
``m^{-1/2}``, and the network's outputs approach the closed-form prediction of the
linearized model ``f_t(x) = f_0(x) + k(x, X) H⁻¹ (I − (I − ηH/n)^t)(y − f_0(X))``
(:func:`ntkit.predict.gradient_descent_mse`).

The lecture's two-layer ReLU net is trained at several widths by full-batch gradient descent
(``torch.optim.SGD``, no momentum) on ``(1/2n)‖f − y‖²`` with ``η = n/λ_max(H_∞)``, half the
stability limit. At log-spaced steps we record the weight change, the kernel change (the
finite NTK by :func:`ntkit.theory.two_layer_finite_ntk`) and the RMS gap on the test points
between the net and the prediction from its own initial kernel ``K_0``. At the end we
compare test errors of the nets with the infinite-width NTK predictor after the same number
of steps and at ``t = ∞`` (kernel regression).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from ..predict import gradient_descent_mse, kernel_regression
from ..theory import two_layer_finite_ntk, two_layer_ntk
from .context import Context
from .numbers import checkpoints, error_rate, fmt, loglog_slope, r, rl
from .results import ExperimentResult, LabFigure, SummaryRow, new_figure
from .training import flat_params, lecture_learning_rate, lecture_net, train_mse

TITLE = "Lazy training: wide nets track their linearization"
MIN_TRAIN = 20
MIN_TEST = 10


def _one_width(ctx: Context, m: int, lr: float, marks: list[int], bar) -> dict:
    data, s = ctx.data, ctx.sizes
    x, y, xt = data.x_train, data.y_train, data.x_test
    net = lecture_net(data.d, m, ctx.seed_for("lazy", m), ctx.device)
    w0 = flat_params(net)
    with torch.no_grad():
        f0, ft0 = net(x), net(xt)
    a0, B0 = net.a.detach().clone(), net.B.detach().clone()
    K0 = two_layer_finite_ntk(x, a=a0, B=B0)
    K0_test = two_layer_finite_ntk(xt, x, a=a0, B=B0)
    pred = gradient_descent_mse(K0, y, learning_rate=lr)
    lin_test = pred.test(marks, K0_test, fx_train_0=f0, fx_test_0=ft0)  # (T, n_test)
    K_inf = ctx.cache["lazy_kinf"]
    K_inf_test = ctx.cache["lazy_kinf_test"]
    inf_test = gradient_descent_mse(K_inf, y, learning_rate=lr).test(
        s.lazy_steps, K_inf_test, fx_train_0=f0, fx_test_0=ft0
    )
    rec = {"weight_change": [], "kernel_change": [], "output_gap": []}
    wanted = {k: i for i, k in enumerate(marks)}

    def on_step(k: int) -> None:
        if k not in wanted:
            return
        rec["weight_change"].append(float(torch.linalg.norm(flat_params(net) - w0) / torch.linalg.norm(w0)))
        Kt = two_layer_finite_ntk(x, a=net.a, B=net.B)
        rec["kernel_change"].append(float(torch.linalg.norm(Kt - K0) / torch.linalg.norm(K0)))
        gap = net(xt) - lin_test[wanted[k]]
        rec["output_gap"].append(float(torch.sqrt((gap**2).mean())))

    losses = train_mse(net, x, y, lr=lr, steps=s.lazy_steps, on_step=on_step, bar=bar)
    with torch.no_grad():
        out_test = net(xt)
    gap_inf = float(torch.sqrt(((out_test - inf_test) ** 2).mean()))
    return {
        "width": m,
        "weight_change": rl(rec["weight_change"]),
        "kernel_change": rl(rec["kernel_change"]),
        "output_gap": rl(rec["output_gap"]),
        "output_gap_infinite": r(gap_inf),
        "train_loss": r(losses[-1]),
        "test_error": r(error_rate(out_test, data.y_test)),
    }


def run(ctx: Context) -> ExperimentResult:
    """Weight change, kernel change and output gap against training steps and width."""
    data, s = ctx.data, ctx.sizes
    x, y, xt = data.x_train, data.y_train, data.x_test
    lr = ctx.cache.setdefault(("lr", "train"), lecture_learning_rate(x))
    marks = checkpoints(s.lazy_steps, s.lazy_checkpoints)
    K_inf = ctx.cache["lazy_kinf"] = two_layer_ntk(x)
    K_inf_test = ctx.cache["lazy_kinf_test"] = two_layer_ntk(xt, x)
    per_width = []
    total = len(s.lazy_widths) * s.lazy_steps
    with ctx.bar(total, "lazy: training nets") as bar:
        for m in s.lazy_widths:
            per_width.append(_one_width(ctx, m, lr, marks, bar))
    widths = [p["width"] for p in per_width]
    final = {key: [p[key][-1] for p in per_width] for key in ("weight_change", "kernel_change", "output_gap")}
    kernel_T = gradient_descent_mse(K_inf, y, learning_rate=lr).test(s.lazy_steps, K_inf_test)
    kernel_inf = kernel_regression(K_inf, y, K_inf_test)
    metrics = {
        "learning_rate": r(lr),
        "steps": s.lazy_steps,
        "checkpoints": marks,
        "widths": widths,
        "per_width": per_width,
        "final": final,
        "final_output_gap_infinite": [p["output_gap_infinite"] for p in per_width],
        "slopes": {key: r(loglog_slope(widths, final[key])) for key in final},
        "test_error_net": [p["test_error"] for p in per_width],
        "test_error_kernel_at_steps": r(error_rate(kernel_T, data.y_test)),
        "test_error_kernel_regression": r(error_rate(kernel_inf, data.y_test)),
        "train_loss_net": [p["train_loss"] for p in per_width],
    }
    summary = [
        SummaryRow(
            f"rel. weight change, m={widths[0]} → {widths[-1]}",
            f"{fmt(final['weight_change'][0])} → {fmt(final['weight_change'][-1])}",
            "falls ~ m^-1/2",
        ),
        SummaryRow(
            f"rel. kernel change, m={widths[0]} → {widths[-1]}",
            f"{fmt(final['kernel_change'][0])} → {fmt(final['kernel_change'][-1])}",
            "falls ~ m^-1/2",
        ),
        SummaryRow(
            f"RMS gap net vs linearization, m={widths[0]} → {widths[-1]}",
            f"{fmt(final['output_gap'][0])} → {fmt(final['output_gap'][-1])}",
            "falls with m",
        ),
        SummaryRow(
            "test error: widest net vs NTK predictor",
            f"{fmt(metrics['test_error_net'][-1])} vs {fmt(metrics['test_error_kernel_at_steps'])}",
            "close",
        ),
    ]
    return ExperimentResult(
        name="lazy",
        title=TITLE,
        intro=(
            "The lecture's two-layer ReLU net is trained at widths "
            f"{', '.join(map(str, widths))} by full-batch gradient descent on the mean squared "
            f"error ({s.lazy_steps} steps, η = {lr:.3g} = n/λ_max of the infinite-width NTK) on "
            f"{x.shape[0]} training examples. In the lazy regime (Jacot et al. 2018; Lee et al. "
            "2019) the weights move little relative to their initialization, the kernel stays "
            "put, and the net follows its linearization around the initial weights."
        ),
        metrics=metrics,
        figures=[_figure_training(metrics), _figure_width(metrics), _figure_error(metrics)],
        summary=summary,
    )


def _falls(values: list[float]) -> str:
    if all(b < a for a, b in itertools.pairwise(values)):
        return "falls at every step in width"
    if values[-1] < values[0]:
        return "falls overall (not at every step in width)"
    return "does not fall"


def _figure_training(m: dict) -> LabFigure:
    fig, axes = new_figure(3, width=4.2, height=3.6)
    steps = np.asarray(m["checkpoints"], float)
    labels = {"weight_change": "‖w_t − w_0‖ / ‖w_0‖", "kernel_change": "‖K_t − K_0‖ / ‖K_0‖",
              "output_gap": "RMS(f_net − f_lin) on test"}
    for ax, key in zip(axes, labels):
        for i, p in enumerate(m["per_width"]):
            vals = np.asarray(p[key], float)
            keep = vals > 0
            ax.plot(steps[keep] + 1, vals[keep], "o-", ms=3, color=f"C{i}", label=f"m={p['width']}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step + 1")
        ax.set_title(labels[key], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    per = m["per_width"]
    reading = (
        f"Over {m['steps']} steps of gradient descent, every quantity grows from zero and then "
        "settles; the wider the net, the smaller it stays. After the last step the relative "
        f"weight change is {fmt(per[0]['weight_change'][-1])} at width {per[0]['width']} and "
        f"{fmt(per[-1]['weight_change'][-1])} at width {per[-1]['width']}; the relative kernel "
        f"change is {fmt(per[0]['kernel_change'][-1])} and {fmt(per[-1]['kernel_change'][-1])}; "
        f"the RMS gap between the net's test outputs and its linearization's closed-form "
        f"prediction is {fmt(per[0]['output_gap'][-1])} and {fmt(per[-1]['output_gap'][-1])} "
        "(labels are ±1)."
    )
    return LabFigure("lazy_training", "Distance from the linear regime during training", fig, reading)


def _figure_width(m: dict) -> LabFigure:
    fig, ax = new_figure()
    w = np.asarray(m["widths"], float)
    names = {"weight_change": "rel. weight change", "kernel_change": "rel. kernel change",
             "output_gap": "RMS gap to linearization (K_0)"}
    for i, key in enumerate(names):
        ax.plot(w, m["final"][key], "o-", color=f"C{i}",
                label=f"{names[key]}: slope {m['slopes'][key]:.2f}")
    ax.plot(w, m["final_output_gap_infinite"], "s--", color="C3", label="RMS gap to NTK predictor (K_∞)")
    ref = m["final"]["weight_change"][0] * (w / w[0]) ** -0.5
    ax.plot(w, ref, ":", color="gray", label="slope −1/2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width m")
    ax.set_title(f"after {m['steps']} steps", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    f, sl = m["final"], m["slopes"]
    reading = (
        f"After {m['steps']} steps, against width: the relative weight change {_falls(f['weight_change'])} "
        f"(log-log slope {sl['weight_change']:.2f}), the relative kernel change "
        f"{_falls(f['kernel_change'])} (slope {sl['kernel_change']:.2f}) and the RMS gap to the "
        f"linearized prediction {_falls(f['output_gap'])} (slope {sl['output_gap']:.2f}). Theory: "
        "‖w − w0‖ stays of order 1 while ‖w0‖ grows like √m, so the relative weight change "
        "falls like m^(−1/2); the kernel change and the gap are O(m^(−1/2)) (Lee et al. 2019), "
        "so slopes at or below −1/2 agree with it. The "
        "gap to the infinite-width NTK predictor (same initial outputs) goes from "
        f"{fmt(m['final_output_gap_infinite'][0])} to {fmt(m['final_output_gap_infinite'][-1])}: "
        "it also contains the fluctuation of the finite kernel around K_∞."
    )
    return LabFigure("lazy_width", "Distance from the linear regime against width", fig, reading)


def _figure_error(m: dict) -> LabFigure:
    fig, ax = new_figure()
    w = np.asarray(m["widths"], float)
    ax.plot(w, m["test_error_net"], "o-", label="trained net")
    ax.axhline(m["test_error_kernel_at_steps"], color="C1", ls="--",
               label=f"NTK predictor after {m['steps']} steps")
    ax.axhline(m["test_error_kernel_regression"], color="C2", ls=":", label="NTK regression (t = ∞)")
    ax.set_xscale("log")
    ax.set_xlabel("width m")
    ax.set_ylabel("test error")
    top = max(max(m["test_error_net"]), m["test_error_kernel_at_steps"], m["test_error_kernel_regression"])
    ax.set_ylim(0, max(0.05, 1.25 * top))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    errs = m["test_error_net"]
    reading = (
        "Test error (sign of the output against the ±1 labels) of the trained nets: "
        + ", ".join(f"{fmt(e)} at width {wd}" for wd, e in zip(m["widths"], errs))
        + f". The infinite-width NTK predictor after the same {m['steps']} steps errs on "
        f"{fmt(m['test_error_kernel_at_steps'])} of the test points and kernel regression "
        f"(t = ∞) on {fmt(m['test_error_kernel_regression'])}; the widest net differs from the "
        f"former by {fmt(abs(errs[-1] - m['test_error_kernel_at_steps']))}."
    )
    if not math.isfinite(errs[-1]):  # pragma: no cover - defensive
        reading += " (The widest net diverged.)"
    return LabFigure("lazy_test_error", "Test error: nets against the kernel predictor", fig, reading)
