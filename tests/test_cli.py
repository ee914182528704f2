"""The command line: help with examples; bad input gives one line naming the fix, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntkit.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("ntkit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ntkit.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _one_line_error(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_help_says_what_it_does_with_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "lab" in out and "Example: ntkit lab" in out
    with pytest.raises(SystemExit):
        main(["lab", "--help"])
    out = capsys.readouterr().out
    for text in ("ntkit lab --quick", "--dataset", "csv:PATH", "npz:PATH", "mnist1d", "random-labels",
                 "--experiments", "--seed", "--device", "--out", "Zhang et al. 2017", "Arora et al. 2019"):
        assert text in out, text


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "nocol.csv").write_text("a,b\n1,2\n3,4\n")
    (d / "text.csv").write_text("a,label\nlow,1\nhigh,0\n")
    (d / "nan.csv").write_text("a,label\n1,0\n2,\n3,1\n")
    (d / "empty.csv").write_text("")
    (d / "oneclass.csv").write_text("a,label\n" + "".join(f"{i},1\n" for i in range(50)))
    rng = np.random.default_rng(0)
    rows = "\n".join(f"{rng.normal()},{rng.normal()},{i % 2}" for i in range(12))
    (d / "small.csv").write_text("u,v,label\n" + rows + "\n")
    rows = "\n".join(f"{rng.normal()},{rng.normal()},{i % 2}" for i in range(120))
    (d / "good.csv").write_text("u,v,label\n" + rows + "\n")
    np.savez(d / "nox.npz", y=np.ones(3))
    return d


def test_bad_input_in_a_real_process_is_one_line_without_traceback(files, tmp_path):
    proc = _run("lab", "--dataset", f"csv:{files / 'nocol.csv'}", "--target", "label",
                "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr)
    assert line.startswith("ntkit: error:") and "no column 'label'" in line and "--target" in line
    assert proc.stdout == "" and not (tmp_path / "r").exists()
    proc = _run("lab", "--experiments", "widht")
    assert proc.returncode == 2
    assert "choose from width" in _one_line_error(proc.stderr)


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (["--dataset", "csv:{d}/nocol.csv", "--target", "label"], "name the target column with --target"),
        (["--dataset", "csv:{d}/nocol.csv"], "no column 'target'"),
        (["--dataset", "csv:{d}/text.csv", "--target", "label"], "column 'a' is not numeric"),
        (["--classes", "3,12"], "class '12' is not in the target"),
        (["--arch", "cnn", "--dataset", "wine"], "--arch cnn needs images"),
        (["--image-shape", "7,7", "--dataset", "digits"], "product is 64"),
        (["--dataset", "csv:{d}/nan.csv", "--target", "label"], "drop or fill those rows"),
        (["--dataset", "csv:{d}/empty.csv"], "is empty"),
        (["--dataset", "csv:{d}/missing.csv"], "does not exist"),
        (["--dataset", "npz:{d}/nox.npz"], "numpy.savez(path, x=X, y=y)"),
        (["--dataset", "csv:{d}/small.csv", "--target", "label"], "use more data or leave 'width' out"),
        (["--dataset", "csv:{d}/oneclass.csv", "--target", "label"], "the lab needs two classes"),
        (["--dataset", "cifar10"], "use one of breast_cancer, digits"),
        (["--experiments", "width", "foo"], "unknown experiment 'foo'; choose from"),
        (["--seed", "-3"], "seed must be a non-negative integer"),
        (["--seed", "x"], "invalid int value"),
        (["--device", "tpu9"], "use cpu or cuda"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_input(files, tmp_path, capsys, args, fix):
    out = tmp_path / "report"
    assert _main(["lab", *[a.format(d=files) for a in args], "--out", str(out)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("ntkit")
    assert fix in line, line
    assert not out.exists()


def _main(argv: list[str]) -> int:
    """``main`` in-process; argparse's usage errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_csv_data_set_runs(files, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["lab", "--quick", "--dataset", f"csv:{files / 'good.csv'}", "--target", "label",
                 "--experiments", "width", "bound", "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["name"].endswith("good.csv")
    assert metrics["experiments"] == ["width", "bound"]
    assert "report written to" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "lab" in capsys.readouterr().out
