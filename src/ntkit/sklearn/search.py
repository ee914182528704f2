"""Cross-validated NTK estimators: :class:`NTKClassifierCV` and :class:`NTKRegressorCV`.

A grid search over ``depth × fix_layers × ridge (or C) × activation`` of the fully-connected
NTK, scored like ``GridSearchCV`` over :class:`~ntkit.sklearn.NTKClassifier` /
:class:`~ntkit.sklearn.NTKRegressor` with the same grid and folds (same candidates, same
order, same scores, same choice), but with one kernel recursion per activation (and per bias
standard deviation, when ``b_stds`` is searched) instead of one kernel per candidate and fold:

* the kernel is a fixed, label-free function of the inputs, so the kernel of all training
  rows, computed once, holds every fold's training and validation blocks (``K[tr, tr]``,
  ``K[va, tr]``) and the refit's kernel;
* the kernels of every depth and every number of fixed layers come out of one recursion
  (:func:`ntkit.infinite.mlp_kernels`, Arora et al. 2020);
* each candidate is then scored by the estimator itself with ``kernel="precomputed"`` on those
  blocks (ridges / C values share the kernel, and a fold's blocks are gathered once for all
  of them; the kernel is checked finite once, so the fits skip scikit-learn's per-call checks).

So a 4 depths × 4 fixed-layer counts × 6 ridges grid over 5 folds costs one depth-4 kernel of
the training rows (plus the per-candidate solves) instead of 480 kernels; ``kernel_evaluations_``
counts the recursions run.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.metrics import check_scoring
from sklearn.model_selection import ParameterGrid, check_cv
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .._validation import as_candidates, check_choice, check_positive_int, check_std
from ..errors import ParameterError
from ..infinite.depths import mlp_kernels
from ..infinite.stable import check_finite
from .estimators import NTKClassifier, NTKRegressor, validate_data
from .kernel_function import _SQRT2

_DEPTHS = (1, 2, 3, 4, 5)
_TOO_LARGE = ("the kernel's non-finite entries come from inputs too large for the recursion: "
              "standardize them (e.g. StandardScaler) or use a smaller W_std / b_std")
_RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_CS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


class _NTKSearchCV(BaseEstimator):
    """Shared grid search of :class:`NTKClassifierCV` and :class:`NTKRegressorCV`."""

    _regularizer = "ridge"

    def _base(self, **params: Any) -> NTKClassifier | NTKRegressor:
        raise NotImplementedError

    def _grid(self) -> dict[str, list]:
        depths = [check_positive_int(d, "depth") for d in as_candidates(self.depths, "depths")]
        fixes = as_candidates(self.fix_layers, "fix_layers")
        for f in fixes:
            if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0:
                raise ParameterError(f"fix_layers values must be integers >= 0, got {f!r}")
        if self.kernel == "nngp" and any(fixes):
            raise ParameterError(
                "fix_layers > 0 changes only the NTK; with kernel='nngp' use fix_layers=(0,)"
            )
        regs = [float(v) for v in as_candidates(self._regularizers(), self._regularizer + "s")]
        acts = as_candidates(self.activations, "activations")
        grid = {"depth": depths, "fix_layers": [int(f) for f in fixes], self._regularizer: regs,
                "activation": acts}
        if self.b_stds is not None:
            grid["b_std"] = as_candidates(self.b_stds, "b_stds")
            for b in grid["b_std"]:
                check_std(b, "b_stds values", allow_none=True)
        return grid

    def _regularizers(self) -> Any:
        return self.ridges

    def _fit_search(self, X: np.ndarray, y: np.ndarray, fit_one) -> None:
        check_choice(self.kernel, "kernel", ("ntk", "nngp"))
        check_std(self.W_std, "W_std")
        check_std(self.b_std, "b_std", allow_none=True)
        grid = self._grid()
        candidates = list(ParameterGrid(grid))  # GridSearchCV's order (sorted keys)
        index = {tuple(sorted(c.items())): i for i, c in enumerate(candidates)}
        cv = check_cv(self.cv, y, classifier=is_classifier(self))
        splits = list(cv.split(X, y))
        scores = np.full((len(candidates), len(splits)), np.nan)
        self.kernel_evaluations_ = 0
        best = (-math.inf, math.inf)  # (mean score, -candidate index) of the kept kernel
        best_kernel: torch.Tensor | None = None
        probe = self._base(kernel="precomputed")
        scorer = check_scoring(probe, scoring=self.scoring)
        searched_b = "b_std" in grid
        for activation, b_std in itertools.product(grid["activation"], grid.get("b_std", [self.b_std])):
            self.kernel_evaluations_ += 1
            for depth, fix, K in mlp_kernels(X, depths=grid["depth"], fix_layers=grid["fix_layers"],
                                             activation=activation, W_std=self.W_std, b_std=b_std,
                                             get=self.kernel, copy=False):
                # finite diagonal ⇒ finite kernel (Cauchy–Schwarz: |k(x, x')|² <= k(x, x) k(x', x'))
                check_finite(torch.diagonal(K), f"the diagonal of the {activation} "
                             f"{self.kernel.upper()} of depth {depth} (fix_layers={fix})", _TOO_LARGE)
                K = K.numpy()
                rows = []
                for value in grid[self._regularizer]:
                    params = {"depth": depth, "fix_layers": fix, self._regularizer: value,
                              "activation": activation, **({"b_std": b_std} if searched_b else {})}
                    rows.append(index[tuple(sorted(params.items()))])
                # K is finite (above): the folds' fits and scores skip scikit-learn's
                # per-call finiteness checks of their blocks (as many passes over K as the fits)
                with config_context(assume_finite=True):
                    for s, (tr, va) in enumerate(splits):
                        # a fold's blocks once for all its ridges / Cs (gathering them cost as
                        # much as the SVM fits at a few thousand rows)
                        K_tr, K_va = K[np.ix_(tr, tr)], K[np.ix_(va, tr)]
                        for i, value in zip(rows, grid[self._regularizer]):
                            est = self._base(kernel="precomputed", **{self._regularizer: value})
                            fit_one(est, K_tr, y[tr])
                            scores[i, s] = scorer(est, K_va, y[va])
                means = scores[rows].mean(axis=1)
                for i, m in zip(rows, means):
                    if not np.isnan(m) and (m, -i) > best:
                        best, best_kernel = (m, -i), None
                if best_kernel is None and -best[1] in rows:
                    best_kernel = torch.from_numpy(np.array(K))  # the refit's training kernel
        self._set_results(candidates, scores, len(splits))
        params = dict(candidates[self.best_index_])
        self.best_estimator_ = self._base(**params)
        validate_data(self.best_estimator_, X, y, dtype=np.float64, multi_output=True)
        self._refit(self.best_estimator_, X, y, best_kernel)

    def _set_results(self, candidates: list[dict], scores: np.ndarray, n_splits: int) -> None:
        """``cv_results_``, ``best_index_``, ``best_params_``, ``best_score_`` as ``GridSearchCV``."""
        from scipy.stats import rankdata

        means = scores.mean(axis=1)
        if np.isnan(means).all():
            raise ParameterError(
                "no candidate of the grid is valid: every fix_layers value is >= every depth; "
                "use fix_layers < depth (e.g. fix_layers=(0,))"
            )
        ranked = np.where(np.isnan(means), -np.inf, means)  # invalid candidates rank last
        rank = rankdata(-ranked, method="min").astype(np.int32)
        results: dict[str, Any] = {"params": candidates}
        for key in candidates[0]:
            results[f"param_{key}"] = np.ma.masked_array([c[key] for c in candidates], mask=False,
                                                         dtype=object)
        for s in range(n_splits):
            results[f"split{s}_test_score"] = scores[:, s]
        results["mean_test_score"] = means
        results["std_test_score"] = scores.std(axis=1)
        results["rank_test_score"] = rank
        self.cv_results_ = results
        self.best_index_ = int(rank.argmin())
        self.best_params_ = dict(candidates[self.best_index_])
        self.best_score_ = float(means[self.best_index_])
        self.n_splits_ = n_splits

    def predict(self, X: Any) -> np.ndarray:
        """``best_estimator_.predict(X)``."""
        check_is_fitted(self)
        return self.best_estimator_.predict(X)

    @property
    def n_features_in_(self) -> int:
        return self.best_estimator_.n_features_in_


_GRID_DOC = """
    Args:
        depths: candidate depths (Dense layers of ``nk.mlp`` counting the readout); Arora et
            al. 2020 search 1..5 (their hidden layers + 1).
        fix_layers: candidate numbers of bottom layers held at initialization
            (``fix_layers < depth``; larger combinations are skipped, score NaN, as
            ``GridSearchCV`` with ``error_score=np.nan`` records them).
        activations: candidate activation names (one kernel recursion each).
        W_std, b_std: as in :class:`~ntkit.sklearn.NTKClassifier` (fixed, not searched).
        b_stds: ``None`` (``b_std`` fixed) or candidate bias standard deviations, searched as
            the grid's ``"b_std"`` key (``None`` among them: no bias); one kernel recursion
            per activation and ``b_std``. ``b_std`` is then unused.
        kernel: ``"ntk"`` or ``"nngp"`` (then ``fix_layers=(0,)``).
        ridge_mode: as in :class:`~ntkit.sklearn.NTKClassifier` (``"relative"``: ``ridge ×
            mean diag`` of each fold's training kernel).
        cv: folds as in ``GridSearchCV`` (an int: ``StratifiedKFold``/``KFold`` without
            shuffling, a splitter, or an iterable of ``(train, validation)`` index arrays).
        scoring: as in ``GridSearchCV`` (``None``: the estimator's ``score``).
        memory_budget: for the refitted estimator's test kernels.
"""

_ATTR_DOC = """
    Attributes:
        best_estimator_: the estimator with ``best_params_``, fitted on all of ``X`` (from the
            search's kernel, not recomputed).
        best_params_, best_score_, best_index_, cv_results_, n_splits_: as ``GridSearchCV``'s
            (``cv_results_`` keys ``params``, ``param_<name>``, ``split<k>_test_score``,
            ``mean_test_score``, ``std_test_score``, ``rank_test_score``).
        kernel_evaluations_: kernel recursions run (one per activation and ``b_stds`` value,
            over all rows of ``X``).

    Raises:
        ParameterError: invalid grids (empty, ``fix_layers`` with ``kernel="nngp"``, no
            valid candidate) or parameters (as the estimators').
        NonFiniteError: a kernel of the grid overflows (inputs far too large for the
            recursion), checked once per kernel before its folds are fitted.
"""


class NTKClassifierCV(ClassifierMixin, _NTKSearchCV):
    __doc__ = (
        """:class:`~ntkit.sklearn.NTKClassifier` with depth, fixed layers, ridge or C and activation by CV.

    Equivalent to ``GridSearchCV(NTKClassifier(W_std=..., b_std=..., solver=...), {"depth":
    depths, "fix_layers": fix_layers, "ridge" (or "C"): ridges (or Cs), "activation":
    activations}, cv=cv)`` — same candidates in the same order, the same score per fold, the
    same choice — at the cost of one kernel per activation (module docstring; with ``b_stds``
    the grid also holds ``"b_std": b_stds``, one kernel per activation and ``b_std``). With
    ``solver="svm"`` the regularizer searched is ``C`` (the NTK-SVM of Arora et al. 2020).
    Inputs are used as given (put a ``StandardScaler`` in front, as for the estimator).
    """
        + _GRID_DOC
        + """        ridges: candidate ridges (``solver`` other than ``"svm"``).
        Cs: candidate SVM penalties (``solver="svm"``).
        solver: ``"auto"`` (kernel regression on one-hot targets) or ``"svm"``.
        temperature: ``predict_proba``'s softmax temperature (not searched).
        svm_max_iter: the SVM's iteration limit, as in :class:`~ntkit.sklearn.NTKClassifier`
            (not searched: every candidate's fit and the refit).
"""
        + _ATTR_DOC
    )

    def __init__(
        self,
        depths: Any = _DEPTHS,
        fix_layers: Any = (0,),
        ridges: Any = _RIDGES,
        activations: Any = ("relu",),
        W_std: float = _SQRT2,
        b_std: float | None = 0.1,
        kernel: str = "ntk",
        ridge_mode: str = "relative",
        solver: str = "auto",
        Cs: Any = _CS,
        temperature: float = 0.1,
        cv: Any = 5,
        scoring: Any = None,
        memory_budget: Any = None,
        b_stds: Any = None,
        svm_max_iter: int = -1,
    ) -> None:
        self.depths = depths
        self.fix_layers = fix_layers
        self.ridges = ridges
        self.activations = activations
        self.W_std = W_std
        self.b_std = b_std
        self.kernel = kernel
        self.ridge_mode = ridge_mode
        self.solver = solver
        self.Cs = Cs
        self.temperature = temperature
        self.cv = cv
        self.scoring = scoring
        self.memory_budget = memory_budget
        self.b_stds = b_stds
        self.svm_max_iter = svm_max_iter

    @property
    def _regularizer(self) -> str:  # type: ignore[override]
        return "C" if self.solver == "svm" else "ridge"

    def _regularizers(self) -> Any:
        return self.Cs if self.solver == "svm" else self.ridges

    def _base(self, **params: Any) -> NTKClassifier:
        check_choice(self.solver, "solver", ("auto", "cholesky", "svm"))
        kwargs = {"W_std": self.W_std, "b_std": self.b_std, "kernel": self.kernel,
                  "ridge_mode": self.ridge_mode, "solver": self.solver, "temperature": self.temperature,
                  "memory_budget": self.memory_budget, "svm_max_iter": self.svm_max_iter}
        if params.get("kernel") == "precomputed":
            kwargs = {k: v for k, v in kwargs.items() if k not in ("W_std", "b_std")}
        kwargs.update(params)
        return NTKClassifier(**kwargs)

    def fit(self, X: Any, y: Any) -> NTKClassifierCV:
        """Search the grid on ``X`` ``(n, d)`` and labels ``y`` ``(n,)``, then refit the best."""
        X, y = _xy(X, y)
        check_classification_targets(y)
        self._fit_search(X, y, lambda est, K, t: est.fit(K, t))
        self.classes_ = self.best_estimator_.classes_
        return self

    def _refit(self, est: NTKClassifier, X: np.ndarray, y: np.ndarray, H: torch.Tensor) -> None:
        est._fit_labels(X, y, H)

    def decision_function(self, X: Any) -> np.ndarray:
        """``best_estimator_.decision_function(X)``."""
        check_is_fitted(self)
        return self.best_estimator_.decision_function(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """``best_estimator_.predict_proba(X)``."""
        check_is_fitted(self)
        return self.best_estimator_.predict_proba(X)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """``best_estimator_.predict_log_proba(X)``."""
        check_is_fitted(self)
        return self.best_estimator_.predict_log_proba(X)


class NTKRegressorCV(RegressorMixin, _NTKSearchCV):
    __doc__ = (
        """:class:`~ntkit.sklearn.NTKRegressor` with depth, fixed layers, ridge and activation by CV.

    Equivalent to ``GridSearchCV(NTKRegressor(W_std=..., b_std=...), {"depth": depths,
    "fix_layers": fix_layers, "ridge": ridges, "activation": activations}, cv=cv)`` at the cost
    of one kernel per activation (module docstring; ``b_stds`` as in :class:`NTKClassifierCV`).
    ``y`` may be ``(n,)`` or ``(n, o)``.
    """
        + _GRID_DOC
        + """        ridges: candidate ridges.
"""
        + _ATTR_DOC
    )

    def __init__(
        self,
        depths: Any = _DEPTHS,
        fix_layers: Any = (0,),
        ridges: Any = _RIDGES,
        activations: Any = ("relu",),
        W_std: float = _SQRT2,
        b_std: float | None = 0.1,
        kernel: str = "ntk",
        ridge_mode: str = "relative",
        cv: Any = 5,
        scoring: Any = None,
        memory_budget: Any = None,
        b_stds: Any = None,
    ) -> None:
        self.depths = depths
        self.fix_layers = fix_layers
        self.ridges = ridges
        self.activations = activations
        self.W_std = W_std
        self.b_std = b_std
        self.kernel = kernel
        self.ridge_mode = ridge_mode
        self.cv = cv
        self.scoring = scoring
        self.memory_budget = memory_budget
        self.b_stds = b_stds

    def _base(self, **params: Any) -> NTKRegressor:
        kwargs = {"W_std": self.W_std, "b_std": self.b_std, "kernel": self.kernel,
                  "ridge_mode": self.ridge_mode, "memory_budget": self.memory_budget}
        if params.get("kernel") == "precomputed":
            kwargs = {k: v for k, v in kwargs.items() if k not in ("W_std", "b_std")}
        kwargs.update(params)
        return NTKRegressor(**kwargs)

    def fit(self, X: Any, y: Any) -> NTKRegressorCV:
        """Search the grid on ``X`` ``(n, d)`` and targets ``y`` ``(n,)``/``(n, o)``, then refit."""
        X, y = _xy(X, y, y_numeric=True)
        self._fit_search(X, np.asarray(y, dtype=np.float64), lambda est, K, t: est.fit(K, t))
        return self

    def _refit(self, est: NTKRegressor, X: np.ndarray, y: np.ndarray, H: torch.Tensor) -> None:
        est._fit_dual(X, np.asarray(y, dtype=np.float64), H)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


def _xy(X: Any, y: Any, y_numeric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.utils.validation import check_X_y

    return check_X_y(X, y, dtype=np.float64, multi_output=True, y_numeric=y_numeric)

