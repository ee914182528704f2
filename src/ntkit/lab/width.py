"""Width: the empirical NTK converges to the analytic one as the width grows.

At initialization the empirical NTK ``k(x, x') = <∇_w f(w0, x), ∇_w f(w0, x')>`` of a
finite network is random; as every hidden width ``m → ∞`` it converges to a deterministic
kernel (Jacot et al. 2018, "Neural Tangent Kernel: convergence and generalization in neural
networks"). For the lecture's two-layer net it is an average of ``m`` i.i.d. terms, so the
relative error ``‖K_m − K_∞‖_F / ‖K_∞‖_F`` falls like ``m^{-1/2}`` (slope ``−1/2`` on a
log-log plot); for deeper nets the same rate holds at fixed depth.

Two nets on the lab's training inputs:

- the lecture's ``h(x) = (1/√m) Σ a_i relu(b_iᵀx)`` against :func:`ntkit.theory.two_layer_ntk`
  (finite kernel by :func:`ntkit.theory.two_layer_finite_ntk`);
- ``nk.mlp(3, m, "relu", W_std=√2, b_std=0.1)`` (NTK parameterization), its
  ``arch.build`` network's empirical NTK against ``arch.kernel(x, get="ntk")``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..empirical import empirical_ntk
from ..infinite import mlp
from ..theory import two_layer_finite_ntk, two_layer_ntk
from . import readings as R
from .context import Context
from .numbers import fmt, loglog_slope, r, rel, rl
from .results import ExperimentResult, LabFigure, SummaryRow, new_figure
from .training import lecture_net

TITLE = "Width: the empirical NTK converges to its infinite-width limit"
MIN_TRAIN = 10
MIN_TEST = 0
#: Slopes within this range count as the ``−1/2`` rate in the readings.
SLOPE_RANGE = R.SLOPE_BAND


def _deep_arch(width: int):
    return mlp(3, width, "relu", W_std=math.sqrt(2.0), b_std=0.1)


def _sweep(ctx: Context, label: str, widths, exact, finite) -> dict:
    s = ctx.sizes
    means, stds = [], []
    desc = f"{label} net, {len(widths)} widths × {s.width_seeds} seeds"
    with ctx.bar(len(widths) * s.width_seeds, desc) as bar:
        for m in widths:
            errs = []
            for k in range(s.width_seeds):
                errs.append(rel(finite(m, ctx.seed_for("width", label, m, k)), exact))
                bar.update(1)
            means.append(float(np.mean(errs)))
            stds.append(float(np.std(errs)))
    return {
        "widths": [int(m) for m in widths],
        "relative_error": rl(means),
        "relative_error_std": rl(stds),
        "slope": r(loglog_slope(widths, means)),
    }


def run(ctx: Context) -> ExperimentResult:
    """Relative Frobenius error of the empirical NTK against width, for two nets."""
    s, data = ctx.sizes, ctx.data
    x = data.x_train[: s.width_points]
    d = data.d

    exact2 = two_layer_ntk(x)

    def finite2(m: int, seed: int) -> torch.Tensor:
        net = lecture_net(d, m, seed, ctx.device)
        return two_layer_finite_ntk(x, a=net.a.detach(), B=net.B.detach())

    two = _sweep(ctx, "two-layer", s.width_two_layer, exact2, finite2)

    exact3 = _deep_arch(s.width_deep[0]).kernel(x, get="ntk")

    def finite3(m: int, seed: int) -> torch.Tensor:
        net = _deep_arch(m).build((d,), seed=seed).to(ctx.device)
        return empirical_ntk(net, x, output="trace")

    deep = _sweep(ctx, "depth-3", s.width_deep, exact3, finite3)

    metrics = {
        "n_points": int(x.shape[0]),
        "seeds": s.width_seeds,
        "two_layer": two,
        "depth3": deep,
        "slope": two["slope"],
        "expected_slope": -0.5,
    }
    claims = [
        R.slope_band(two["slope"], "the two-layer net's error against width"),
        R.slope_band(deep["slope"], "the depth-3 net's error against width"),
        R.falls(two["relative_error"], two["widths"], "the two-layer net's error"),
        R.falls(deep["relative_error"], deep["widths"], "the depth-3 net's error", key=False),
    ]
    metrics["claims"] = [c.as_dict() for c in claims]
    return ExperimentResult(
        name="width",
        title=TITLE,
        intro=(
            "At initialization the empirical NTK of a finite network is random; as the width m "
            "grows it converges to a deterministic kernel (Jacot et al. 2018), with fluctuations "
            "of order 1/√m. Each point is the relative Frobenius error ‖K_m − K_∞‖/‖K_∞‖ on "
            f"{x.shape[0]} training inputs, averaged over {s.width_seeds} random initializations."
        ),
        metrics=metrics,
        figures=[_figure(metrics, claims)],
        claims=claims,
        summary=[
            SummaryRow("slope, two-layer ReLU (lecture)", fmt(two["slope"]), "-0.5"),
            SummaryRow("slope, depth-3 ReLU", fmt(deep["slope"]), "-0.5"),
            SummaryRow(
                f"error at m={two['widths'][-1]}, two-layer", fmt(two["relative_error"][-1]), "small"
            ),
        ],
    )


def _figure(m: dict, claims: list) -> LabFigure:
    fig, ax = new_figure()
    for key, label, color in (("two_layer", "two-layer ReLU (lecture)", "C0"),
                              ("depth3", "depth-3 ReLU, NTK param.", "C1")):
        series = m[key]
        w = np.asarray(series["widths"], float)
        e = np.asarray(series["relative_error"], float)
        ax.errorbar(w, e, yerr=series["relative_error_std"], fmt="o", color=color, capsize=3,
                    label=f"{label}: slope {series['slope']:.2f}")
        fit = np.polyfit(np.log(w), np.log(e), 1)
        ax.plot(w, np.exp(np.polyval(fit, np.log(w))), "--", color=color, lw=1)
    w0 = np.asarray(m["two_layer"]["widths"], float)
    ref = m["two_layer"]["relative_error"][0] * (w0 / w0[0]) ** -0.5
    ax.plot(w0, ref, ":", color="gray", label="slope −1/2 (theory)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hidden width m (units per layer)")
    ax.set_ylabel("relative error ‖K_m − K_∞‖_F / ‖K_∞‖_F")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    reading = (
        f"Relative error of the empirical NTK on {m['n_points']} inputs, mean and standard deviation "
        f"over {m['seeds']} initializations; dashed: least-squares fits, dotted: slope −1/2. "
        + R.paragraph(claims)
    )
    return LabFigure("width_convergence", "Empirical vs analytic NTK against width", fig, reading)
