"""What the experiments share, by job (kept as one import point for existing code).

- :mod:`.results`: :class:`ExperimentResult`, :class:`LabFigure`, :class:`SummaryRow`,
  :func:`new_figure`;
- :mod:`.context`: the run :class:`Context`;
- :mod:`.numbers`: rounding and formatting (:func:`r`, :func:`rl`, :func:`fmt`) and small
  statistics (:func:`loglog_slope`, :func:`rel`, :func:`checkpoints`, :func:`error_rate`);
- :mod:`.training`: the lecture's nets and full-batch training (:func:`lecture_net`,
  :func:`train_mse`, :func:`steps_to_fit`, :func:`lecture_learning_rate`, :func:`flat_params`);
- :mod:`.corrupted`: partly random labels (:func:`corrupted_labels`); :mod:`.fits`: the
  nets fitted to them and to randomized inputs (:func:`corrupted_fit`);
- :mod:`.readings`: the rules that check every sentence of a reading; :mod:`.models`: the
  ``fc`` / ``cnn`` networks of ``--arch``.
"""

from .context import Context
from .corrupted import corrupted_labels
from .fits import corrupted_fit
from .numbers import checkpoints, error_rate, fmt, loglog_slope, r, rel, rl
from .results import ExperimentResult, LabFigure, SummaryRow, new_figure
from .training import flat_params, lecture_learning_rate, lecture_net, steps_to_fit, train_mse

__all__ = [
    "Context",
    "ExperimentResult",
    "LabFigure",
    "SummaryRow",
    "checkpoints",
    "corrupted_fit",
    "corrupted_labels",
    "error_rate",
    "flat_params",
    "fmt",
    "lecture_learning_rate",
    "lecture_net",
    "loglog_slope",
    "new_figure",
    "r",
    "rel",
    "rl",
    "steps_to_fit",
    "train_mse",
]
