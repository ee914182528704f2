"""The lab: the lecture's experiments on real data — one command, one report.

``ntkit lab`` (or :func:`run` / :func:`run_all` from Python) runs, on a two-class subset of
an embedded data set (scikit-learn's digits by default: the digits 3 and 1, see
:mod:`ntkit.lab.dataset`):

- ``width`` (:mod:`ntkit.lab.width`): the empirical NTK converges to the analytic one as
  the width grows, error ``∝ m^{-1/2}`` (Jacot et al. 2018);
- ``lazy`` (:mod:`ntkit.lab.lazy`): wide nets trained by gradient descent barely move
  their weights and kernel and track their linearization (Lee et al. 2019);
- ``random-labels`` (:mod:`ntkit.lab.random_labels`): nets fit random labels and random
  inputs, but more slowly, and the test error rises with the corruption (Zhang et al. 2017);
- ``bound`` (:mod:`ntkit.lab.bound`): ``sqrt(2yᵀH⁻¹y/n)`` and ``λ_min(H)`` against the
  corruption, beside the measured test error (Arora et al. 2019);
- ``spectrum`` (:mod:`ntkit.lab.spectrum`): the NTK's eigenvalues, the projections of true
  and random labels on its eigenvectors, and the loss curve predicted from the spectrum
  against the measured ones (Arora et al. 2019).

Each experiment module has ``run(ctx) -> ExperimentResult`` (metrics, figures with a
reading generated from the metrics, summary lines). :func:`run` writes ``report.html``
(self-contained), ``figures/*.png``, ``metrics.json`` and ``config.json`` atomically into
``out`` (:mod:`ntkit.lab.report`).

Example:
    >>> import ntkit as nk
    >>> res = nk.lab.run("width", quick=True)
    >>> res["width"].metrics["two_layer"]["slope"]          # ≈ -0.5
    >>> nk.lab.run_all(out="lab-report")                     # what `ntkit lab` does
"""

from . import bound, lazy, random_labels, report, spectrum, width
from .config import EXPERIMENT_NAMES, Sizes
from .results import ExperimentResult, LabFigure, SummaryRow
from .runner import LabResult, resolve_experiments, run, run_all

__all__ = [
    "EXPERIMENT_NAMES",
    "ExperimentResult",
    "LabFigure",
    "LabResult",
    "Sizes",
    "SummaryRow",
    "bound",
    "lazy",
    "random_labels",
    "report",
    "resolve_experiments",
    "run",
    "run_all",
    "spectrum",
    "width",
]
