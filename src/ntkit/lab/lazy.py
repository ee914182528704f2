"""Lazy training: wide nets move their weights little and track their linearization.

Lee et al. 2019 ("Wide neural networks of any depth evolve as linear models under gradient
descent") and Jacot et al. 2018: trained by gradient descent, a wide network stays close to
its first-order Taylor expansion around the initialization ``w0``; the relative weight
change ``‖w − w0‖/‖w0‖`` and the relative kernel change ``‖K_t − K_0‖/‖K_0‖`` vanish like
``m^{-1/2}``, and the network's outputs approach the closed-form prediction of the
linearized model ``f_t(x) = f_0(x) + k(x, X) H⁻¹ (I − (I − ηH/n)^t)(y − f_0(X))``
(:func:`ntkit.predict.gradient_descent_mse`).

The lecture's two-layer ReLU net is trained at several widths by full-batch gradient descent
(no momentum; :func:`ntkit.lab.batched.train_two_layer`, the update of ``torch.optim.SGD``
with closed-form gradients, in float32) on ``(1/2n)‖f − y‖²`` with ``η = n/λ_max(H_∞)``, half the
stability limit. At log-spaced steps we record the weight change, the kernel change (the
finite NTK by :func:`ntkit.theory.two_layer_finite_ntk`) and the RMS gap on the test points
between the net and the prediction from its own initial kernel ``K_0``. At the end we
compare test errors of the nets with the infinite-width NTK predictor after the same number
of steps and at ``t = ∞`` (kernel regression).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..predict import gradient_descent_mse, kernel_regression
from ..theory import two_layer_finite_ntk, two_layer_ntk
from . import readings as R
from .batched import train_two_layer
from .context import Context
from .numbers import checkpoints, error_rate, fmt, loglog_slope, r, rl
from .results import ExperimentResult, LabFigure, SummaryRow, new_figure
from .training import flat_params, lecture_learning_rate, lecture_net

TITLE = "Lazy training: wide nets track their linearization"
MIN_TRAIN = 20
MIN_TEST = 10


#: The dtype in which the nets of ``lazy`` train (their weights, kernels and outputs are
#: measured in float64; float32 rounding is orders below the smallest change measured).
LAZY_DTYPE = torch.float32


def _outputs(a: torch.Tensor, B: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(1/√m) relu(x Bᵀ) a``: the lecture's net with weights ``a``, ``B`` (float64)."""
    return torch.relu(x @ B.T) @ a / math.sqrt(a.numel())


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
    norm_w0 = torch.linalg.norm(w0)
    # The kernel's change is measured in the training dtype, K_t against K_0 computed the same way.
    x_low = x.to(LAZY_DTYPE)
    K0_low = two_layer_finite_ntk(x_low, a=a0.to(LAZY_DTYPE), B=B0.to(LAZY_DTYPE)).double()

    def on_step(k: int, a: torch.Tensor, B: torch.Tensor) -> None:
        if k not in wanted:
            return
        Kt = two_layer_finite_ntk(x_low, a=a[0], B=B[0]).double()
        rec["kernel_change"].append(float(torch.linalg.norm(Kt - K0_low) / torch.linalg.norm(K0_low)))
        a, B = a[0].double(), B[0].double()
        dw = torch.sqrt(torch.sum((a - a0) ** 2) + torch.sum((B - B0) ** 2))
        rec["weight_change"].append(float(dw / norm_w0))
        gap = _outputs(a, B, xt) - lin_test[wanted[k]]
        rec["output_gap"].append(float(torch.sqrt((gap**2).mean())))

    res = train_two_layer(x, y.reshape(1, -1), a0.to(LAZY_DTYPE), B0.to(LAZY_DTYPE), lr=lr,
                          steps=s.lazy_steps, on_step=on_step, bar=bar)
    losses = res.losses[0]
    a_end, B_end = res.params[0]["a"].double(), res.params[0]["B"].double()
    # t = ∞ of the linearized model: ‖w_∞ − w_0‖ = sqrt(r_0ᵀ K_0⁻¹ r_0) (identity 6 of DESIGN).
    r0 = (y - f0).reshape(-1)
    limit = float(torch.sqrt(r0 @ torch.linalg.solve(K0, r0)) / torch.linalg.norm(w0))
    out_test = _outputs(a_end, B_end, xt)
    gap_inf = float(torch.sqrt(((out_test - inf_test) ** 2).mean()))
    return {
        "width": m,
        "weight_change": rl(rec["weight_change"]),
        "kernel_change": rl(rec["kernel_change"]),
        "output_gap": rl(rec["output_gap"]),
        "output_gap_infinite": r(gap_inf),
        "weight_change_limit": r(limit),
        "train_loss": r(losses[-1]),
        "test_error": r(error_rate(out_test, data.y_test)),
        "test_loss": r(float(0.5 * ((out_test - data.y_test) ** 2).mean())),
        "test_loss_kernel": r(float(0.5 * ((inf_test.reshape(-1) - data.y_test) ** 2).mean())),
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
    for m in s.lazy_widths:
        with ctx.bar(s.lazy_steps, f"training the width-{m} net") as bar:
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
        "test_loss_net": [p["test_loss"] for p in per_width],
        "test_loss_kernel_same_init": [p["test_loss_kernel"] for p in per_width],
        "test_loss_kernel_at_steps": r(float(0.5 * ((kernel_T - data.y_test) ** 2).mean())),
        "test_loss_kernel_regression": r(float(0.5 * ((kernel_inf - data.y_test) ** 2).mean())),
        "train_loss_net": [p["train_loss"] for p in per_width],
        "weight_change_limit": [p["weight_change_limit"] for p in per_width],
    }
    claims_t = _claims_training(metrics)
    claims_w = _claims_width(metrics)
    claims_e = _claims_error(metrics)
    metrics["claims"] = [c.as_dict() for c in claims_t + claims_w + claims_e]
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
            "test loss: widest net vs NTK predictor",
            f"{fmt(metrics['test_loss_net'][-1])} vs {fmt(metrics['test_loss_kernel_same_init'][-1])}",
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
        figures=[_figure_training(metrics, claims_t), _figure_width(metrics, claims_w),
                 _figure_error(metrics, claims_e)],
        summary=summary,
        claims=claims_t + claims_w + claims_e,
    )


LEE = "Lee et al. 2019"
NAMES = {"weight_change": "the relative weight change", "kernel_change": "the relative kernel change",
         "output_gap": "the RMS gap to the linearization"}


def _claims_training(m: dict) -> list[R.Claim]:
    widest = m["per_width"][-1]
    claims = [R.settles(widest[k], f"{NAMES[k]} of the width-{widest['width']} net", key=False)
              for k in NAMES]
    parts = []
    for p in m["per_width"]:
        lim = p["weight_change_limit"]
        if lim:
            parts.append(f"{p['weight_change'][-1] / lim:.0%} at m={p['width']}")
    if parts:
        claims.append(R.note(
            f"After {m['steps']} steps the weight change has covered " + ", ".join(parts) + " of its "
            "t = ∞ value sqrt(r₀ᵀK₀⁻¹r₀)/‖w₀‖ (dashed), the distance the linearized model travels to "
            "interpolate; the slow directions of the kernel (small eigenvalues) are what remains."))
    return claims


def _claims_width(m: dict) -> list[R.Claim]:
    f, sl, w = m["final"], m["slopes"], m["widths"]
    claims = [R.falls(f[k], w, f"{NAMES[k]} after {m['steps']} steps") for k in NAMES]
    claims.append(R.slope_band(sl["weight_change"], "the relative weight change against width",
                               paper=f"the m^(−1/2) rate ({LEE})"))
    claims.append(R.note(
        f"The kernel change falls with slope {fmt(sl['kernel_change'])} and the gap with slope "
        f"{fmt(sl['output_gap'])}; theory bounds both by O(m^(−1/2)) ({LEE}), so steeper slopes agree "
        "with it. The gap to the infinite-width NTK predictor (same initial outputs) goes from "
        f"{fmt(m['final_output_gap_infinite'][0])} to {fmt(m['final_output_gap_infinite'][-1])}: it also "
        "contains the fluctuation of the finite kernel around K_∞."))
    return claims


def _claims_error(m: dict) -> list[R.Claim]:
    net, ker = m["test_loss_net"][-1], m["test_loss_kernel_same_init"][-1]
    gap = abs(net - ker) / max(ker, 1e-300)
    what = (f"the relative difference of the widest net's test loss and the infinite-width NTK "
            f"predictor's (same initial outputs) after {m['steps']} steps ({fmt(net)} vs {fmt(ker)})")
    claims = [R.below(gap, 0.25, what, paper=LEE)]
    claims.append(R.note(
        "Test errors (sign against ±1): "
        + ", ".join(f"{fmt(e)} at m={wd}" for wd, e in zip(m["widths"], m["test_error_net"]))
        + f"; NTK predictor after {m['steps']} steps {fmt(m['test_error_kernel_at_steps'])}, kernel "
        f"regression (t = ∞) {fmt(m['test_error_kernel_regression'])}."))
    return claims


def _figure_training(m: dict, claims: list[R.Claim]) -> LabFigure:
    fig, axes = new_figure(3, width=4.2, height=3.8)
    steps = np.asarray(m["checkpoints"], float)
    labels = {"weight_change": "‖w_t − w_0‖ / ‖w_0‖", "kernel_change": "‖K_t − K_0‖_F / ‖K_0‖_F",
              "output_gap": "RMS(f_net − f_lin) on test points"}
    for ax, key in zip(axes, labels):
        for i, p in enumerate(m["per_width"]):
            vals = np.asarray(p[key], float)
            keep = vals > 0
            ax.plot(steps[keep] + 1, vals[keep], "o-", ms=3, color=f"C{i}", label=f"m={p['width']}")
            if key == "weight_change" and p["weight_change_limit"]:
                ax.axhline(p["weight_change_limit"], color=f"C{i}", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gradient-descent step + 1")
        ax.set_ylabel(labels[key] + " (relative)" if key != "output_gap" else labels[key] + " (label units)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    axes[0].set_title("dashed: t = ∞ value", fontsize=9)
    reading = (f"Over {m['steps']} steps of gradient descent (η = {fmt(m['learning_rate'])}), at widths "
               f"{', '.join(map(str, m['widths']))}. " + R.paragraph(claims))
    return LabFigure("lazy_training", "Distance from the linear regime during training", fig, reading)


def _figure_width(m: dict, claims: list[R.Claim]) -> LabFigure:
    fig, ax = new_figure()
    w = np.asarray(m["widths"], float)
    names = {"weight_change": "rel. weight change", "kernel_change": "rel. kernel change",
             "output_gap": "RMS gap to linearization (K_0)"}
    for i, key in enumerate(names):
        ax.plot(w, m["final"][key], "o-", color=f"C{i}",
                label=f"{names[key]}: fitted slope {m['slopes'][key]:.2f}")
        fit = np.polyfit(np.log(w), np.log(np.asarray(m["final"][key], float)), 1)
        ax.plot(w, np.exp(np.polyval(fit, np.log(w))), "-", color=f"C{i}", lw=0.6, alpha=0.6)
    ax.plot(w, m["final_output_gap_infinite"], "s--", color="C3", label="RMS gap to NTK predictor (K_∞)")
    ref = m["final"]["weight_change"][0] * (w / w[0]) ** -0.5
    ax.plot(w, ref, ":", color="gray", label="slope −1/2 (theory)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hidden width m (units)")
    ax.set_ylabel(f"value after {m['steps']} steps (relative / label units)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    reading = f"After {m['steps']} steps, against width. " + R.paragraph(claims)
    return LabFigure("lazy_width", "Distance from the linear regime against width", fig, reading)


def _figure_error(m: dict, claims: list[R.Claim]) -> LabFigure:
    fig, ax = new_figure()
    w = np.asarray(m["widths"], float)
    ax.plot(w, m["test_loss_net"], "o-", label="trained net")
    ax.plot(w, m["test_loss_kernel_same_init"], "s--", color="C1",
            label=f"K_∞ predictor after {m['steps']} steps, same f_0")
    ax.axhline(m["test_loss_kernel_at_steps"], color="C2", ls=":",
               label=f"K_∞ predictor after {m['steps']} steps, f_0 = 0")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hidden width m (units)")
    ax.set_ylabel("test loss (1/2n)‖f − y‖² (labels ±1)")
    vals = [*m["test_loss_net"], *m["test_loss_kernel_same_init"], m["test_loss_kernel_at_steps"]]
    vals = [v for v in vals if v and v > 0]
    ax.set_ylim(min(vals) / 2, max(vals) * 2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    reading = ("Test loss of the trained nets against width, with the infinite-width NTK predictor "
               "started from each net's initial outputs f_0 and from f_0 = 0 (the loss, unlike the "
               "test error, stays visible when both classify almost every test point right). "
               + R.paragraph(claims))
    if not math.isfinite(m["test_loss_net"][-1] or float("nan")):  # pragma: no cover - defensive
        reading += " (The widest net diverged.)"
    return LabFigure("lazy_test_error", "Test loss: nets against the kernel predictor", fig, reading)
