"""Bound: the kernel complexity ``sqrt(2yᵀH⁻¹y/n)`` tells true labels from random ones.

Arora, Du, Hu, Li & Wang 2019 ("Fine-grained analysis of optimization and generalization
for overparameterized two-layer neural networks", Thm 5.1 and Fig. 1c): for the two-layer
ReLU net trained by gradient descent, the population error is bounded by
``sqrt(2 yᵀ(H∞)⁻¹y / n) + O(sqrt(log(n/(λ0 δ))/n))`` with their Gram matrix
``H∞_ij = x_iᵀx_j (π − arccos x_iᵀx_j)/(2π)`` (:func:`ntkit.bounds.arora_h_infinity`;
unit-norm inputs, labels ``±1``) and ``λ0 = λ_min(H∞)``. The data-dependent term
(:func:`ntkit.bounds.complexity`) grows as labels are corrupted, following the measured test
error of the trained nets (:func:`ntkit.lab.fits.corrupted_fit`, shared with
``random-labels``), while ``λ_min`` — a property of the inputs only — does not change.

Also recorded: the same complexity with the NTK of the trained architecture (``--arch``: the
full two-layer NTK :func:`ntkit.theory.two_layer_ntk`, both layers trained, or the CNTK), and
the bound's value with the constant of its ``O(·)`` set to 1 and ``δ = 0.05``
(:func:`ntkit.bounds.generalization_bound`). The figure follows Arora et al.'s Fig. 1 (b, c):
the complexity against the corruption, with the test error beside it on its own y axis.
"""

from __future__ import annotations

from ..bounds import arora_h_infinity, complexity, generalization_bound, lambda_min
from . import readings as R
from .context import Context
from .fits import corrupted_fit, train_conditions
from .numbers import fmt, r
from .results import ExperimentResult, LabFigure, SummaryRow, new_figure

TITLE = "Bound: sqrt(2yᵀH⁻¹y/n) separates true from random labels (Arora et al. 2019)"
MIN_TRAIN = 20
MIN_TEST = 10
DELTA = 0.05
ARORA = "Arora et al. 2019 (Fig. 1)"


def run(ctx: Context) -> ExperimentResult:
    """Complexity, λ_min and the measured test error against the corruption fraction."""
    data, s = ctx.data, ctx.sizes
    x = data.x_train
    H = arora_h_infinity(x)
    K = ctx.model.kernel_cached(x, ctx.cache)
    lam = lambda_min(H)
    fractions = [float(f) for f in s.rl_fractions]
    comp, comp_ntk, bound, test_error, fitted = [], [], [], [], []
    train_conditions(ctx, fractions)  # nothing to do after random-labels
    with ctx.bar(len(fractions), "complexity per corruption level") as bar:
        for f in fractions:
            fit = corrupted_fit(ctx, f)
            y = fit["labels"]
            comp.append(complexity(H, y))
            comp_ntk.append(complexity(K, y))
            bound.append(generalization_bound(H, y, DELTA) if lam > 0 else float("nan"))
            test_error.append(fit["test_error"])
            fitted.append(fit["steps_to_fit"] is not None)
            bar.update(1)
    metrics = {
        "n": int(x.shape[0]),
        "arch": ctx.model.name,
        "fractions": fractions,
        "complexity": [r(c) for c in comp],
        "complexity_ntk": [r(c) for c in comp_ntk],
        "lambda_min": [r(lam)] * len(fractions),
        "bound_delta_0.05": [r(b) for b in bound],
        "test_error": [r(e) for e in test_error],
        "nets_fitted": fitted,
        "spearman_complexity_test_error": r(R.spearman(comp, test_error) or float("nan")),
    }
    claims = [
        R.monotone([100 * f for f in fractions], comp,
                   "the complexity sqrt(2yᵀH∞⁻¹y/n) against the corruption (%)", paper=ARORA),
        R.rank_correlation(comp, test_error, "the complexity and the measured test error", paper=ARORA),
    ]
    if not all(fitted):
        claims.append(R.Claim(
            "reached", None,
            f"Only {sum(fitted)} of {len(fitted)} nets reached the loss threshold, so the measured test "
            "errors are not those of nets that fit their labels; no conclusion is drawn from them."))
    kname = "the two-layer NTK" if ctx.model.name == "fc" else "the CNTK"
    claims.append(R.note(
        f"With {kname} instead of Arora's H∞ the complexity goes from {fmt(comp_ntk[0])} to "
        f"{fmt(comp_ntk[-1])}. λ_min(H∞) = {fmt(lam)} depends on the inputs only, so it is the same at "
        f"every corruption level. The bound itself (O-constant 1, δ = {DELTA}) is {fmt(bound[0], 4)} for "
        "true labels" + (" — above 1, so vacuous at this n; only its data-dependent term is informative."
                         if bound[0] > 1 else ".")))
    metrics["claims"] = [c.as_dict() for c in claims]
    summary = [
        SummaryRow(
            f"complexity at corruption {fractions[0]:.0%} → {fractions[-1]:.0%}",
            f"{fmt(comp[0])} → {fmt(comp[-1])}",
            "rises",
        ),
        SummaryRow("rank corr. complexity / test error", fmt(metrics["spearman_complexity_test_error"]),
                   "≥ 0.8"),
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
        figures=[_figure(metrics, claims)],
        summary=summary,
        claims=claims,
    )


def _figure(m: dict, claims: list[R.Claim]) -> LabFigure:
    fig, (ax, ax3) = new_figure(2, width=4.8, height=3.8)
    fr = m["fractions"]
    kname = "NTK" if m["arch"] == "fc" else "CNTK"
    ax.plot(fr, m["complexity"], "o-", color="C0", label="sqrt(2yᵀH∞⁻¹y/n), Arora's H∞")
    ax.plot(fr, m["complexity_ntk"], "s--", color="C1", label=f"same with the {kname}")
    ax.set_xlabel("fraction of labels re-drawn at random")
    ax.set_ylabel("complexity sqrt(2yᵀH⁻¹y/n) (dimensionless)")
    top = max(max(m["complexity"]), max(m["complexity_ntk"]))
    ax.set_ylim(0, 1.15 * top)
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(fr, m["test_error"], "^-", color="C3", label="measured test error")
    ax2.set_ylabel("test error (fraction of test points)", color="C3")
    ax2.tick_params(axis="y", colors="C3")
    ax2.set_ylim(0, max(0.6, 1.15 * max(m["test_error"])))
    lines = ax.get_lines()[:2] + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="upper left")
    ax.set_title("complexity (left) and test error (right)", fontsize=10)
    ax3.plot(fr, m["lambda_min"], "o-", color="C4")
    ax3.set_xlabel("fraction of labels re-drawn at random")
    ax3.set_ylabel("λ_min(H∞) (kernel units, inputs on the sphere)")
    ax3.set_ylim(0, 2 * max(m["lambda_min"]))
    ax3.set_title("smallest eigenvalue of H∞", fontsize=10)
    ax3.grid(True, alpha=0.3)
    comp = m["complexity"]
    reading = (
        f"With Arora's H∞ on n = {m['n']} inputs, the complexity is {fmt(comp[0])} for true labels and "
        f"{fmt(comp[-1])} with every label re-drawn; the measured test error goes from "
        f"{fmt(m['test_error'][0])} to {fmt(m['test_error'][-1])}. " + R.paragraph(claims)
    )
    return LabFigure("bound", "Complexity and λ_min against label corruption", fig, reading)
