"""The report's PNGs drawn by the helper process are the PNGs the lab draws itself."""

from __future__ import annotations

import threading

import numpy as np

from ntkit.lab.render import Renderer
from ntkit.lab.report import png_bytes
from ntkit.lab.results import new_figure


def _figure(k: int):
    fig, (ax, ax2) = new_figure(2, width=2.5, height=2.0)
    x = np.arange(1, 50)
    ax.plot(x, x ** -0.5 * (k + 1), "o-", label="a power law")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width m")
    ax.set_ylabel("error ‖K_m − K_∞‖")
    ax.legend()
    ax2.plot(x, np.sin(x / 5.0), color="C3")
    ax2.set_title("λ_min and η", fontsize=9)
    return fig


def test_helper_pngs_equal_the_lab_s_own_and_unpicklable_figures_are_drawn_here():
    figs = {f"f{k}": _figure(k) for k in range(2)}
    bad = _figure(9)
    bad.lock = threading.Lock()  # cannot be pickled: drawn in this process instead
    figs["bad"] = bad
    with Renderer() as renderer:
        assert renderer.proc is not None
        for name, fig in figs.items():
            renderer.submit(name, fig)
        assert "bad" not in renderer.paths and len(renderer.paths) == 2
        images = renderer.images(figs)
    for name, fig in figs.items():
        assert images[name] == png_bytes(fig), name
        assert images[name][:8] == b"\x89PNG\r\n\x1a\n"
    assert not renderer.folder.exists()


def test_without_a_helper_everything_is_drawn_here():
    fig = _figure(1)
    with Renderer() as renderer:
        renderer.proc.kill()
        renderer.proc.wait()
        renderer.submit("f", fig)
        assert renderer.images({"f": fig}) == {"f": png_bytes(fig)}
