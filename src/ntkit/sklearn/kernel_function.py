"""The infinite-width NTK/NNGP of ``nk.mlp`` as a scikit-learn kernel callable, and the
architecture/input checks shared by the estimators and the GP kernel of :mod:`ntkit.sklearn`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import as_tensor, check_choice, check_positive_int, check_std
from ..infinite import Layer, mlp

_KERNELS = ("ntk", "nngp")
_SQRT2 = math.sqrt(2.0)


def _architecture(depth: Any, activation: Any, W_std: Any, b_std: Any) -> Layer:
    """``mlp(depth, 1, activation, W_std, b_std)``: widths are irrelevant at infinite width."""
    return mlp(check_positive_int(depth, "depth"), 1, activation, W_std=W_std, b_std=b_std)


def _check_arch_params(depth, activation, W_std, b_std, kernel) -> Layer:
    """Validate the architecture parameters shared by every class here; return the arch."""
    check_choice(kernel, "kernel", _KERNELS)
    check_std(W_std, "W_std")
    check_std(b_std, "b_std", allow_none=True)
    return _architecture(depth, activation, W_std, b_std)


def _as_matrix(X: Any, name: str) -> torch.Tensor:
    """A float64 ``(n, d)`` tensor from an array-like (read-only arrays are copied first)."""
    if not isinstance(X, torch.Tensor):
        X = np.require(np.atleast_2d(np.asarray(X)), requirements="W")
    return as_tensor(X, name, min_ndim=2, max_ndim=2)


class NTKKernelFunction:
    """The infinite-width NTK (or NNGP) of ``nk.mlp(depth, ...)`` as a kernel callable.

    ``f(X, Y=None)`` returns the ``(n_X, n_Y)`` float64 NumPy kernel matrix (``Y=None``:
    ``k(X, X)``), the signature scikit-learn estimators expect from a callable kernel, e.g.
    ``SVC(kernel=ntk_kernel(depth=3))`` or ``KernelRidge(kernel=...)`` (which calls it
    on pairs of rows — slower). Build it with :func:`ntk_kernel`. Picklable and
    comparable (``==`` compares the parameters), so it works inside ``GridSearchCV``
    grids: ``{"kernel": [ntk_kernel(depth=d) for d in range(1, 6)]}``.
    """

    def __init__(
        self,
        depth: int = 3,
        activation: str = "relu",
        W_std: float = _SQRT2,
        b_std: float | None = 0.1,
        kernel: str = "ntk",
    ) -> None:
        self.arch = _check_arch_params(depth, activation, W_std, b_std, kernel)
        self.depth, self.activation, self.W_std, self.b_std = depth, activation, W_std, b_std
        self.kernel = kernel

    def _params(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "activation": self.activation,
            "W_std": self.W_std,
            "b_std": self.b_std,
            "kernel": self.kernel,
        }

    def __call__(self, X: Any, Y: Any = None) -> np.ndarray | float:
        """``k(X, Y)`` ``(n_X, n_Y)``; two single rows ``(d,)`` give a float (the pairwise
        metric convention of ``sklearn.metrics.pairwise_kernels``, used by ``KernelRidge``)."""
        x1 = _as_matrix(X, "X")
        x2 = None if Y is None else _as_matrix(Y, "Y")
        K = self.arch.kernel(x1, x2, get=self.kernel).numpy()
        if Y is not None and np.ndim(X) == 1 and np.ndim(Y) == 1:
            return float(K[0, 0])
        return K

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._params() == self._params()

    def __hash__(self) -> int:
        return hash(tuple(self._params().items()))

    def __repr__(self) -> str:
        defaults = {"depth": 3, "activation": "relu", "W_std": _SQRT2, "b_std": 0.1, "kernel": "ntk"}
        shown = {k: v for k, v in self._params().items() if k == "depth" or v != defaults[k]}
        return "ntk_kernel(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def ntk_kernel(
    depth: int = 3,
    activation: str = "relu",
    W_std: float = _SQRT2,
    b_std: float | None = 0.1,
    kernel: str = "ntk",
) -> NTKKernelFunction:
    """A kernel callable ``f(X, Y) -> ndarray`` for ``SVC(kernel=...)``.

    Args:
        depth: number of Dense layers of ``nk.mlp`` including the readout (>= 1).
        activation: activation name (``"relu"``, ``"erf"``, ``"abs"``, ``"tanh"``, ...).
        W_std: weight standard deviation (NTK parameterization), >= 0.
        b_std: bias standard deviation, or ``None`` for no bias.
        kernel: ``"ntk"`` (trained network) or ``"nngp"`` (network at initialization,
            readout-only training).

    Returns:
        An :class:`NTKKernelFunction`; ``f(X, Y)`` is ``(n_X, n_Y)`` float64.

    Example:
        >>> SVC(kernel=ntk_kernel(depth=4), C=10).fit(X, y)
    """
    return NTKKernelFunction(depth, activation, W_std, b_std, kernel)
