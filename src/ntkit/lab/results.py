"""What an experiment returns: results, figures with their readings, summary rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure


@dataclass
class LabFigure:
    """One figure of the report: a file stem, a title, the figure and its reading.

    ``reading`` is one paragraph, generated from the metrics, that says what the figure
    shows and the numbers behind it.
    """

    name: str
    title: str
    figure: Figure
    reading: str


@dataclass
class SummaryRow:
    """One line of the terminal summary: what was measured, its value, what theory says."""

    measure: str
    value: str
    expected: str


@dataclass
class ExperimentResult:
    """What an experiment returns: JSON-ready metrics, figures, summary lines, and the
    checked claims of its readings with the status they give
    (:func:`ntkit.lab.readings.status`: ``reproduced`` / ``not reproduced`` /
    ``inconclusive``, and the reason)."""

    name: str
    title: str
    intro: str
    metrics: dict[str, Any]
    figures: list[LabFigure] = field(default_factory=list)
    summary: list[SummaryRow] = field(default_factory=list)
    claims: list[Any] = field(default_factory=list)

    @property
    def status(self) -> tuple[str, str]:
        from .readings import status

        return status(self.claims)


def new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.0) -> tuple[Figure, Any]:
    """A matplotlib figure (Agg canvas, no pyplot state) with ``ncols`` axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width * ncols if ncols > 1 else width, height), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes
