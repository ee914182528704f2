"""Bound: the kernel complexity ``sqrt(2yᵀH⁻¹y/n)`` tells true labels from random ones.

Arora, Du, Hu, Li & Wang 2019 ("Fine-grained analysis of optimization and generalization
for overparameterized two-layer neural networks", Thm 5.1 and Fig. 1c): for the two-layer
ReLU net trained by gradient descent, the population error is bounded by
``sqrt(2 yᵀ(H∞)⁻¹y / n) + O(sqrt(log(n/(λ0 δ))/n))`` with their Gram matrix
``H∞_ij = x_iᵀx_j (π − arccos x_iᵀx_j)/(2π)`` (:func:`ntkit.bounds.arora_h_infinity`;
unit-norm inputs, labels ``±1``) and ``λ0 = λ_min(H∞)``. The data-dependent term
(:func:`ntkit.bounds.complexity`) grows as labels are corrupted, following the measured test
error of the trained nets (:func:`ntkit.lab.corrupted.corrupted_fit`, shared with
``random-labels``), while ``λ_min`` — a property of the inputs only — does not change.

Also recorded: the same complexity with the full two-layer NTK
(:func:`ntkit.theory.two_layer_ntk`, both layers trained), and the bound's value with the
constant of its ``O(·)`` set to 1 and ``δ = 0.05`` (:func:`ntkit.bounds.generalization_bound`).
"""

from __future__ import annotations

import itertools

import numpy as np

from ..bounds import arora_h_infinity, complexity, generalization_bound, lambda_min
from ..theory import two_layer_ntk
from .context import Context
from .corrupted import corrupted_fit
from .numbers import fmt, r
from .results import ExperimentResult, LabFigure, SummaryRow, new_figure

TITLE = "Bound: sqrt(2yᵀH⁻¹y/n) separates true from random labels (Arora et al. 2019)"
MIN_TRAIN = 20
MIN_TEST = 10
DELTA = 0.05


def run(ctx: Context) -> ExperimentResult:
    """Complexity, λ_min and the measured test error against the corruption fraction."""
    data, s = ctx.data, ctx.sizes
    x = data.x_train
    H = arora_h_infinity(x)
    K = two_layer_ntk(x)
    lam = lambda_min(H)
    fractions = [float(f) for f in s.rl_fractions]
    comp, comp_ntk, bound, test_error = [], [], [], []
    with ctx.bar(len(fractions), "bound: corrupted labels") as bar:
        for f in fractions:
            fit = corrupted_fit(ctx, f)
            y = fit["labels"]
            comp.append(complexity(H, y))
            comp_ntk.append(complexity(K, y))
            bound.append(generalization_bound(H, y, DELTA) if lam > 0 else float("nan"))
            test_error.append(fit["test_error"])
            bar.update(1)
    metrics = {
        "n": int(x.shape[0]),
        "fractions": fractions,
        "complexity": [r(c) for c in comp],
        "complexity_ntk": [r(c) for c in comp_ntk],
        "lambda_min": [r(lam)] * len(fractions),
        "bound_delta_0.05": [r(b) for b in bound],
        "test_error": [r(e) for e in test_error],
        "spearman_complexity_test_error": r(_spearman(comp, test_error)),
    }
    summary = [
        SummaryRow(
            f"complexity at corruption {fractions[0]:.0%} → {fractions[-1]:.0%}",
            f"{fmt(comp[0])} → {fmt(comp[-1])}",
            "rises",
        ),
        SummaryRow("λ_min(H∞)", fmt(lam), "> 0, label-free"),
    ]
    return ExperimentResult(
        name="bound",
        title=TITLE,
        intro=(
            "Arora et al. 2019 bound the test error of a wide two-layer ReLU net trained by "
            "gradient descent by sqrt(2yᵀH⁻¹y/n) plus a term in λ_min(H). Labels the kernel "
            "finds smooth (aligned with its top eigenvectors) give a small yᵀH⁻¹y; random labels a "
            f"large one. Computed on the {x.shape[0]} training examples with Arora's H∞, for the "
            "same corrupted labels as in the random-labels experiment, beside the test error of "
            "the nets trained on them."
        ),
        metrics=metrics,
        figures=[_figure(metrics)],
        summary=summary,
    )


def _spearman(a: list[float], b: list[float]) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _rises(values: list[float]) -> str:
    if all(b > a for a, b in itertools.pairwise(values)):
        return "rises at every step"
    if values[-1] > values[0]:
        return "rises overall, though not at every step"
    return "does not rise"


def _figure(m: dict) -> LabFigure:
    fig, (ax, ax2) = new_figure(2, width=4.8, height=3.8)
    fr = m["fractions"]
    ax.plot(fr, m["complexity"], "o-", label="sqrt(2yᵀH∞⁻¹y/n) (Arora's H∞)")
    ax.plot(fr, m["complexity_ntk"], "s--", label="same with the full NTK")
    ax.plot(fr, m["test_error"], "^-", color="C3", label="measured test error")
    ax.set_xlabel("fraction of labels re-drawn at random")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax2.plot(fr, m["lambda_min"], "o-", color="C4")
    ax2.set_xlabel("fraction of labels re-drawn at random")
    ax2.set_ylabel("λ_min(H∞)")
    ax2.set_ylim(0, 2 * max(m["lambda_min"]))
    ax2.grid(True, alpha=0.3)
    comp = m["complexity"]
    reading = (
        f"With Arora's H∞ on n = {m['n']} inputs, the complexity sqrt(2yᵀH⁻¹y/n) {_rises(comp)} with "
        f"the corruption: {fmt(comp[0])} for true labels, {fmt(comp[-1])} with every label re-drawn "
        f"(full NTK: {fmt(m['complexity_ntk'][0])} → {fmt(m['complexity_ntk'][-1])}). The measured "
        f"test error goes from {fmt(m['test_error'][0])} to {fmt(m['test_error'][-1])}; the rank "
        f"correlation of complexity and test error is {fmt(m['spearman_complexity_test_error'])}. "
        f"λ_min(H∞) = {fmt(m['lambda_min'][0])} depends on the inputs only, so it is the same at every "
        f"corruption level. The bound itself (O-constant 1, δ = {DELTA}) is "
        f"{fmt(m['bound_delta_0.05'][0], 4)} for true labels"
        + (" — above 1, so vacuous at this n, although its data-dependent term already separates "
           "true from random labels." if (m["bound_delta_0.05"][0] or 0) > 1 else ".")
    )
    return LabFigure("bound", "Complexity and λ_min against label corruption", fig, reading)
