"""Spectrum: the kernel's eigenvalues decide what gradient descent learns, and how fast.

Arora, Du, Hu, Li & Wang 2019 (Thm 4.1): in the lazy regime the training residual of
gradient descent decays independently along each eigenvector ``v_i`` of ``H``,
``‖y − f_k‖² = Σ_i (1 − ηλ_i/n)^{2k} (v_iᵀ(y − f_0))²`` (:func:`ntkit.predict.loss_curve`).
True labels concentrate on the top eigenvectors and are learned fast; random labels spread
over the whole spectrum and are learned slowly.

On the lab's training set this experiment shows the eigenvalues of the lecture's two-layer
ReLU NTK ``H`` (:func:`ntkit.theory.two_layer_ntk`), the share of ``‖y‖²`` captured by the top
eigenvectors for true and for random labels, and the loss curve predicted from the spectrum
against the one measured on the real net trained by full-batch gradient descent
(no momentum; the nets for true and random labels trained together by
:func:`ntkit.lab.batched.train_two_layer`, in float32) with ``η = n/λ_max(H)``, and the
closed-form curve of its linearization (Lee et al. 2019) from the net's own initial kernel
``K_0`` — what training :func:`ntkit.linearize.linearize` gives exactly (tested in
``tests/test_linearize*.py``), at no training cost.
As in ``random-labels``, the nets' initial outputs are subtracted (``f = h − h_0``: targets
``y + h_0(X)``), so that the initial residual is ``y`` itself and its projections on the
eigenvectors are the ones plotted.
"""

from __future__ import annotations

import numpy as np
import torch

from ..predict import loss_curve
from ..theory import two_layer_finite_ntk, two_layer_ntk
from . import readings as R
from .batched import train_two_layer
from .context import Context
from .corrupted import corrupted_labels
from .numbers import fmt, r, rl
from .results import ExperimentResult, LabFigure, SummaryRow, new_figure
from .training import lecture_learning_rate, lecture_net

TITLE = "Spectrum: the NTK's eigenvalues predict the training curve (Arora et al. 2019)"
MIN_TRAIN = 20
MIN_TEST = 0
#: Fractions of the spectrum at which the captured share of ‖y‖² is reported.
TOP_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)
#: The dtype in which the nets of ``spectrum`` train (the loss curves compared differ by
#: percents; float32 rounding is far below).
SPECTRUM_DTYPE = torch.float32


def _curves(ctx: Context, H: torch.Tensor, ys: dict[str, torch.Tensor], lr: float) -> dict:
    """Loss curves for each label vector in ``ys``: predicted from ``H``, from the net's own
    ``K_0`` (closed form), and measured on the nets (one initialization, trained together)."""
    data, s = ctx.data, ctx.sizes
    x = data.x_train
    steps = list(range(s.spectrum_steps + 1))
    net = lecture_net(data.d, s.spectrum_width, ctx.seed_for("spectrum-net"), ctx.device)
    with torch.no_grad():
        f0 = net(x)
    K0 = two_layer_finite_ntk(x, a=net.a.detach(), B=net.B.detach())
    # Centred outputs f = h − h_0: train on y + h_0(X), so the initial residual is y.
    targets = torch.stack([y + f0 for y in ys.values()]).to(SPECTRUM_DTYPE)
    with ctx.bar(s.spectrum_steps, f"training {len(ys)} nets ({', '.join(ys)} labels)") as bar:
        res = train_two_layer(x, targets, net.a.detach().to(SPECTRUM_DTYPE),
                              net.B.detach().to(SPECTRUM_DTYPE), lr=lr, steps=s.spectrum_steps, bar=bar)
    out = {}
    for (key, y), real in zip(ys.items(), res.losses):
        predicted = loss_curve(H, y, steps, learning_rate=lr).loss
        linear = loss_curve(K0, y, steps, learning_rate=lr).loss.tolist()
        pred = np.asarray(predicted.tolist())
        lin_a, real_a = np.asarray(linear), np.asarray(real)
        scale = pred[0]
        out[key] = {
            "predicted": rl(predicted, 6),
            "predicted_from_K0": rl(linear, 6),
            "net": rl(real, 6),
            "max_gap_net_vs_predicted": r(np.max(np.abs(real_a - pred)) / scale),
            "max_gap_K0_vs_predicted": r(np.max(np.abs(lin_a - pred)) / scale),
            "max_gap_net_vs_K0": r(np.max(np.abs(real_a - lin_a)) / scale),
        }
    return out


def run(ctx: Context) -> ExperimentResult:
    """Eigenvalues, label projections, and predicted vs measured loss curves."""
    data, s = ctx.data, ctx.sizes
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    y_random = corrupted_labels(ctx, 1.0)
    H = two_layer_ntk(x)
    lr = ctx.cache.setdefault(("lr", "train"), lecture_learning_rate(x))
    lam, V = torch.linalg.eigh(H)
    lam, V = lam.flip(0).clamp_min(0), V.flip(1)
    share = {}
    cumulative = {}
    for key, yy in (("true", y), ("random", y_random)):
        p = (V.T @ yy) ** 2 / (yy @ yy)
        cumulative[key] = torch.cumsum(p, 0)
        share[key] = {
            f"top_{f:g}": r(float(cumulative[key][max(1, round(f * n)) - 1])) for f in TOP_FRACTIONS
        }
    curves = _curves(ctx, H, {"true": y, "random": y_random}, lr)
    metrics = {
        "n": int(n),
        "width": s.spectrum_width,
        "learning_rate": r(lr),
        "steps": s.spectrum_steps,
        "eigenvalues": rl(lam, 6),
        "cumulative_share": {k: rl(v, 6) for k, v in cumulative.items()},
        "share_top": share,
        "curves": curves,
    }
    top10 = share["true"]["top_0.1"], share["random"]["top_0.1"]
    claims_p = [R.larger(top10[0], top10[1],
                         "the share of ‖y‖² in the top 10% of eigenvectors for true labels",
                         "that for random labels", paper="Arora et al. 2019 (Fig. 2)")]
    claims_c = [
        R.below(curves[k]["max_gap_net_vs_predicted"], 0.1,
                f"the largest gap between the net's loss curve and the one predicted from the spectrum "
                f"({k} labels, relative to the initial loss)", paper="Arora et al. 2019 (Thm 4.1)")
        for k in ("true", "random")
    ]
    claims_c.append(R.larger(curves["random"]["net"][-1], curves["true"]["net"][-1],
                             f"the net's final loss on random labels after {s.spectrum_steps} steps",
                             "that on true labels", paper="Arora et al. 2019 (Fig. 1a)"))
    claims = claims_p + claims_c
    metrics["claims"] = [c.as_dict() for c in claims]
    summary = [
        SummaryRow("‖y‖² share in top 10% eigvecs: true / random",
                   f"{fmt(top10[0])} / {fmt(top10[1])}", "true ≫ random"),
        SummaryRow("max |net − predicted| loss / initial loss (true)",
                   fmt(curves["true"]["max_gap_net_vs_predicted"]), "small"),
        SummaryRow("final loss true / random labels (net)",
                   f"{fmt(curves['true']['net'][-1])} / {fmt(curves['random']['net'][-1])}",
                   "true lower"),
    ]
    return ExperimentResult(
        name="spectrum",
        title=TITLE,
        intro=(
            "Gradient descent on the squared loss learns the components of the labels along the "
            "kernel's eigenvectors at rates set by the eigenvalues (Arora et al. 2019, Thm 4.1). "
            f"The lecture's two-layer ReLU NTK H on the {n} training inputs; nets of width "
            f"{s.spectrum_width} trained for "
            f"{s.spectrum_steps} steps of gradient descent with η = {lr:.3g}."
        ),
        metrics=metrics,
        figures=[_figure_eigen(metrics), _figure_projections(metrics, claims_p),
                 _figure_curves(metrics, claims_c)],
        summary=summary,
        claims=claims,
    )


def _factor(x: float) -> str:
    return f"{fmt(x, 4)}" if abs(x) >= 1e-4 else "about 0 (fitted in one step)"


def _figure_eigen(m: dict) -> LabFigure:
    fig, ax = new_figure()
    lam = np.asarray(m["eigenvalues"], float)
    idx = np.arange(1, lam.size + 1)
    keep = lam > 0
    ax.plot(idx[keep], lam[keep], ".-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index i (largest first)")
    ax.set_ylabel("eigenvalue λ_i of H (kernel units)")
    ax.grid(True, which="both", alpha=0.3)
    n = lam.size
    eta = m["learning_rate"]
    reading = (
        f"The {n} eigenvalues of the two-layer ReLU NTK span {fmt(lam[0])} down to {fmt(lam[-1])} "
        f"(condition number {fmt(lam[0] / lam[-1]) if lam[-1] > 0 else 'infinite'}); the top one "
        f"is {fmt(lam[0] / lam.sum())} of the trace, and the median eigenvalue is "
        f"{fmt(float(np.median(lam)))}. With η = {fmt(m['learning_rate'])}, the residual along "
        f"eigenvector i shrinks by the factor 1 − ηλ_i/n per step: {_factor(1 - eta * lam[0] / n)} "
        f"for the top one, {_factor(1 - eta * lam[-1] / n)} for the bottom one."
    )
    return LabFigure("spectrum_eigenvalues", "Eigenvalues of the NTK on the training set", fig, reading)


def _figure_projections(m: dict, claims: list) -> LabFigure:
    fig, ax = new_figure()
    for key, color in (("true", "C0"), ("random", "C3")):
        c = np.asarray(m["cumulative_share"][key], float)
        ax.plot(np.arange(1, c.size + 1), c, color=color, label=f"{key} labels")
    k = np.arange(1, m["n"] + 1)
    ax.plot(k, k / m["n"], ":", color="gray", label="uniform spread (k/n)")
    ax.set_xscale("log")
    ax.set_xlabel("number k of top eigenvectors")
    ax.set_ylabel("share of ‖y‖² in their span (fraction)")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    st, sr = m["share_top"]["true"], m["share_top"]["random"]
    reading = (
        "Share of the label vector's squared norm that lies in the span of the top eigenvectors: "
        + "; ".join(
            f"top {f:.0%}: {fmt(st[f'top_{f:g}'])} for true labels, {fmt(sr[f'top_{f:g}'])} for random"
            for f in TOP_FRACTIONS
        )
        + ". "
        + R.paragraph(claims)
    )
    return LabFigure("spectrum_projections", "Projections of true and random labels on the eigenvectors",
                     fig, reading)


def _figure_curves(m: dict, claims: list) -> LabFigure:
    fig, axes = new_figure(2, width=4.8, height=3.8)
    values = []
    for ax, key in zip(axes, ("true", "random")):
        c = m["curves"][key]
        steps = np.arange(len(c["predicted"]))
        ax.plot(steps, c["predicted"], "-", color="k", lw=2.5, alpha=0.4,
                label="predicted from spectrum of H")
        ax.plot(steps, c["predicted_from_K0"], "--", color="C0", label="linearized net (closed form, K_0)")
        ax.plot(steps, c["net"], ":", color="C3", lw=2, label="net (measured)")
        ax.set_yscale("log")
        ax.set_xlabel("gradient-descent step")
        ax.set_title(f"{key} labels", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        for series in (c["predicted"], c["predicted_from_K0"], c["net"]):
            values += [v for v in series if v is not None and v > 0]
    for ax in axes:  # one y range, so that the panels compare
        ax.set_ylim(min(values) / 2, max(values) * 2)
        ax.set_ylabel("training loss (1/2n)‖f − y‖² (labels ±1)")
    axes[0].legend(fontsize=7, loc="lower left")
    t, rd = m["curves"]["true"], m["curves"]["random"]
    reading = (
        f"Training loss over {m['steps']} steps (same y range in both panels). True labels: predicted "
        f"from the spectrum of H {fmt(t['predicted'][0])} → {fmt(t['predicted'][-1])}, net → "
        f"{fmt(t['net'][-1])}; random labels: predicted → {fmt(rd['predicted'][-1])}, net → "
        f"{fmt(rd['net'][-1])}. " + R.paragraph(claims)
    )
    return LabFigure("spectrum_loss_curves", "Loss curves: predicted from the spectrum vs measured",
                     fig, reading)
