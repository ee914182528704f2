"""Errors and warnings of :mod:`ntkit.linalg`.

Both derive from ntkit's own hierarchy (:class:`~ntkit.errors.NtkitError` is a
``ValueError``), so callers that catch ntkit errors catch these too.
"""

from __future__ import annotations

from ..errors import NtkitError


class ClusterError(NtkitError):
    """A Dask cluster could not be reached, or it failed a computation."""


class ConvergenceWarning(RuntimeWarning):
    """An iterative solver stopped at its iteration cap before reaching its tolerance.

    The message states the relative residual ``max_j ‖b_j − A x_j‖ / ‖b_j‖`` achieved.
    """
