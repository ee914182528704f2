"""Errors raised by ntkit.

Every error is a :class:`NtkitError`, itself a :class:`ValueError`, so callers that
already catch ``ValueError`` keep working.  Messages say what to change.
"""

from __future__ import annotations


class NtkitError(ValueError):
    """Base class of every error ntkit raises on bad input or an impossible request."""


class ShapeError(NtkitError):
    """An input has the wrong rank, or shapes that do not fit together."""


class NonFiniteError(NtkitError):
    """An input holds NaN or Inf."""


class ParameterError(NtkitError):
    """A layer or function argument is out of range (negative std, bad name, ...)."""


class DeviceError(NtkitError):
    """Inputs live on different devices; ntkit never copies silently."""


class SingularMatrixError(NtkitError):
    """A ridgeless solve met a singular (or numerically singular) kernel matrix."""


class MemoryBudgetError(NtkitError):
    """A request would need more memory than the budget allows."""


class ModelError(NtkitError):
    """A torch module cannot be used as asked (impure forward, no parameters, ...)."""


class DataError(NtkitError):
    """A data set cannot be loaded or is unfit for the requested experiment."""


class IllConditionedWarning(RuntimeWarning):
    """The kernel matrix is so ill-conditioned that the result may be meaningless."""
