"""The lab's file handling and data messages (issue 12, items 8 and 9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ntkit import lab
from ntkit.cli import main
from ntkit.data import load_dataset
from ntkit.errors import DataError, NtkitError, ParameterError

TINY = {"width_seeds": 2, "width_points": 20, "n_train": 60, "n_test": 30, "lazy_steps": 20,
        "lazy_widths": (32, 128), "rl_max_steps": 200, "spectrum_steps": 20, "spectrum_width": 128,
        "width_two_layer": (32, 128), "width_deep": (32, 64), "rl_width": 128}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ data files
def test_npz_path_holding_a_plain_npy_array_is_a_data_error(tmp_path, capsys):
    np.save(tmp_path / "plain.npy", np.ones((5, 2)))
    with pytest.raises(DataError, match=r"single array.*numpy\.savez"):
        load_dataset(f"npz:{tmp_path / 'plain.npy'}")
    assert main(["lab", "--dataset", f"npz:{tmp_path / 'plain.npy'}", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "numpy.savez" in err


def test_complex_npz_is_a_data_error(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.ones((5, 2)) + 1j, y=np.arange(5))
    with pytest.raises(DataError, match="complex"):
        load_dataset(f"npz:{tmp_path / 'c.npz'}")


@pytest.mark.parametrize("marker", ["NA", "N/A", "null", "?", "nan"])
def test_csv_missing_value_markers_are_reported_as_missing(tmp_path, marker):
    (tmp_path / "d.csv").write_text(f"a,b,label\n1,2,0\n{marker},3,1\n4,5,0\n")
    with pytest.raises(DataError, match=r"missing or non-finite values \(line 3\)"):
        load_dataset(f"csv:{tmp_path / 'd.csv'}", target="label")


def test_duplicated_training_rows_are_named(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    x[40:] = x[:40]  # every example twice: the training set surely holds a pair
    np.savez(tmp_path / "dup.npz", x=x, y=np.arange(80) % 2)
    with pytest.raises(DataError, match=r"rows \d+ and \d+.*Remove the duplicated") as info:
        lab.run(["bound"], dataset=f"npz:{tmp_path / 'dup.npz'}", quick=True,
                sizes={**TINY, "n_train": 56})
    import re

    a, b = map(int, re.search(r"rows (\d+) and (\d+)", str(info.value)).groups())
    assert abs(a - b) == 40  # the rows named are a duplicated pair of the file
    assert "pinv" not in str(info.value) and "ridge" not in str(info.value)


def test_empty_experiment_list_is_refused(capsys):
    with pytest.raises(ParameterError, match="no experiment named"):
        lab.run(",")
    assert main(["lab", "--experiments", ",", "--out", "unused"]) == 2
    assert "no experiment named" in capsys.readouterr().err


# ------------------------------------------------------------------ the report folder
@pytest.mark.parametrize("user_files", [{"figures/mine.png": b"png"}, {"config.json": b"{}"},
                                        {"figures/a.txt": b"t", "metrics.json": b"[]"}])
def test_a_users_folder_with_report_like_names_is_never_replaced(tmp_path, user_files):
    out = tmp_path / "mine"
    for name, data in user_files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    with pytest.raises(NtkitError, match="holds other files"):
        lab.run(["width"], quick=True, sizes=TINY, out=out)
    assert _tree(out) == user_files


def test_a_user_file_added_to_an_old_report_is_not_deleted(tmp_path):
    out = tmp_path / "report"
    lab.run(["width"], quick=True, sizes=TINY, out=out)
    for extra in ("notes.txt", "figures/annotated.png"):
        (out / extra).write_text("mine")
        before = _tree(out)
        with pytest.raises(NtkitError, match=r"files the lab did not write \(" + extra):
            lab.run(["width"], quick=True, sizes=TINY, out=out)
        assert _tree(out) == before
        (out / extra).unlink()
    lab.run(["bound"], quick=True, sizes=TINY, out=out)  # a clean report is replaced as before
    assert "bound" in (out / "metrics.json").read_text()


def test_out_symlink_writes_into_its_target(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    res = lab.run(["width"], quick=True, sizes=TINY, out=link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert (target / "report.html").is_file()
    assert res.out == target
    lab.run(["bound"], quick=True, sizes=TINY, out=link)  # replacing keeps the link
    assert link.is_symlink() and "bound" in (target / "metrics.json").read_text()


@pytest.mark.parametrize("when", ["writing", "experiment"])
def test_sigterm_leaves_no_temporary_folder(tmp_path, when):
    """SIGTERM while the report is written, or while an experiment runs (the figure helper
    process and its folder exist then): no report, no .r.tmp-* folder, no temp folder left."""
    patch = {
        "writing": "from ntkit.lab import report as m; real = m._write_files; name = '_write_files'",
        "experiment": "from ntkit.lab import width as m; real = m.run; name = 'run'",
    }[when]
    script = textwrap.dedent(f"""
        import os, signal, time
        from ntkit import lab
        {patch}
        def slow(*args):
            real(*args)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        setattr(m, name, slow)
        lab.run(["width"], quick=True, sizes={TINY!r}, out={str(tmp_path / 'r')!r})
    """)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)})
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]  # no report, no .r.tmp-* folder
    # the figure helper's folder is gone (torch may leave its own compile cache there)
    assert [p.name for p in tmp.iterdir() if p.name.startswith("ntkit")] == []


def test_ctrl_c_while_the_package_loads_exits_quietly():
    # Ctrl-C during `import ntkit` in the `ntkit` command: simulated by a SIGINT sent when
    # torch starts to load.
    script = textwrap.dedent("""
        import os, signal, sys
        sys.argv[0] = "/usr/bin/ntkit"
        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    os.kill(os.getpid(), signal.SIGINT)
                return None
        sys.meta_path.insert(0, Interrupt())
        import ntkit.cli
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == 130
    assert "Traceback" not in proc.stderr and proc.stderr.strip() == "ntkit: interrupted"
