"""The report's PNGs, drawn in a helper process while the next experiments run.

Drawing the report's figures (matplotlib: tick layout, text, Agg rasterization) is pure
Python work of several seconds that does not depend on the experiments still to come, and
a computer running the lab has a second core. :class:`Renderer` starts one plain
``python`` process (no torch, no ntkit: only matplotlib) when the run starts; each
experiment's figures are pickled into a private temporary folder as soon as the experiment
ends, the helper draws them to PNG (exactly :func:`ntkit.lab.report.png_bytes`: ``dpi=100``,
no software metadata), and :meth:`Renderer.images` collects the files at the end.

Anything that goes wrong in the helper (it cannot start, a figure fails to unpickle or
draw, it dies) only means those figures are drawn in the lab's own process instead: the
report is the same either way.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: The helper: reads one pickle path per line from stdin, writes ``<path>.png`` next to it
#: and answers ``ok <path>`` (or ``error <path>``) on stdout; stops at end of input.
_HELPER = r"""
import io, pickle, sys
import matplotlib
matplotlib.use("Agg")
from matplotlib.backends.backend_agg import FigureCanvasAgg
for line in sys.stdin:
    path = line.strip()
    if not path:
        continue
    try:
        with open(path, "rb") as fh:
            fig = pickle.load(fh)
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        with open(path + ".png.part", "wb") as fh:
            fh.write(buf.getvalue())
        import os
        os.replace(path + ".png.part", path + ".png")
        print("ok", path, flush=True)
    except Exception as err:  # the lab draws this figure itself
        print("error", path, type(err).__name__, flush=True)
"""


class Renderer:
    """Draws figures to PNG bytes in a helper process (see the module docstring).

    ``submit(name, figure)`` as soon as a figure is final; ``images(figures)`` returns
    ``{name: png bytes}`` for every figure (drawing in this process whatever the helper
    did not deliver) and stops the helper. Also a context manager (stops the helper and
    removes its folder on exit).
    """

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ntkit-lab-figures-"))
        self.paths: dict[str, Path] = {}
        self.proc: subprocess.Popen | None = None
        try:
            env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
            env["MPLBACKEND"] = "Agg"
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _HELPER], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, text=True, env=env, cwd=self.folder,
            )
        except OSError:
            self.proc = None

    def submit(self, name: str, figure: Any) -> None:
        """Hand ``figure`` to the helper (a no-op without one; it is drawn here at the end)."""
        if self.proc is None or self.proc.poll() is not None or name in self.paths:
            return
        path = self.folder / f"{len(self.paths):03d}.pickle"
        try:
            with open(path, "wb") as fh:
                pickle.dump(figure, fh, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.write(f"{path}\n")
            self.proc.stdin.flush()
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            return
        self.paths[name] = path

    def images(self, figures: dict[str, Any]) -> dict[str, bytes]:
        """PNG bytes for every ``{name: figure}``: the helper's, or drawn here."""
        from .report import png_bytes

        self._finish()
        out = {}
        for name, fig in figures.items():
            png = self.paths.get(name)
            data = None
            if png is not None:
                try:
                    data = Path(f"{png}.png").read_bytes()
                except OSError:
                    data = None
            out[name] = data if data else png_bytes(fig)
        return out

    def _finish(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        """Stop the helper (if still running) and remove its folder."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
