"""Random labels: networks fit anything, but true labels faster (Zhang et al. 2017, Fig. 1).

Zhang, Bengio, Hardt, Recht & Vinyals 2017, "Understanding deep learning requires rethinking
generalization": the same network and optimizer that generalize on true labels also drive
the training loss to zero on random labels and on random inputs; only the time to fit and
the test error change.

Here a net of the run's architecture (``--arch``: the lecture's two-layer ReLU net, or a
small CNN on images, :mod:`ntkit.lab.models`) is trained with one recipe for every
condition (:mod:`ntkit.lab.fits`: full-batch gradient descent with heavy-ball momentum, as
Zhang et al. used SGD with momentum, on ``(1/2n)‖f − y‖²``, one learning rate) until the
loss is below ``rl_threshold``, with its initial outputs subtracted:

- (a) the loss against steps for true labels, random labels (all re-drawn), shuffled pixels
  (one permutation for all examples), random pixels (a permutation per example) and
  Gaussian inputs (each pixel drawn with its mean and standard deviation) — for tabular
  data the same transforms of the *features*; and the loss curves at every corruption
  level on one plot (Arora et al. 2019, Fig. 1a);
- (b) the steps needed to fit against the fraction of labels re-drawn at random
  (:func:`ntkit.lab.common.corrupted_labels`: nested sets; with two classes about half
  of the re-drawn labels change);
- (c) the test error on clean test labels against the same fraction.

The readings are rules (:mod:`ntkit.lab.readings`): a run that did not reach the threshold
makes every comparison it enters inconclusive; the time to fit must rise with the
corruption at all but one step and never fall to be called the trend of Fig. 1b.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from . import readings as R
from .context import Context
from .fits import (
    corrupted_fit,
    learning_rate,
    learning_rate_details,
    linearized_losses,
    train_conditions,
    variant_fit,
)
from .numbers import fmt, r, rl
from .results import ExperimentResult, LabFigure, SummaryRow, new_figure
from .training import steps_to_fit

TITLE = "Random labels: fitting noise takes longer (Zhang et al. 2017)"
MIN_TRAIN = 20
MIN_TEST = 10
VARIANTS = ("shuffled_pixels", "random_pixels", "gaussian")
ZHANG_A = "Zhang et al. 2017 (Fig. 1a)"
ZHANG_B = "Zhang et al. 2017 (Fig. 1b)"
ZHANG_C = "Zhang et al. 2017 (Fig. 1c)"


def condition_labels(unit: str) -> dict[str, str]:
    """Names of the conditions, with ``unit`` ``"pixel"`` (images) or ``"feature"`` (tabular)."""
    return {
        "true_labels": "true labels",
        "random_labels": "random labels",
        "shuffled_pixels": f"shuffled {unit}s",
        "random_pixels": f"random {unit}s" if unit == "pixel" else "features permuted per example",
        "gaussian": "Gaussian inputs",
    }


def _lr_origin(d: dict) -> str:
    """How η was chosen, in words (:func:`ntkit.lab.fits.learning_rate_details`)."""
    kernel = "n/λ_max" if d["kernel_learning_rate"] * d["kernel_curvature"] > 0.75 else "n/(2λ_max)"
    text = f"{kernel} of its NTK on the true inputs"
    if d["sharpness"] is None:
        return text
    ratio = d["sharpness"] / d["kernel_curvature"]
    if d["rule"] == "sharpness":
        return (f"(1 − μ)/S_0, below {kernel} = {d['kernel_learning_rate']:.3g} of its NTK: S_0 = "
                f"{d['sharpness']:.3g}, the top Hessian eigenvalue of the finite net's training loss at "
                f"initialization, is {ratio:.2g}× the kernel's λ_max/n, and the kernel's step made such nets "
                "diverge; (1 − μ)/S_0 keeps the momentum's effective step η/(1 − μ) at half gradient "
                "descent's stability limit 2/S_0")
    return f"{text}; below (1 − μ)/S_0, S_0 = {d['sharpness']:.3g} the finite net's initial loss sharpness"


def run(ctx: Context) -> ExperimentResult:
    """Loss curves of true/random labels and inputs; steps to fit and test error vs corruption."""
    s, data = ctx.sizes, ctx.data
    fractions = [float(f) for f in s.rl_fractions]
    if 0.0 not in fractions or 1.0 not in fractions:
        fractions = sorted({0.0, 1.0, *fractions})
    train_conditions(ctx, fractions, VARIANTS)  # all conditions as one stack of nets
    fits = [corrupted_fit(ctx, f) for f in fractions]
    by_fraction = dict(zip(fractions, fits))
    conditions = {}
    for key, fit in (("true_labels", by_fraction[0.0]), ("random_labels", by_fraction[1.0])):
        conditions[key] = _condition(fit)
    for kind in VARIANTS:
        conditions[kind] = _condition(variant_fit(ctx, kind))
    metrics = {
        "arch": ctx.model.name,
        "model": ctx.model.description,
        "width": ctx.model.width,
        "inputs": data.unit + "s",
        "learning_rate": r(learning_rate(ctx)),
        "learning_rate_rule": {k: (r(v) if isinstance(v, float) else v)
                               for k, v in learning_rate_details(ctx).items() if k != "learning_rate"},
        "momentum": s.rl_momentum,
        "threshold": s.rl_threshold,
        "max_steps": s.rl_max_steps,
        "conditions": conditions,
        "fractions": fractions,
        "losses_by_fraction": [rl(f["losses"], 6) for f in fits],
        "steps_to_fit": [f["steps_to_fit"] for f in fits],
        "final_loss": [r(f["final_loss"]) for f in fits],
        "test_error": [r(f["test_error"]) for f in fits],
        "test_loss": [r(f["test_loss"]) for f in fits],
        "fitted_all": all(f["steps_to_fit"] is not None for f in fits)
        and all(c["steps_to_fit"] is not None for c in conditions.values()),
    }
    # The same recipe on the linearized model with the infinite-width NTK (closed form):
    # what the kernel regime predicts for the steps to fit (Arora et al. 2019, Thm 4.1).
    K = ctx.model.kernel_cached(data.x_train, ctx.cache)
    lin = linearized_losses(K, torch.stack([f["labels"] for f in fits]), lr=learning_rate(ctx),
                            momentum=s.rl_momentum, steps=s.rl_max_steps, stop_below=s.rl_threshold)
    metrics["steps_to_fit_kernel"] = [steps_to_fit(v, s.rl_threshold) for v in lin]
    names = condition_labels(data.unit)
    claims_a = _claims_conditions(metrics, names, ctx.model.name, data.unit)
    claims_b = _claims_steps(metrics)
    claims_c = _claims_error(metrics)
    metrics["claims"] = [c.as_dict() for c in claims_a + claims_b + claims_c]
    cond = conditions
    summary = [
        SummaryRow("steps to fit: true → random labels",
                   f"{_steps(cond['true_labels']['steps_to_fit'])} → "
                   f"{_steps(cond['random_labels']['steps_to_fit'])}", "random slower"),
        SummaryRow(f"steps to fit at corruption {fractions[0]:.0%} → {fractions[-1]:.0%}",
                   " → ".join(_steps(k) for k in metrics["steps_to_fit"]), "rises (Fig. 1b)"),
        SummaryRow(
            f"test error at corruption {fractions[0]:.0%} → {fractions[-1]:.0%}",
            f"{fmt(metrics['test_error'][0])} → {fmt(metrics['test_error'][-1])}",
            "rises to ~0.5",
        ),
    ]
    return ExperimentResult(
        name="random-labels",
        title=TITLE,
        intro=(
            f"{ctx.model.description[0].upper()}{ctx.model.description[1:]} is trained by "
            f"full-batch gradient descent with momentum {s.rl_momentum} and one learning rate "
            f"η = {learning_rate(ctx):.3g} ({_lr_origin(learning_rate_details(ctx))}) for every "
            f"condition, on the mean squared error, until the training loss (1/2n)‖f − y‖² falls "
            f"below {s.rl_threshold:g} (at most {s.rl_max_steps} steps; f = h − h_0 is the net minus "
            "its output at initialization, so the initial residual is the labels): on true labels, "
            "on labels of which a fraction was re-drawn at random, and on randomized inputs — the "
            f"experiment of Zhang et al. 2017 (Fig. 1) on {data.unit}s."
        ),
        metrics=metrics,
        figures=[_figure_curves(metrics, names, claims_a), _figure_steps(metrics, claims_b),
                 _figure_error(metrics, claims_c)],
        summary=summary,
        claims=claims_a + claims_b + claims_c,
    )


def _condition(fit: dict) -> dict:
    return {"losses": rl(fit["losses"], 6), "steps_to_fit": fit["steps_to_fit"],
            "final_loss": r(fit["final_loss"])}


def _steps(k: int | None) -> str:
    return "not fitted" if k is None else str(k)


def _claims_conditions(m: dict, names: dict[str, str], arch: str, unit: str) -> list[R.Claim]:
    cond = m["conditions"]
    claims = [R.reached(c["steps_to_fit"], c["final_loss"], m["threshold"], m["max_steps"], names[k])
              for k, c in cond.items()]
    st = cond["true_labels"]["steps_to_fit"]
    claims.append(R.slower(cond["random_labels"]["steps_to_fit"], st, names["random_labels"],
                           names["true_labels"], paper=ZHANG_A))
    for kind in ("random_pixels", "gaussian"):
        claims.append(R.slower(cond[kind]["steps_to_fit"], st, names[kind], names["true_labels"],
                               paper=ZHANG_A))
    shuffled = R.slower(cond["shuffled_pixels"]["steps_to_fit"], st, names["shuffled_pixels"],
                        names["true_labels"], paper=ZHANG_A, key=False)
    claims.append(shuffled)
    if arch == "fc":
        claims.append(R.note(
            f"For a fully-connected net a fixed permutation of the {names['shuffled_pixels'].split()[1]} "
            "only permutes the rows of the first weight matrix, whose random initialization is "
            "permutation invariant: the NTK is the same as for the true inputs, so in the lazy "
            f"regime {names['shuffled_pixels']} train like the true inputs "
            f"({_steps(cond['shuffled_pixels']['steps_to_fit'])} vs {_steps(st)} steps; any difference "
            "comes from the one finite initialization). "
            + ("Zhang et al. shuffle pixels to destroy the locality a CNN exploits; run with --arch cnn "
               "to see it." if unit == "pixel" else
               "Zhang et al. shuffle image positions to destroy the locality a CNN exploits; tabular "
               "features have no locality, so this condition cannot differ here.")
        ))
    return claims


def _claims_steps(m: dict) -> list[R.Claim]:
    claims = [R.monotone([100 * f for f in m["fractions"]], m["steps_to_fit"],
                         "the number of steps to fit against the corruption (%)", paper=ZHANG_B)]
    kernel = m["steps_to_fit_kernel"]
    levels = ", ".join(f"{f:.0%}" for f in m["fractions"])
    known = [k for k in kernel if k is not None]
    if len(known) == len(kernel):
        shape = ("rising at every step" if all(b > a for a, b in itertools.pairwise(known)) else
                 "not rising at every step")
    else:
        shape = "not reaching the threshold at every level"
    claims.append(R.note(
        f"Under the same recipe the linearized net with the infinite-width NTK (closed form: the "
        f"lazy regime, dashed) would take {', '.join(_steps(k) for k in kernel)} steps at corruption "
        f"{levels} ({shape}); the finite net took {', '.join(_steps(k) for k in m['steps_to_fit'])}."))
    return claims


def _claims_error(m: dict) -> list[R.Claim]:
    fitted = [k is not None for k in m["steps_to_fit"]]
    claims = [R.rank_correlation(m["fractions"], m["test_error"],
                                 "the corruption and the test error on clean labels", paper=ZHANG_C)]
    claims.append(R.note(
        f"{sum(fitted)} of {len(fitted)} nets reached the loss threshold; the test error goes from "
        f"{fmt(m['test_error'][0])} without corruption to {fmt(m['test_error'][-1])} with every label "
        "re-drawn (chance: 0.5)."
    ))
    return claims


def _figure_curves(m: dict, names: dict[str, str], claims: list[R.Claim]) -> LabFigure:
    fig, (ax, ax2) = new_figure(2, width=5.2, height=4.0)
    series = [(names[k], c["losses"]) for k, c in m["conditions"].items()]
    curves = [(f"{f:.0%} random labels", losses)
              for f, losses in zip(m["fractions"], m["losses_by_fraction"])]
    lo, hi = [], []
    for axis, data, cmap in ((ax, series, None), (ax2, curves, "viridis")):
        for i, (label, losses) in enumerate(data):
            v = np.asarray([np.nan if x is None else x for x in losses], float)
            color = f"C{i}" if cmap is None else _viridis(i, len(data))
            axis.plot(np.arange(v.size), v, color=color, label=label, lw=1.5)
            finite = v[np.isfinite(v) & (v > 0)]
            if finite.size:
                lo.append(finite.min())
                hi.append(finite.max())
        axis.axhline(m["threshold"], color="gray", ls=":", label=f"threshold {m['threshold']:g}")
        axis.set_yscale("log")
        axis.set_xlabel("full-batch gradient-descent step")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7, loc="lower left", framealpha=0.8)
    bottom = min([*lo, m["threshold"]]) / 2
    top = max([*hi, m["threshold"]]) * 2
    for axis in (ax, ax2):
        axis.set_ylim(bottom, top)
    for axis in (ax, ax2):  # the same y range and label: the panels compare
        axis.set_ylabel("training loss (1/2n)‖f − y‖² (labels ±1)")
    ax.set_title("(a) labels and inputs (Zhang Fig. 1a)", fontsize=10)
    ax2.set_title("(b) corruption levels (Arora Fig. 1a)", fontsize=10)
    reading = (f"Training loss of {m['model']} against steps, one recipe for every condition. "
               + R.paragraph(claims))
    return LabFigure("random_labels_loss", "Fitting true labels, random labels and random inputs",
                     fig, reading)


def _viridis(i: int, n: int):
    from matplotlib import colormaps

    return colormaps["viridis"](0.9 * i / max(n - 1, 1))


def _figure_steps(m: dict, claims: list[R.Claim]) -> LabFigure:
    fig, ax = new_figure()
    fr = np.asarray(m["fractions"], float)
    steps = np.asarray([np.nan if k is None else k for k in m["steps_to_fit"]], float)
    ax.plot(fr, steps, "o-", label="reached the threshold")
    kernel = np.asarray([np.nan if k is None else k for k in m["steps_to_fit_kernel"]], float)
    ax.plot(fr, kernel, "s--", color="gray", ms=4, label="linearized, infinite-width NTK")
    missing = np.isnan(steps)
    if missing.any():
        ax.plot(fr[missing], np.full(missing.sum(), m["max_steps"]), "x", color="C3", ms=9,
                label=f"not reached within {m['max_steps']} steps")
    ax.set_xlabel("fraction of labels re-drawn at random")
    ax.set_ylabel(f"steps until training loss < {m['threshold']:g}")
    finite_kernel = kernel[np.isfinite(kernel)]
    top = max(np.nanmax(steps) if (~missing).any() else 0, m["max_steps"] if missing.any() else 1,
              finite_kernel.max() if finite_kernel.size else 0)
    ax.set_ylim(0, 1.1 * top)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    pairs = ", ".join(f"{_steps(k)} at {f:.0%}" for f, k in zip(m["fractions"], m["steps_to_fit"]))
    reading = f"Steps to fit against the label-corruption fraction: {pairs}. " + R.paragraph(claims)
    return LabFigure("random_labels_steps", "Steps to fit against label corruption", fig, reading)


def _figure_error(m: dict, claims: list[R.Claim]) -> LabFigure:
    fig, ax = new_figure()
    ax.plot(m["fractions"], m["test_error"], "o-", label="trained net")
    ax.axhline(0.5, color="gray", ls=":", label="chance (0.5)")
    ax.set_xlabel("fraction of labels re-drawn at random")
    ax.set_ylabel("test error (fraction of clean test labels)")
    ax.set_ylim(0, 0.75)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    pairs = ", ".join(f"{fmt(e)} at {f:.0%}" for f, e in zip(m["fractions"], m["test_error"]))
    reading = (f"Test error on clean labels of the nets trained on corrupted labels: {pairs}. "
               + R.paragraph(claims))
    return LabFigure("random_labels_test_error", "Test error against label corruption", fig, reading)
