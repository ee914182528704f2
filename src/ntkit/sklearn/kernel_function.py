"""The infinite-width NTK/NNGP of ``nk.mlp`` (or of any ntkit architecture) as a scikit-learn
kernel callable, and the architecture/input checks shared by the estimators and the GP kernel
of :mod:`ntkit.sklearn`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import as_tensor, check_choice, check_positive_int, check_std
from ..errors import ParameterError, ShapeError
from ..infinite import Layer, mlp
from ..infinite.fixed import fix_layers as _fix

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


_MLP_DEFAULTS = {"depth": 3, "activation": "relu", "W_std": _SQRT2, "b_std": 0.1}


def check_input_shape(input_shape: Any) -> tuple[int, ...] | None:
    """``None`` or a tuple of positive ints (one example's shape, e.g. ``(C, H, W)``)."""
    if input_shape is None:
        return None
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if not shape or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
        raise ParameterError(
            f"input_shape must be None or a tuple of positive ints such as (C, H, W), got {input_shape!r}"
        )
    return tuple(int(s) for s in shape)


def network(arch: Any, depth: Any, activation: Any, W_std: Any, b_std: Any, kernel: Any,
            fix_layers: Any = 0) -> Layer:
    """The architecture the estimators use: ``arch`` (or ``nk.mlp``) with ``fix_layers`` applied.

    Raises ParameterError for ``arch`` that is not an ntkit layer, ``arch`` together with
    non-default ``depth``/``activation``/``W_std``/``b_std`` (they describe the built-in
    ``mlp`` only), ``fix_layers > 0`` with ``kernel="nngp"`` (the NNGP does not depend on
    which layers are trained) and ``fix_layers`` out of range (:func:`ntkit.infinite.fixed.fix_layers`).
    """
    check_choice(kernel, "kernel", _KERNELS)
    if isinstance(fix_layers, bool) or not isinstance(fix_layers, (int, np.integer)) or fix_layers < 0:
        raise ParameterError(f"fix_layers must be an integer >= 0, got {fix_layers!r}")
    if fix_layers and kernel == "nngp":
        raise ParameterError(
            f"fix_layers={fix_layers} changes only the NTK (which layers are trained); the NNGP "
            "is the kernel of the network at initialization. Use kernel='ntk' with fix_layers, or "
            "fix_layers=0 with kernel='nngp'"
        )
    if arch is None:
        net = _check_arch_params(depth, activation, W_std, b_std, kernel)
    else:
        if not isinstance(arch, Layer):
            raise ParameterError(
                f"arch must be an ntkit architecture (nk.serial(...), nk.mlp(...)), got {arch!r}"
            )
        given = {"depth": depth, "activation": activation, "W_std": W_std, "b_std": b_std}
        changed = [k for k, v in given.items() if not _same(v, _MLP_DEFAULTS[k])]
        if changed:
            raise ParameterError(
                f"arch= describes the whole network, so {', '.join(changed)} (parameters of the "
                "built-in nk.mlp) would be ignored; leave them at their defaults, or drop arch= "
                "to use the mlp"
            )
        net = arch
    return _fix(net, int(fix_layers))


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # pragma: no cover - exotic values
        return a is b


class NTKKernelFunction:
    """The infinite-width NTK (or NNGP) of ``nk.mlp(depth, ...)``, or of ``arch``, as a kernel callable.

    ``f(X, Y=None)`` returns the ``(n_X, n_Y)`` float64 NumPy kernel matrix (``Y=None``:
    ``k(X, X)``), the signature scikit-learn estimators expect from a callable kernel, e.g.
    ``SVC(kernel=ntk_kernel(depth=3))`` or ``KernelRidge(kernel=...)`` (which calls it
    on pairs of rows — slower). Build it with :func:`ntk_kernel`. Picklable and
    comparable (``==`` compares the parameters), so it works inside ``GridSearchCV``
    grids: ``{"kernel": [ntk_kernel(depth=d) for d in range(1, 6)]}``.

    Rows are flat ``(n, d)``; with ``input_shape`` each row is reshaped to ``(n, *input_shape)``
    (``prod(input_shape) = d``, e.g. images ``(C, H, W)`` for a convolutional ``arch``).
    ``.arch`` is the architecture evaluated (``fix_layers`` applied).
    """

    def __init__(
        self,
        depth: int = 3,
        activation: str = "relu",
        W_std: float = _SQRT2,
        b_std: float | None = 0.1,
        kernel: str = "ntk",
        fix_layers: int = 0,
        arch: Layer | None = None,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.arch = network(arch, depth, activation, W_std, b_std, kernel, fix_layers)
        self.depth, self.activation, self.W_std, self.b_std = depth, activation, W_std, b_std
        self.kernel = kernel
        self.fix_layers = fix_layers
        self.base_arch = arch
        self.input_shape = check_input_shape(input_shape)

    def _params(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "activation": self.activation,
            "W_std": self.W_std,
            "b_std": self.b_std,
            "kernel": self.kernel,
            "fix_layers": self.fix_layers,
            "arch": self.base_arch,
            "input_shape": self.input_shape,
        }

    def inputs(self, X: Any, name: str = "X") -> torch.Tensor:
        """Flat rows ``(n, d)`` as the float64 tensor the architecture takes, ``(n, *input_shape)``."""
        x = _as_matrix(X, name)
        if self.input_shape is None:
            return x
        if int(np.prod(self.input_shape)) != x.shape[1]:
            raise ShapeError(
                f"input_shape={self.input_shape} holds {int(np.prod(self.input_shape))} values per "
                f"example but {name} has {x.shape[1]} features; pass the shape of one example "
                "(e.g. (C, H, W) with C·H·W = the number of columns)"
            )
        return x.reshape(x.shape[0], *self.input_shape)

    def __call__(self, X: Any, Y: Any = None) -> np.ndarray | float:
        """``k(X, Y)`` ``(n_X, n_Y)``; two single rows ``(d,)`` give a float (the pairwise
        metric convention of ``sklearn.metrics.pairwise_kernels``, used by ``KernelRidge``)."""
        x1 = self.inputs(X, "X")
        x2 = None if Y is None else self.inputs(Y, "Y")
        K = self.arch.kernel(x1, x2, get=self.kernel)
        if K.ndim != 2:
            raise ShapeError(
                f"the architecture's kernel has shape {tuple(K.shape)}, not one number per pair "
                "of examples: end it with a readout (e.g. nk.GlobalAvgPool() or nk.Flatten(), "
                "then nk.Dense(1))"
            )
        K = K.numpy()
        if Y is not None and np.ndim(X) == 1 and np.ndim(Y) == 1:
            return float(K[0, 0])
        return K

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._params() == self._params()

    def __hash__(self) -> int:
        return hash(tuple((k, id(v) if isinstance(v, Layer) else v) for k, v in self._params().items()))

    def __repr__(self) -> str:
        defaults = {**_MLP_DEFAULTS, "kernel": "ntk", "fix_layers": 0, "arch": None, "input_shape": None}
        shown = {k: v for k, v in self._params().items()
                 if (k == "depth" and self.base_arch is None) or not _same(v, defaults[k])}
        return "ntk_kernel(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def ntk_kernel(
    depth: int = 3,
    activation: str = "relu",
    W_std: float = _SQRT2,
    b_std: float | None = 0.1,
    kernel: str = "ntk",
    fix_layers: int = 0,
    arch: Layer | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> NTKKernelFunction:
    """A kernel callable ``f(X, Y) -> ndarray`` for ``SVC(kernel=...)``.

    Args:
        depth: number of Dense layers of ``nk.mlp`` including the readout (>= 1).
        activation: activation name (``"relu"``, ``"erf"``, ``"abs"``, ``"tanh"``, ...).
        W_std: weight standard deviation (NTK parameterization), >= 0.
        b_std: bias standard deviation, or ``None`` for no bias.
        kernel: ``"ntk"`` (trained network) or ``"nngp"`` (network at initialization,
            readout-only training).
        fix_layers: the first ``fix_layers`` layers stay at initialization (NTK of the top
            layers only; :func:`ntkit.infinite.fixed.fix_layers`, Arora et al. 2020).
        arch: any ntkit architecture instead of the mlp (``depth``/``activation``/``W_std``/
            ``b_std`` must then stay at their defaults).
        input_shape: one example's shape for ``arch`` (rows are reshaped to it).

    Returns:
        An :class:`NTKKernelFunction`; ``f(X, Y)`` is ``(n_X, n_Y)`` float64.

    Raises:
        ParameterError: invalid parameters or combinations (see :func:`network`).

    Example:
        >>> SVC(kernel=ntk_kernel(depth=4), C=10).fit(X, y)
    """
    return NTKKernelFunction(depth, activation, W_std, b_std, kernel, fix_layers, arch, input_shape)
