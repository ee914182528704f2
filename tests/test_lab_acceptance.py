"""Issue 18's acceptance runs: the report states only what the metrics support.

Fast: every experiment on small data sets (breast_cancer, wine, iris, a CSV with string
labels) at small sizes — each either reaches its threshold or is reported inconclusive,
never a claim drawn from a run that did not fit. Slow (``-m slow``): the default run on
digits (width slopes, steps to fit, complexity vs test error) and ``--arch cnn``.
"""

from __future__ import annotations

import html
import itertools
import json

import numpy as np
import pytest

from ntkit import lab

SMALL = {"width_seeds": 2, "width_points": 30, "n_train": 80, "n_test": 40, "lazy_steps": 30,
         "lazy_widths": (64, 256, 1024), "rl_max_steps": 600, "spectrum_steps": 40,
         "spectrum_width": 256, "width_two_layer": (64, 256, 1024), "width_deep": (32, 64, 128),
         "rl_width": 256, "rl_fractions": (0.0, 0.5, 1.0)}
STATUSES = {"reproduced", "not reproduced", "inconclusive"}
PAPER_CLAIMS = ("the trend of", "as in Zhang", "as in Arora", "consistent with")


def _string_label_csv(path) -> str:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 6))
    label = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "benign", "malignant")
    lines = ["f1,f2,f3,f4,f5,f6,diagnosis"] + [",".join(f"{v:.5f}" for v in row) + f",{s}"
                                              for row, s in zip(x, label)]
    path.write_text("\n".join(lines) + "\n")
    return f"csv:{path}"


def _check_truthful(out) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    page = (out / "report.html").read_text()
    assert 'class="problem"' not in page  # every figure labelled, finite, non-empty
    for name in metrics["experiments"]:
        st = metrics["status"][name]
        assert st["status"] in STATUSES and st["reason"], (name, st)
        for claim in metrics[name].get("claims", []):
            assert html.escape(claim["text"]) in page
    rl = metrics.get("random-labels")
    if rl is not None:
        unfitted = [f for f, k in zip(rl["fractions"], rl["steps_to_fit"]) if k is None]
        unfitted += [c for c, v in rl["conditions"].items() if v["steps_to_fit"] is None]
        if unfitted:
            # a run that did not reach the threshold: the experiment is inconclusive, and no
            # claim about times to fit is drawn from it
            assert metrics["status"]["random-labels"]["status"] == "inconclusive", unfitted
            for claim in rl["claims"]:
                if claim["rule"] in ("slower", "monotone") and claim["holds"] is not None:
                    assert "None" not in claim["text"] and "not fitted" not in claim["text"]
            steps_caption = page.split('id="fig-random_labels_steps"')[1].split("</figure>")[0]
            if any(k is None for k in rl["steps_to_fit"]):
                assert not any(p in steps_caption for p in PAPER_CLAIMS), steps_caption
    return metrics


@pytest.mark.parametrize("dataset", ["breast_cancer", "wine", "iris", "csv"])
def test_small_data_sets_fit_or_are_reported_inconclusive(dataset, tmp_path):
    target = None
    if dataset == "csv":
        dataset, target = _string_label_csv(tmp_path / "diagnosis.csv"), "diagnosis"
    out = tmp_path / "report"
    lab.run("all", dataset=dataset, target=target, quick=True, sizes=SMALL, out=out)
    metrics = _check_truthful(out)
    page = (out / "report.html").read_text()
    # tabular data: the randomized inputs are features, not pixels
    assert "pixels" not in page.split('id="random-labels"')[1]
    assert metrics["data"]["inputs"] == "features"
    if target:
        assert set(metrics["data"]["classes"].values()) == {"benign", "malignant"}


def test_a_run_that_never_fits_is_inconclusive_not_a_claim(tmp_path):
    out = tmp_path / "report"
    lab.run(["random-labels"], quick=True, sizes={**SMALL, "rl_max_steps": 5}, out=out)
    metrics = _check_truthful(out)
    assert metrics["status"]["random-labels"]["status"] == "inconclusive"
    assert "did not reach" in metrics["status"]["random-labels"]["reason"]


@pytest.mark.slow
def test_digits_default_run(tmp_path):
    out = tmp_path / "report"
    lab.run("all", out=out)
    m = _check_truthful(out)
    for key in ("two_layer", "depth3"):
        assert -0.65 <= m["width"][key]["slope"] <= -0.35, (key, m["width"][key]["slope"])
    steps = m["random-labels"]["steps_to_fit"]
    rising = sum(b > a for a, b in itertools.pairwise(steps))
    monotone = next(c for c in m["random-labels"]["claims"] if c["rule"] == "monotone")
    if rising >= 4 and all(b >= a for a, b in itertools.pairwise(steps)):
        assert monotone["holds"] is True
    else:  # the report must say otherwise
        assert monotone["holds"] is not True and m["status"]["random-labels"]["status"] != "reproduced"
    assert m["bound"]["spearman_complexity_test_error"] >= 0.8


@pytest.mark.slow
def test_cnn_on_digits(tmp_path):
    out = tmp_path / "report"
    lab.run(["random-labels", "bound"], arch="cnn", out=out)
    m = _check_truthful(out)
    cond = m["random-labels"]["conditions"]
    true_steps = cond["true_labels"]["steps_to_fit"]
    for kind in ("random_pixels", "gaussian"):
        label = {"random_pixels": "random pixels", "gaussian": "Gaussian inputs"}[kind]
        claim = next(c for c in m["random-labels"]["claims"]
                     if c["rule"] == "slower" and label.lower() in c["text"].lower())
        if cond[kind]["steps_to_fit"] is not None and true_steps is not None:
            assert claim["holds"] is (cond[kind]["steps_to_fit"] > true_steps)
    assert m["bound"]["spearman_complexity_test_error"] >= 0.8
