"""The command line runs the lab and reports errors without tracebacks."""

from __future__ import annotations

import json

from ntkit.cli import main


def test_lab_quick_writes_metrics_with_the_width_effect(tmp_path, capsys):
    assert main(["lab", "--quick", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    errors = metrics["width"]["relative_error"]
    assert errors[-1] < errors[0]
    assert -0.9 < metrics["width"]["slope"] < -0.3
    assert "slope" in capsys.readouterr().out
