"""`ntkit lab`: the quick run is fast, shows the lecture's effects, is reproducible and atomic."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ntkit import lab
from ntkit.cli import main
from ntkit.errors import NtkitError

# The acceptance range for the fitted log-log slope of the kernel error against width.
SLOPE_RANGE = (-0.75, -0.35)


def _ntkit(*args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    """Run the `ntkit` console script (of this interpreter's environment) in a subprocess."""
    exe = Path(sys.executable).with_name("ntkit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ntkit.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # a 2-core budget, as in the acceptance test
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env)
    return proc, time.perf_counter() - start


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """`ntkit lab --quick` run twice with the same seed, in separate processes."""
    base = tmp_path_factory.mktemp("lab")
    first, seconds = _ntkit("lab", "--quick", "--out", str(base / "a"))
    assert first.returncode == 0, first.stderr
    second, _ = _ntkit("lab", "--quick", "--out", str(base / "b"), "--no-progress")
    assert second.returncode == 0, second.stderr
    return {"out": base / "a", "other": base / "b", "seconds": seconds, "stdout": first.stdout,
            "stderr": first.stderr, "stderr_quiet": second.stderr,
            "metrics": json.loads((base / "a" / "metrics.json").read_text())}


def test_quick_run_writes_the_report(quick):
    # (its time is measured in benchmarks/lab.py, not here)
    out = quick["out"]
    for name in ("report.html", "metrics.json", "config.json"):
        assert (out / name).is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["quick"] is True and config["dataset"] == "digits"
    assert {"ntkit", "torch", "numpy"} <= set(config["versions"])
    figures = sorted(p.stem for p in (out / "figures").glob("*.png"))
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures) >= 10
    assert "src=\"figures/" not in html and "http" not in html.split("<body>")[1].split("References")[0]
    # the terminal summary table
    for name in lab.EXPERIMENT_NAMES:
        assert name in quick["stdout"]
    assert "report written to" in quick["stdout"]


def test_metrics_show_the_lectures_effects(quick):
    m = quick["metrics"]
    assert m["experiments"] == list(lab.EXPERIMENT_NAMES)
    # width: empirical NTK error ∝ m^-1/2, for the two-layer and the depth-3 net
    for key in ("two_layer", "depth3"):
        slope = m["width"][key]["slope"]
        assert SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1], (key, slope)
    # lazy: relative weight change, kernel change and the gap to the linearization fall with width
    final = m["lazy"]["final"]
    for key in ("weight_change", "kernel_change", "output_gap"):
        values = final[key]
        assert all(b < a for a, b in itertools.pairwise(values)), (key, values)
    # random labels: fitted to near-zero loss, but in more steps than true labels
    rl = m["random-labels"]
    cond = rl["conditions"]
    assert cond["random_labels"]["final_loss"] < rl["threshold"] <= 1e-2
    assert cond["random_labels"]["steps_to_fit"] > cond["true_labels"]["steps_to_fit"]
    assert all(c["steps_to_fit"] is not None for c in cond.values())
    assert rl["test_error"][-1] > rl["test_error"][0] + 0.2
    # bound: the complexity rises with the corruption; λ_min does not depend on labels
    comp = m["bound"]["complexity"]
    assert all(b > a for a, b in itertools.pairwise(comp)), comp
    assert len(set(m["bound"]["lambda_min"])) == 1 and m["bound"]["lambda_min"][0] > 0
    # spectrum: true labels sit on the top eigenvectors; the linearized net follows K_0's prediction
    share = m["spectrum"]["share_top"]
    assert share["true"]["top_0.1"] > 0.5 > share["random"]["top_0.1"]
    for c in m["spectrum"]["curves"].values():
        assert c["max_gap_net_vs_K0"] < 0.1
        assert c["max_gap_net_vs_predicted"] < 0.1
    # every experiment has a status with a reason, and here every one reproduces its paper
    for name in lab.EXPERIMENT_NAMES:
        assert m["status"][name]["status"] == "reproduced", (name, m["status"][name])


def test_without_a_terminal_each_experiment_logs_timestamped_lines(quick):
    # the fixture's stderr is a pipe, not a terminal: one line per experiment step
    lines = quick["stderr"].splitlines()
    stamp = re.compile(r"^\d\d:\d\d:\d\d ntkit lab: ")
    assert lines and all(stamp.match(ln) for ln in lines), lines[:5]
    for name in lab.EXPERIMENT_NAMES:
        steps = [ln for ln in lines if f"ntkit lab: {name}: " in ln]
        assert steps, name
        assert any(f"{name}: done in" in ln for ln in lines), name
    assert quick["stderr_quiet"] == ""


def test_every_figure_is_labelled_and_shows_data(quick):
    html = (quick["out"] / "report.html").read_text()
    assert 'class="problem"' not in html
    assert html.count("data-axis-ranges=") == len(list((quick["out"] / "figures").glob("*.png")))


def test_same_seed_gives_the_same_metrics(quick):
    a = (quick["out"] / "metrics.json").read_bytes()
    b = (quick["other"] / "metrics.json").read_bytes()
    assert a == b


def test_readings_are_generated_from_the_metrics(quick):
    html = (quick["out"] / "report.html").read_text()
    m = quick["metrics"]
    assert f"{m['width']['two_layer']['slope']:.3f}" in html
    steps = m["random-labels"]["conditions"]["random_labels"]["steps_to_fit"]
    assert f"Random labels reached loss 0.01 in {steps} steps" in html
    for claim in m["random-labels"]["claims"]:
        assert html_escape(claim["text"]) in html
    assert "reproduced" in html and 'class="status"' in html
    # no canned sentence: the old fixed explanation is gone
    assert "along which gradient descent is slow" not in html


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


# ---------------------------------------------------------------------------- atomic writes

TINY = {"width_seeds": 2, "width_points": 20, "n_train": 60, "n_test": 30, "lazy_steps": 20,
        "lazy_widths": (32, 128), "rl_max_steps": 200, "spectrum_steps": 20, "spectrum_width": 128,
        "width_two_layer": (32, 128), "width_deep": (32, 64), "rl_width": 128}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def previous(tmp_path):
    out = tmp_path / "report"
    lab.run(["width"], quick=True, sizes=TINY, out=out)
    return out, _snapshot(out)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def test_experiment_failing_midway_leaves_the_previous_report(previous, monkeypatch):
    out, before = previous
    calls = {"n": 0}
    real = lab.lazy.train_two_layer

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash in the middle of the lazy experiment")
        return real(*args, **kwargs)

    monkeypatch.setattr(lab.lazy, "train_two_layer", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        lab.run(["width", "lazy"], quick=True, sizes=TINY, out=out)
    assert calls["n"] == 2
    assert _snapshot(out) == before
    assert _leftovers(out) == []


def test_interrupt_from_the_cli_leaves_the_previous_report(previous, monkeypatch, capsys):
    out, before = previous

    def interrupted(ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(lab.bound, "run", interrupted)
    argv = ["lab", "--quick", "--experiments", "width", "bound", "--out", str(out), "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unchanged" in err
    assert _snapshot(out) == before
    assert _leftovers(out) == []


def test_failure_while_writing_leaves_the_previous_report(previous, monkeypatch):
    out, before = previous
    real = Path.write_bytes
    calls = {"n": 0}

    def failing(self, data):  # the disk fills up at the second figure written
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing)
    with pytest.raises(NtkitError, match=r"No space left on device.*choose a writable folder"):
        lab.run(["lazy"], quick=True, sizes=TINY, out=out)
    assert _snapshot(out) == before
    assert _leftovers(out) == []


def test_a_second_run_replaces_the_report(previous):
    out, _before = previous
    lab.run(["bound"], quick=True, sizes=TINY, out=out)
    after = json.loads((out / "metrics.json").read_text())
    assert after["experiments"] == ["bound"] and "width" not in after
    assert _leftovers(out) == []


def test_never_replaces_a_folder_with_other_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(NtkitError, match=r"holds other files.*new or empty folder"):
        lab.run(["width"], quick=True, sizes=TINY, out=out)
    assert (out / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NtkitError, match="is a file"):
        lab.run(["width"], quick=True, sizes=TINY, out=tmp_path / "file")


# ---------------------------------------------------------------------------- Python API


def test_python_api_runs_one_experiment_without_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = lab.run("width", quick=True, sizes=TINY)
    assert res.out is None and os.listdir(tmp_path) == []
    exp = res["width"]
    assert exp.metrics["two_layer"]["widths"] == [32, 128]
    assert [f.name for f in exp.figures] == ["width_convergence"]
    assert "width" in res.summary()


def test_names_sizes_and_threads_are_validated():
    assert lab.resolve_experiments("random_labels,width") == ["width", "random-labels"]
    assert lab.resolve_experiments("all") == list(lab.EXPERIMENT_NAMES)
    with pytest.raises(NtkitError, match="unknown experiment 'widht'; choose from width"):
        lab.run("widht")
    with pytest.raises(NtkitError, match="unknown size 'steps'"):
        lab.run("width", sizes={"steps": 3})
    with pytest.raises(NtkitError, match="increasing"):
        lab.run("width", sizes={"lazy_widths": (64,)})
    with pytest.raises(NtkitError, match="threads"):
        lab.run("width", threads=0)


def test_other_embedded_and_user_data(tmp_path):
    import numpy as np

    res = lab.run(["bound"], dataset="breast_cancer", quick=True, sizes=TINY)
    assert res.metrics["data"]["classes"] == {"+1": "1", "-1": "0"}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 5))
    np.savez(tmp_path / "d.npz", x=x, y=x[:, 0] + 0.1 * rng.normal(size=80))  # a regression target
    res = lab.run(["spectrum"], dataset=f"npz:{tmp_path / 'd.npz'}", quick=True, sizes=TINY)
    assert res.metrics["data"]["classes"]["+1"].startswith(">")
    assert res.metrics["spectrum"]["share_top"]["true"]["top_0.1"] > 0.5


def test_progress_bars_go_to_stderr(capsys):
    lab.run(["width"], quick=True, sizes=TINY, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "[1/1] width" in captured.err


def test_cleanup_helper_leaves_no_stray_folders(tmp_path):
    # a report into a nested, not yet existing folder
    out = tmp_path / "a" / "b" / "report"
    lab.run(["width"], quick=True, sizes=TINY, out=out)
    assert (out / "report.html").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["report"]
    shutil.rmtree(tmp_path / "a")
