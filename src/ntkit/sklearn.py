r"""scikit-learn estimators and kernels built on the infinite-width NTK / NNGP.

The architecture is a fully-connected network ``nk.mlp(depth, ...)`` in the NTK
parameterization (DESIGN.md): ``depth`` Dense layers counting the readout, so ``depth=1`` is
the linear kernel ``<x, x'>/d`` (+ ``b_std²``) and ``depth=3`` has two hidden layers. The
widths do not matter: these are the infinite-width kernels.

* :class:`NTKRegressor` — kernel regression on the NTK (or NNGP), i.e. the prediction of an
  infinitely wide network trained by gradient flow on the MSE to time ``t``
  (``t=None``: to convergence, :func:`ntkit.predict.kernel_regression`; finite ``t``:
  :func:`ntkit.predict.gradient_descent_mse`). Multi-output targets are supported.
* :class:`NTKClassifier` — the same regression on one-hot (0/1) targets, predicting the
  class of the largest output.
* Both take ``kernel="precomputed"`` (like ``SVC``): ``fit(k(X, X), y)``,
  ``predict(k(X_test, X))`` — for any other ntkit kernel (convolutional, empirical).
* :func:`ntk_kernel` — a picklable callable ``f(X, Y) -> ndarray`` for
  ``sklearn.svm.SVC(kernel=ntk_kernel(depth=3))`` and other estimators taking a kernel
  callable (the NTK-SVM of Arora et al. 2020).
* :class:`NTK` — a :class:`sklearn.gaussian_process.kernels.Kernel` for
  ``GaussianProcessRegressor``, with hyperparameters ``W_std`` and ``b_std`` optimized in
  log-space; gradients come from torch autograd through the kernel recursion.

Inputs are not standardized here (as with every scikit-learn kernel method): put a
``StandardScaler`` in front, ``make_pipeline(StandardScaler(), NTKClassifier())``.
The input kernel is ``<x, x'>/d``, so standardized features give ``k(x, x) ≈ 1`` at the
input and the defaults ``W_std=√2`` (variance preserved by ReLU), ``b_std=0.1`` keep every
layer at that scale.

Example:
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from ntkit.sklearn import NTKClassifier
    >>> clf = make_pipeline(StandardScaler(), NTKClassifier(depth=3)).fit(X, y)
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.gaussian_process.kernels import Hyperparameter
from sklearn.gaussian_process.kernels import Kernel as _SKKernel
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def validate_data(_estimator, /, X="no_validation", y="no_validation", reset=True, **kw):
        return _estimator._validate_data(X, y, reset=reset, **kw)


from ._validation import as_tensor, check_choice, check_nonnegative, check_positive_int
from .errors import DataError, NonFiniteError, ParameterError, ShapeError
from .infinite import ABReLU, Erf, Identity, Layer, mlp
from .infinite.activations import activation_from_name
from .linalg import KernelOperator, solve
from .predict import gradient_descent_mse, kernel_regression

__all__ = ["NTK", "NTKClassifier", "NTKKernelFunction", "NTKRegressor", "ntk_kernel"]

_KERNELS = ("ntk", "nngp")
_SOLVERS = ("auto", "cholesky", "cg", "nystrom")
_ITERATIVE = ("cg", "nystrom")
_SQRT2 = math.sqrt(2.0)
#: Activations whose kernel has a closed form (exact gradients in :class:`NTK`).
_CLOSED_FORM = (ABReLU, Erf, Identity)


def _architecture(depth: Any, activation: Any, W_std: Any, b_std: Any) -> Layer:
    """``mlp(depth, 1, activation, W_std, b_std)``: widths are irrelevant at infinite width."""
    return mlp(check_positive_int(depth, "depth"), 1, activation, W_std=W_std, b_std=b_std)


def _check_arch_params(depth, activation, W_std, b_std, kernel) -> Layer:
    """Validate the architecture parameters shared by every class here; return the arch."""
    check_choice(kernel, "kernel", _KERNELS)
    check_nonnegative(W_std, "W_std")
    check_nonnegative(b_std, "b_std", allow_none=True)
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


# ------------------------------------------------------------------------------- estimators
class _NTKEstimator(BaseEstimator):
    """Shared fit/predict of :class:`NTKRegressor` and :class:`NTKClassifier`.

    Fitted state: ``X_fit_`` (training inputs) and ``dual_coef_`` with
    ``f(x) = k(x, X_fit_) @ dual_coef_``. ``dual_coef_`` is obtained from the solvers of
    :mod:`ntkit.predict` by evaluating their predictor at "test points" whose test-train
    kernel rows are the unit vectors (``k_test_train = I``): both predictors are linear in
    ``k_test_train`` (outputs at initialization are zero), so this returns exactly
    ``(H + ridge·I)⁻¹ y`` for ``t=None`` and ``H⁻¹(I − e^{−(H+ridge)t/n}) y``-type
    coefficients for finite ``t``.
    """

    def __init__(
        self,
        depth: int = 3,
        activation: str = "relu",
        W_std: float = _SQRT2,
        b_std: float | None = 0.1,
        kernel: str = "ntk",
        t: float | None = None,
        ridge: float = 1e-6,
        solver: str = "auto",
    ) -> None:
        self.depth = depth
        self.activation = activation
        self.W_std = W_std
        self.b_std = b_std
        self.kernel = kernel
        self.t = t
        self.ridge = ridge
        self.solver = solver

    def _check_solver_params(self) -> None:
        check_choice(self.kernel, "kernel", (*_KERNELS, "precomputed"))
        if self.t is not None:
            if isinstance(self.t, bool) or not isinstance(self.t, Real) or math.isnan(self.t):
                raise ParameterError(f"t must be None or a number >= 0, got {self.t!r}")
            if self.t < 0:
                raise ParameterError(f"t must be >= 0 (training time), got {self.t}")
        check_nonnegative(self.ridge, "ridge")
        check_choice(self.solver, "solver", _SOLVERS)
        if self.solver in _ITERATIVE and self.t is not None and not math.isinf(self.t):
            raise ParameterError(
                f"solver={self.solver!r} solves the t=None (converged) problem; a finite t needs "
                "the eigendecomposition of the kernel: use solver='auto' or 'cholesky'"
            )

    def _fit_dual(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Validate the parameters, build the kernel of ``X`` and solve for ``dual_coef_``."""
        self._check_solver_params()
        if self.kernel == "precomputed":
            if X.shape[0] != X.shape[1]:
                raise ShapeError(
                    f"with kernel='precomputed', X must be the square training kernel "
                    f"k(X_train, X_train), got a {X.shape[0]}x{X.shape[1]} matrix"
                )
            fn, H = None, torch.from_numpy(np.array(X, dtype=np.float64))
        else:
            fn = NTKKernelFunction(self.depth, self.activation, self.W_std, self.b_std, self.kernel)
            if self.solver in _ITERATIVE:  # tiles under a budget, never the dense n×n matrix
                H = KernelOperator(fn.arch, _as_matrix(X, "X"), get=self.kernel)
            else:
                H = fn.arch.kernel(_as_matrix(X, "X"), get=self.kernel)
        ridge = float(self.ridge)
        if self.solver in _ITERATIVE:
            dual = solve(H, Y, solver=self.solver, ridge=ridge)
        else:
            eye = torch.eye(X.shape[0], dtype=H.dtype)
            if self.t is None or math.isinf(self.t):
                dual = kernel_regression(H, Y, eye, ridge=ridge)
            else:
                dual = gradient_descent_mse(H, Y, ridge=ridge).test(float(self.t), eye)
        self.kernel_function_ = fn
        # A copy (the user may mutate X); None with a precomputed kernel, as SVC keeps none.
        self.X_fit_ = None if fn is None else np.array(X, dtype=np.float64, order="C")
        self.dual_coef_ = dual.numpy()

    def _outputs(self, X: Any) -> np.ndarray:
        """Regression outputs ``k(X, X_fit_) @ dual_coef_``, ``(m,)`` or ``(m, o)``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        K = X if self.kernel_function_ is None else self.kernel_function_(X, self.X_fit_)
        return K @ self.dual_coef_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = self.kernel == "precomputed"
        return tags


_PARAMS_DOC = """
    Args:
        depth: number of Dense layers of ``nk.mlp`` including the readout (>= 1);
            ``depth=1`` is the linear kernel. Arora et al. (2020) choose it by CV in 1..5.
        activation: activation name (``"relu"``, ``"erf"``, ``"abs"``, ``"tanh"``, ...)
            or an ntkit activation layer.
        W_std: weight standard deviation (NTK parameterization). ``√2`` keeps ReLU layers
            at the input's scale.
        b_std: bias standard deviation, ``None`` for no bias. A small bias (default 0.1)
            lets the kernel model an offset; the regression has no separate intercept.
        kernel: ``"ntk"`` (all layers trained), ``"nngp"`` (only the readout trained;
            the NNGP posterior mean) or ``"precomputed"``: ``fit`` takes the training kernel
            ``k(X, X)`` ``(n, n)`` instead of ``X`` and ``predict`` takes ``k(X_test, X)``
            ``(m, n)`` — any kernel, e.g. a convolutional NTK from ``arch.kernel`` or an
            empirical NTK (as ``SVC(kernel="precomputed")``; ``depth``, ``activation``,
            ``W_std`` and ``b_std`` are then unused).
        t: gradient-flow training time, or ``None`` (default) for ``t = ∞`` (kernel
            regression). Time is in the units of :func:`ntkit.predict.gradient_descent_mse`:
            loss ``(1/2n)‖f − y‖²``, so ``df/dt = −(1/n)H(f − y)`` on the training set
            (``ridge`` adds weight decay); the eigenmode of ``H`` with eigenvalue ``λ`` is
            learned once ``t ≳ n/λ``. A finite ``t`` is early stopping, a regularizer (tune
            it on a log grid).
        ridge: ``>= 0`` added to the diagonal of ``H = k(X, X)`` as is (like
            ``KernelRidge(alpha=...)`` and :func:`ntkit.predict.kernel_regression`). On
            standardized inputs the NTK diagonal is ≈ ``depth`` with the default ``W_std``, so
            the default ``1e-6`` gives a near-interpolating fit that still solves when rows
            are duplicated; larger values regularize (tune on a log grid, e.g. 1e-6..1).
        solver: how ``dual_coef_`` is solved for: ``"auto"``/``"cholesky"`` (the dense
            kernel, Cholesky; required for a finite ``t``), ``"cg"`` (preconditioned
            conjugate gradients) or ``"nystrom"`` (Nyström/Falkon with ``min(n, 5000)``
            centres; ``dual_coef_`` is zero off the centres), both from
            :func:`ntkit.linalg.solve` on a :class:`~ntkit.linalg.KernelOperator` (tiles
            under its default memory budget: the dense ``n × n`` matrix is never formed;
            with ``kernel="precomputed"`` they run on the given matrix). For large ``n``.
"""


class NTKRegressor(RegressorMixin, _NTKEstimator):
    __doc__ = (
        """Kernel regression with the infinite-width NTK (or NNGP) of a fully-connected net.

    ``predict(x) = k(x, X) (H + ridge·I)⁻¹ y`` for ``t=None`` — the output of an infinitely
    wide network trained to convergence by gradient descent on the MSE, started from zero
    outputs (Jacot et al. 2018; Lee et al. 2019) — or the gradient-flow prediction at a
    finite time ``t``. Solved by :func:`ntkit.predict.kernel_regression` /
    :func:`ntkit.predict.gradient_descent_mse` in float64. ``y`` may be ``(n,)`` or
    ``(n, o)`` (multi-output; one shared kernel); predictions have the same layout.
    """
        + _PARAMS_DOC
        + """
    Attributes:
        X_fit_: ``(n, d)`` training inputs (float64); ``None`` with a precomputed kernel.
        dual_coef_: ``(n,)`` or ``(n, o)``: ``predict(x) = k(x, X_fit_) @ dual_coef_``.
        kernel_function_: the :class:`NTKKernelFunction` used (``None`` if precomputed).
        n_features_in_, feature_names_in_: as every scikit-learn estimator (the latter only
            for inputs with string column names, e.g. pandas DataFrames).
    """
    )

    def fit(self, X: Any, y: Any) -> NTKRegressor:
        """Fit on ``X`` ``(n, d)`` and targets ``y`` ``(n,)`` or ``(n, o)``."""
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True)
        self._fit_dual(X, np.asarray(y, dtype=np.float64))
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predictions ``(m,)`` or ``(m, o)`` (the layout of the training ``y``)."""
        return self._outputs(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class NTKClassifier(ClassifierMixin, _NTKEstimator):
    __doc__ = (
        """Classification by NTK (or NNGP) kernel regression on one-hot targets.

    The labels (any hashable values: ints, strings, ...) are encoded as the sorted
    ``classes_``; the regression of :class:`NTKRegressor` is fitted to the one-hot 0/1
    indicator matrix ``Y`` ``(n, C)`` and ``predict`` returns the class with the largest
    output ``F(x) = k(x, X)(H + ridge·I)⁻¹ Y`` (the classifier of Arora et al. 2020 and Lee
    et al. 2019; shifting or scaling the targets, e.g. ±1 coding, gives the same argmax).

    * ``decision_function``: ``F`` ``(m, C)``; for two classes ``F[:, 1] − F[:, 0]``
      ``(m,)``, positive for ``classes_[1]`` — equal to the regression on ±1 labels.
    * ``predict_proba``: ``softmax(F / temperature)``. ``F`` estimates the class
      indicators (≈ probabilities on the training set's scale), the softmax makes them a
      distribution that agrees with ``predict``. It is a heuristic, not a calibrated
      posterior: tune ``temperature`` (e.g. with ``scoring="neg_log_loss"``) or wrap the
      classifier in ``CalibratedClassifierCV`` when probabilities matter.
    """
        + _PARAMS_DOC
        + """        temperature: ``> 0``, the softmax temperature of ``predict_proba``; it does not
            affect ``predict`` or ``decision_function``. The default 0.1 gave the lowest or
            near-lowest 4-fold log-loss (among 0.05..0.5) on breast_cancer, wine, iris and
            digits.

    Attributes:
        classes_: ``(C,)`` sorted class labels.
        X_fit_: ``(n, d)`` training inputs (float64); ``None`` with a precomputed kernel.
        dual_coef_: ``(n, C)``: ``F(x) = k(x, X_fit_) @ dual_coef_``.
        kernel_function_: the :class:`NTKKernelFunction` used (``None`` if precomputed).
        n_features_in_, feature_names_in_: as every scikit-learn estimator.
    """
    )

    def __init__(
        self,
        depth: int = 3,
        activation: str = "relu",
        W_std: float = _SQRT2,
        b_std: float | None = 0.1,
        kernel: str = "ntk",
        t: float | None = None,
        ridge: float = 1e-6,
        temperature: float = 0.1,
        solver: str = "auto",
    ) -> None:
        super().__init__(depth, activation, W_std, b_std, kernel, t, ridge, solver)
        self.temperature = temperature

    def fit(self, X: Any, y: Any) -> NTKClassifier:
        """Fit on ``X`` ``(n, d)`` and class labels ``y`` ``(n,)`` (at least 2 classes)."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        classes, y_index = np.unique(y, return_inverse=True)
        if classes.shape[0] < 2:
            raise DataError(
                f"{type(self).__name__} needs samples of at least 2 classes; the data contains "
                f"only 1 class ({classes[0]!r})"
            )
        self._check_temperature()
        self.classes_ = classes
        self._fit_dual(X, np.eye(classes.shape[0])[y_index.reshape(-1)])
        return self

    def _check_temperature(self) -> None:
        temp = self.temperature
        if isinstance(temp, bool) or not isinstance(temp, Real) or not (0 < temp < math.inf):
            raise ParameterError(f"temperature must be a finite number > 0, got {temp!r}")

    def decision_function(self, X: Any) -> np.ndarray:
        """``(m, C)`` regression outputs, or ``(m,)`` ``F[:, 1] − F[:, 0]`` for 2 classes."""
        F = self._outputs(X)
        return F[:, 1] - F[:, 0] if F.shape[1] == 2 else F

    def predict(self, X: Any) -> np.ndarray:
        """The class of the largest regression output, ``(m,)`` (labels as in ``classes_``)."""
        index = np.argmax(self._outputs(X), axis=1)
        return self.classes_[index]

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """``log(predict_proba(X))``, computed stably, ``(m, C)``."""
        Z = self._outputs(X) / self.temperature
        Z = Z - Z.max(axis=1, keepdims=True)
        return Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))

    def predict_proba(self, X: Any) -> np.ndarray:
        """``softmax(F / temperature)``, ``(m, C)``; rows sum to 1 (see the class docstring)."""
        return np.exp(self.predict_log_proba(X))


# ------------------------------------------------------------------------------ GP kernel
class NTK(_SKKernel):
    """The infinite-width NTK (or NNGP) as a ``sklearn.gaussian_process`` kernel.

    ``GaussianProcessRegressor(kernel=NTK(depth=3) + WhiteKernel())`` fits ``W_std`` and
    ``b_std`` by maximizing the marginal likelihood. Like scikit-learn's own kernels the
    hyperparameters are optimized in log-space (``theta = log([W_std, b_std])``) within
    ``W_std_bounds`` / ``b_std_bounds`` (pass ``"fixed"`` to freeze one); ``b_std=None``
    (no bias) is always fixed. The gradient ``∂K/∂log θ`` is computed by torch autograd
    through the kernel recursion of ``nk.mlp`` (exact, not finite differences); it needs an
    activation with a closed-form kernel: ReLU, leaky ReLU, abs, erf or identity.
    Quadrature activations (tanh, GELU, ...) can be used with ``optimizer=None``.

    Args:
        depth: Dense layers of ``nk.mlp`` including the readout (>= 1).
        activation: activation name.
        W_std: weight standard deviation (> 0 here: the optimizer works with its log).
        b_std: bias standard deviation (> 0), or ``None`` for no bias.
        kernel: ``"ntk"`` (the NTK-GP mean of Lee et al. 2019 uses it) or ``"nngp"``
            (the NNGP of Lee et al. 2018, an exact Bayesian prior).
        W_std_bounds, b_std_bounds: ``(low, high)`` or ``"fixed"``.
    """

    def __init__(
        self,
        depth: int = 3,
        activation: str = "relu",
        W_std: float = _SQRT2,
        b_std: float | None = 0.1,
        kernel: str = "ntk",
        W_std_bounds: Any = (1e-2, 1e2),
        b_std_bounds: Any = (1e-3, 1e2),
    ) -> None:
        self.depth = depth
        self.activation = activation
        self.W_std = W_std
        self.b_std = b_std
        self.kernel = kernel
        self.W_std_bounds = W_std_bounds
        self.b_std_bounds = b_std_bounds

    @property
    def hyperparameter_W_std(self) -> Hyperparameter:
        return Hyperparameter("W_std", "numeric", self.W_std_bounds)

    @property
    def hyperparameter_b_std(self) -> Hyperparameter:
        return Hyperparameter("b_std", "numeric", "fixed" if self.b_std is None else self.b_std_bounds)

    def _arch(self, W_std: Any = None, b_std: Any = None) -> Layer:
        return _check_arch_params(
            self.depth,
            self.activation,
            self.W_std if W_std is None else W_std,
            self.b_std if b_std is None else b_std,
            self.kernel,
        )

    def __call__(self, X: Any, Y: Any = None, eval_gradient: bool = False):
        """``K(X, Y)`` ``(n_X, n_Y)``; with ``eval_gradient`` also ``∂K/∂theta`` ``(n, n, n_free)``.

        ``eval_gradient=True`` needs ``Y=None`` (as for every scikit-learn kernel).
        """
        x1 = _as_matrix(X, "X")
        if not eval_gradient:
            x2 = None if Y is None else _as_matrix(Y, "Y")
            return self._arch().kernel(x1, x2, get=self.kernel).numpy()
        if Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        act = activation_from_name(self.activation)
        if not isinstance(act, _CLOSED_FORM):
            raise ParameterError(
                f"NTK gradients need an activation with a closed-form kernel (relu, leaky_relu, "
                f"abs, erf, identity), got {self.activation!r}; use one of those, or "
                "GaussianProcessRegressor(optimizer=None) to keep W_std/b_std fixed"
            )
        free = [h.name for h in self.hyperparameters if not h.fixed]
        leaves = {
            name: torch.tensor(float(getattr(self, name)), dtype=torch.float64, requires_grad=True)
            for name in free
        }
        with torch.enable_grad():
            K = self._arch(leaves.get("W_std"), leaves.get("b_std")).kernel(x1, get=self.kernel)
            grads = []
            if free:
                # Each entry of K depends on (W_std, b_std) only: the Jacobian columns
                # ∂K/∂θ_i (n×n each) come from one reverse pass with a dummy cotangent u
                # and one more pass differentiating ⟨u, ∂K/∂θ_i⟩ with respect to u.
                u = torch.zeros_like(K, requires_grad=True)
                first = torch.autograd.grad(
                    K, [leaves[n] for n in free], grad_outputs=u, create_graph=True
                )
                for name, g in zip(free, first):
                    (dK,) = torch.autograd.grad(g, u, retain_graph=True)
                    grads.append(float(getattr(self, name)) * dK)  # chain rule for log θ
        n = x1.shape[0]
        grad = torch.stack(grads, dim=-1) if grads else K.new_zeros((n, n, 0))
        if not bool(torch.isfinite(grad).all()):
            raise NonFiniteError(
                "the NTK gradient is not finite; check W_std/b_std are > 0 and X is finite"
            )
        return K.detach().numpy(), grad.detach().numpy()

    def diag(self, X: Any) -> np.ndarray:
        """``k(x_i, x_i)`` for every row, ``(n,)`` — without forming the matrix."""
        x1 = _as_matrix(X, "X")
        return self._arch().kernel(x1, get=self.kernel, diagonal=True).numpy()

    def is_stationary(self) -> bool:
        """``False``: the NTK depends on the norms of ``x`` and ``x'``, not only ``x − x'``."""
        return False

    def __repr__(self) -> str:
        return (
            f"NTK(depth={self.depth}, activation={self.activation!r}, W_std={self.W_std:.3g}, "
            f"b_std={'None' if self.b_std is None else format(self.b_std, '.3g')}, "
            f"kernel={self.kernel!r})"
        )

