"""scikit-learn estimators: :class:`NTKRegressor` and :class:`NTKClassifier` (see :mod:`ntkit.sklearn`)."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def validate_data(_estimator, /, X="no_validation", y="no_validation", reset=True, **kw):
        return _estimator._validate_data(X, y, reset=reset, **kw)


from .._validation import check_choice, check_nonnegative
from ..budget import parse_budget
from ..errors import DataError, ParameterError, ShapeError
from ..linalg import KernelOperator, predict, solve
from ..predict import gradient_descent_mse
from .kernel_function import _KERNELS, _SQRT2, NTKKernelFunction, _as_matrix

_SOLVERS = ("auto", "cholesky", "cg", "nystrom")
_ITERATIVE = ("cg", "nystrom")


class _NTKEstimator(BaseEstimator):
    """Shared fit/predict of :class:`NTKRegressor` and :class:`NTKClassifier`.

    Fitted state: ``X_fit_`` (training inputs) and ``dual_coef_`` with
    ``f(x) = k(x, X_fit_) @ dual_coef_``: ``(H + ridge·I)⁻¹ y`` for ``t=None``
    (:func:`ntkit.linalg.solve`) and ``V g(Λ) Vᵀ y`` with
    ``g(λ) = (1 − e^{−(λ+ridge)t/n})/(λ+ridge)`` for finite ``t``
    (:meth:`ntkit.predict.GradientDescentMSE.dual_coefficients`).
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
        memory_budget: int | float | str | None = None,
    ) -> None:
        self.depth = depth
        self.activation = activation
        self.W_std = W_std
        self.b_std = b_std
        self.kernel = kernel
        self.t = t
        self.ridge = ridge
        self.solver = solver
        self.memory_budget = memory_budget

    def _check_solver_params(self) -> None:
        check_choice(self.kernel, "kernel", (*_KERNELS, "precomputed"))
        if self.t is not None:
            if isinstance(self.t, bool) or not isinstance(self.t, Real) or math.isnan(self.t):
                raise ParameterError(f"t must be None or a number >= 0, got {self.t!r}")
            if self.t < 0:
                raise ParameterError(f"t must be >= 0 (training time), got {self.t}")
        check_nonnegative(self.ridge, "ridge")
        check_choice(self.solver, "solver", _SOLVERS)
        parse_budget(self.memory_budget)
        if self.solver in _ITERATIVE and self.t is not None and not math.isinf(self.t):
            raise ParameterError(
                f"solver={self.solver!r} solves the t=None (converged) problem; a finite t needs "
                "the eigendecomposition of the kernel: use solver='auto' or 'cholesky'"
            )

    def _fit_dual(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Validate the parameters, build the kernel of ``X`` and solve for ``dual_coef_``.

        ``t=None``: ``dual_coef_ = (H + ridge·I)⁻¹ Y`` from :func:`ntkit.linalg.solve`, on the
        dense kernel (Cholesky, factorized in place) or on a matrix-free
        :class:`~ntkit.linalg.KernelOperator` (``solver="cg"``/``"nystrom"``). Finite ``t``:
        the spectral coefficients of :meth:`ntkit.predict.GradientDescentMSE.dual_coefficients`.
        """
        self._check_solver_params()
        matrix_free = self.solver in _ITERATIVE
        if self.kernel == "precomputed":
            if X.shape[0] != X.shape[1]:
                raise ShapeError(
                    f"with kernel='precomputed', X must be the square training kernel "
                    f"k(X_train, X_train), got a {X.shape[0]}x{X.shape[1]} matrix"
                )
            fn, H = None, torch.from_numpy(np.array(X, dtype=np.float64))
        else:
            fn = NTKKernelFunction(self.depth, self.activation, self.W_std, self.b_std, self.kernel)
            if matrix_free:  # tiles under a budget, never the dense n×n matrix
                H = KernelOperator(fn.arch, _as_matrix(X, "X"), get=self.kernel,
                                   memory_budget=self.memory_budget)
            else:
                H = fn.arch.kernel(_as_matrix(X, "X"), get=self.kernel, memory_budget=self.memory_budget)
        ridge = float(self.ridge)
        if matrix_free:
            dual = solve(H, Y, solver=self.solver, ridge=ridge)
        elif self.t is None or math.isinf(self.t):
            # the kernel is ours: factorized in place, no second n×n buffer
            dual = solve(H, Y, solver="cholesky", ridge=ridge, overwrite=True)
        else:
            dual = gradient_descent_mse(H, Y, ridge=ridge).dual_coefficients(float(self.t))
        self.kernel_function_ = fn
        # A copy (the user may mutate X); None with a precomputed kernel, as SVC keeps none.
        self.X_fit_ = None if fn is None else np.array(X, dtype=np.float64, order="C")
        self.dual_coef_ = dual.numpy()
        self._matrix_free = matrix_free and fn is not None

    def _outputs(self, X: Any) -> np.ndarray:
        """Regression outputs ``k(X, X_fit_) @ dual_coef_``, ``(m,)`` or ``(m, o)``.

        After a matrix-free fit through :func:`ntkit.linalg.predict` (tile by tile, skipping
        the zero coefficients of a Nyström fit: no dense ``m × n`` test kernel).
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        fn = self.kernel_function_
        if fn is None:
            return X @ self.dual_coef_
        if getattr(self, "_matrix_free", False):
            out = predict(fn.arch, _as_matrix(X, "X"), self.X_fit_, self.dual_coef_, get=fn.kernel,
                          memory_budget=self.memory_budget)
            return out.numpy()
        K = fn.arch.kernel(_as_matrix(X, "X"), _as_matrix(self.X_fit_, "X_fit_"), get=fn.kernel,
                           memory_budget=self.memory_budget).numpy()
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
        memory_budget: peak bytes of temporary kernel work while fitting and predicting
            (``2**28``, ``2.5e8``, ``"256MiB"``, ``"1GiB"``, ...; default 1 GiB, see
            :mod:`ntkit.budget`); the kernel matrices themselves are not counted.
"""


class NTKRegressor(RegressorMixin, _NTKEstimator):
    __doc__ = (
        """Kernel regression with the infinite-width NTK (or NNGP) of a fully-connected net.

    ``predict(x) = k(x, X) (H + ridge·I)⁻¹ y`` for ``t=None`` — the output of an infinitely
    wide network trained to convergence by gradient descent on the MSE, started from zero
    outputs (Jacot et al. 2018; Lee et al. 2019) — or the gradient-flow prediction at a
    finite time ``t``: the same predictors as :func:`ntkit.predict.kernel_regression` /
    :func:`ntkit.predict.gradient_descent_mse`, solved in float64 by :func:`ntkit.linalg.solve`
    (``t=None``) or from the kernel's spectrum (finite ``t``). ``y`` may be ``(n,)`` or
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
        memory_budget: int | float | str | None = None,
    ) -> None:
        super().__init__(depth, activation, W_std, b_std, kernel, t, ridge, solver, memory_budget)
        self.temperature = temperature

    def fit(self, X: Any, y: Any) -> NTKClassifier:
        """Fit on ``X`` ``(n, d)`` and class labels ``y`` ``(n,)`` (at least 2 classes)."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        try:
            check_classification_targets(y)
            classes, y_index = np.unique(y, return_inverse=True)
        except TypeError as err:  # e.g. None mixed with strings: the labels cannot be sorted
            kinds = sorted({type(v).__name__ for v in np.asarray(y, dtype=object).ravel()})
            raise DataError(
                f"class labels of mixed types ({', '.join(kinds)}) cannot be ordered: {err}. Use "
                "labels of one type (e.g. all strings), and drop or fill missing (None) labels"
            ) from err
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
        F = self._outputs(X)
        # Shift before dividing: a tiny temperature then gives -inf (probability 0), not NaN.
        Z = (F - F.max(axis=1, keepdims=True)) / self.temperature
        return Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))

    def predict_proba(self, X: Any) -> np.ndarray:
        """``softmax(F / temperature)``, ``(m, C)``; rows sum to 1 (see the class docstring)."""
        return np.exp(self.predict_log_proba(X))
