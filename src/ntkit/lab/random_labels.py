"""Random labels: networks fit anything, but true labels faster (Zhang et al. 2017, Fig. 1).

Zhang, Bengio, Hardt, Recht & Vinyals 2017, "Understanding deep learning requires rethinking
generalization": the same network and optimizer that generalize on true labels also drive
the training loss to zero on random labels and on random inputs; only the time to fit and
the test error change.

Here the lecture's two-layer ReLU net (width ``rl_width``) is trained by full-batch gradient
descent with heavy-ball momentum (as Zhang et al. used SGD with momentum) on
``(1/2n)‖f − y‖²`` until the loss is below ``rl_threshold``, with its initial outputs
subtracted (``f = h − h_0``, see :func:`ntkit.lab.corrupted.corrupted_fit`), so that the
initial residual is the labels:

- (a) the loss against steps for true labels, random labels (all re-drawn), shuffled pixels
  (one feature permutation for all examples), random pixels (a permutation per example) and
  Gaussian inputs (each feature drawn with the data's mean and standard deviation);
- (b) the steps needed to fit against the fraction of labels re-drawn at random
  (:func:`ntkit.lab.corrupted.corrupted_labels`: nested sets; with two classes about half
  of the re-drawn labels change);
- (c) the test error on clean test labels against the same fraction.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..theory import two_layer_ntk
from .context import Context
from .corrupted import corrupted_fit
from .numbers import fmt, r, rl
from .results import ExperimentResult, LabFigure, SummaryRow, new_figure
from .training import lecture_net, steps_to_fit, train_mse

TITLE = "Random labels: fitting noise takes longer (Zhang et al. 2017)"
MIN_TRAIN = 20
MIN_TEST = 10
VARIANTS = ("shuffled_pixels", "random_pixels", "gaussian")
LABELS = {
    "true_labels": "true labels",
    "random_labels": "random labels",
    "shuffled_pixels": "shuffled pixels",
    "random_pixels": "random pixels",
    "gaussian": "Gaussian inputs",
}


def _variant_fit(ctx: Context, kind: str) -> dict:
    from ..predict import max_learning_rate

    s, data = ctx.sizes, ctx.data
    x = data.variant(kind, ctx.rng("rl-variant", kind))
    lr = 0.5 * max_learning_rate(two_layer_ntk(x))
    net = lecture_net(data.d, s.rl_width, ctx.seed_for("rl-net"), ctx.device)
    with torch.no_grad():
        f0 = net(x)
    with ctx.bar(s.rl_max_steps, f"fit, {LABELS[kind]}") as bar:
        losses = train_mse(net, x, data.y_train + f0, lr=lr, steps=s.rl_max_steps,
                           momentum=s.rl_momentum, stop_below=s.rl_threshold, bar=bar)
    return {"losses": losses, "steps_to_fit": steps_to_fit(losses, s.rl_threshold), "learning_rate": lr}


def run(ctx: Context) -> ExperimentResult:
    """Loss curves of true/random labels and inputs; steps to fit and test error vs corruption."""
    s = ctx.sizes
    fractions = [float(f) for f in s.rl_fractions]
    fits = [corrupted_fit(ctx, f) for f in fractions]
    conditions = {}
    true_fit = corrupted_fit(ctx, 0.0)
    random_fit = corrupted_fit(ctx, 1.0)
    for key, fit in (("true_labels", true_fit), ("random_labels", random_fit)):
        conditions[key] = {"losses": rl(fit["losses"], 6), "steps_to_fit": fit["steps_to_fit"],
                           "final_loss": r(fit["losses"][-1])}
    for kind in VARIANTS:
        fit = _variant_fit(ctx, kind)
        conditions[kind] = {"losses": rl(fit["losses"], 6), "steps_to_fit": fit["steps_to_fit"],
                            "final_loss": r(fit["losses"][-1])}
    metrics = {
        "width": s.rl_width,
        "learning_rate": r(true_fit["learning_rate"]),
        "momentum": s.rl_momentum,
        "threshold": s.rl_threshold,
        "max_steps": s.rl_max_steps,
        "conditions": conditions,
        "fractions": fractions,
        "steps_to_fit": [f["steps_to_fit"] for f in fits],
        "final_loss": [r(f["final_loss"]) for f in fits],
        "test_error": [r(f["test_error"]) for f in fits],
        "fitted_all": all(f["steps_to_fit"] is not None for f in fits)
        and all(c["steps_to_fit"] is not None for c in conditions.values()),
    }
    st, sr = conditions["true_labels"]["steps_to_fit"], conditions["random_labels"]["steps_to_fit"]
    summary = [
        SummaryRow("steps to fit: true → random labels", f"{_steps(st)} → {_steps(sr)}", "random slower"),
        SummaryRow("final loss, random labels", fmt(conditions["random_labels"]["final_loss"]),
                   f"< {fmt(s.rl_threshold)}"),
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
            f"The lecture's two-layer ReLU net of width {s.rl_width} is trained by full-batch "
            f"gradient descent with momentum {s.rl_momentum} on the mean squared error until the "
            f"training loss (1/2n)‖f − y‖² falls below {s.rl_threshold:g} (at most "
            f"{s.rl_max_steps} steps; f = h − h_0 is the net minus its output at initialization, "
            "so the initial residual is the labels), on true labels, on labels of which a "
            "fraction was re-drawn at random, and on randomized inputs — the experiment of "
            "Zhang et al. 2017 (Fig. 1)."
        ),
        metrics=metrics,
        figures=[_figure_curves(metrics), _figure_steps(metrics), _figure_error(metrics)],
        summary=summary,
    )


def _steps(k: int | None) -> str:
    return "not fitted" if k is None else str(k)


def _figure_curves(m: dict) -> LabFigure:
    fig, ax = new_figure()
    for i, (key, c) in enumerate(m["conditions"].items()):
        losses = np.asarray([np.nan if v is None else v for v in c["losses"]], float)
        ax.plot(np.arange(losses.size), losses, color=f"C{i}", label=LABELS[key])
    ax.axhline(m["threshold"], color="gray", ls=":", label=f"fitted: loss < {m['threshold']:g}")
    ax.set_yscale("log")
    ax.set_xlabel("gradient-descent step")
    ax.set_ylabel("training loss (1/2n)‖f − y‖²")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    parts = []
    for key, c in m["conditions"].items():
        if c["steps_to_fit"] is None:
            parts.append(f"{LABELS[key]} not within {m['max_steps']} steps (loss {fmt(c['final_loss'])})")
        else:
            parts.append(f"{LABELS[key]} in {c['steps_to_fit']} steps")
    cond = m["conditions"]
    st, sr = cond["true_labels"]["steps_to_fit"], cond["random_labels"]["steps_to_fit"]
    if st is not None and sr is not None:
        tail = (f" Random labels need {sr / max(st, 1):.1f}× as many steps as true labels"
                + (", as in Zhang et al. 2017." if sr > st else " — unlike Zhang et al. 2017."))
    else:
        tail = " Not every condition reached the threshold, so the comparison of steps is incomplete."
    reading = (
        f"Training loss of the width-{m['width']} net against steps. The loss fell below "
        f"{m['threshold']:g} for " + "; ".join(parts) + "." + tail
    )
    return LabFigure("random_labels_loss", "Fitting true labels, random labels and random inputs",
                     fig, reading)


def _figure_steps(m: dict) -> LabFigure:
    fig, ax = new_figure()
    fr = np.asarray(m["fractions"], float)
    steps = np.asarray([np.nan if k is None else k for k in m["steps_to_fit"]], float)
    ax.plot(fr, steps, "o-")
    ax.set_xlabel("fraction of labels re-drawn at random")
    ax.set_ylabel(f"steps until loss < {m['threshold']:g}")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    pairs = ", ".join(f"{_steps(k)} at {f:.0%}" for f, k in zip(m["fractions"], m["steps_to_fit"]))
    valid = [k for k in m["steps_to_fit"] if k is not None]
    if len(valid) < len(fr):
        trend = ("Not every net reached the threshold within the step limit, which itself shows "
                 "how much harder corrupted labels are to fit.")
    elif all(b > a for a, b in itertools.pairwise(valid)):
        trend = "The time to fit grows at every corruption level, the trend of Zhang et al. 2017 (Fig. 1b)."
    elif valid[-1] > valid[0]:
        trend = ("The time to fit grows overall, though not at every level, the trend of Zhang et "
                 "al. 2017 (Fig. 1b).")
    else:
        trend = "Here the time to fit does not grow with the corruption, unlike Zhang et al. 2017."
    reading = (
        f"Steps to fit against the label-corruption fraction: {pairs}. {trend} Noise projects "
        "onto the kernel's small eigenvalues, along which gradient descent is slow (see the "
        "spectrum section)."
    )
    return LabFigure("random_labels_steps", "Steps to fit against label corruption", fig, reading)


def _figure_error(m: dict) -> LabFigure:
    fig, ax = new_figure()
    ax.plot(m["fractions"], m["test_error"], "o-")
    ax.axhline(0.5, color="gray", ls=":", label="chance (0.5)")
    ax.set_xlabel("fraction of labels re-drawn at random")
    ax.set_ylabel("test error (clean test labels)")
    ax.set_ylim(0, 0.75)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    pairs = ", ".join(f"{fmt(e)} at {f:.0%}" for f, e in zip(m["fractions"], m["test_error"]))
    fitted = sum(k is not None for k in m["steps_to_fit"])
    reading = (
        f"Test error on clean labels of the nets trained on corrupted labels: {pairs}. "
        f"{fitted} of {len(m['fractions'])} nets fitted their training labels (loss below "
        f"{m['threshold']:g}); the test error goes from {fmt(m['test_error'][0])} without "
        f"corruption to {fmt(m['test_error'][-1])} with all labels random (chance: 0.5), the "
        "trend of Zhang et al. 2017 (Fig. 1c): fitting the training set says nothing about "
        "generalization."
    )
    return LabFigure("random_labels_test_error", "Test error against label corruption", fig, reading)
