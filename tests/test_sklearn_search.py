"""NTKClassifierCV / NTKRegressorCV: GridSearchCV's choice over the same grid and folds, one kernel."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import ntkit as nk
import ntkit.sklearn.search as search
from ntkit.errors import NonFiniteError, ParameterError
from ntkit.infinite.layers import Layer
from ntkit.sklearn import NTKClassifier, NTKClassifierCV, NTKRegressor, NTKRegressorCV


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def counters(monkeypatch):
    """Counts recursions of the search and every architecture kernel evaluated."""
    counts = {"recursions": 0, "kernels": 0}
    real_recursion, real_kernel = search.mlp_kernels, Layer.kernel

    def recursion(*args, **kwargs):
        counts["recursions"] += 1
        return real_recursion(*args, **kwargs)

    def kernel(self, *args, **kwargs):
        counts["kernels"] += 1
        return real_kernel(self, *args, **kwargs)

    monkeypatch.setattr(search, "mlp_kernels", recursion)
    monkeypatch.setattr(Layer, "kernel", kernel)
    return counts


def _cancer(n=120):
    X, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    keep = rng.choice(len(y), n, replace=False)
    return StandardScaler().fit_transform(X[keep]), y[keep]


def _grid_search(estimator, grid, X, y, cv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.simplefilter("ignore", UserWarning)  # "one or more of the test scores are non-finite"
        return GridSearchCV(estimator, grid, cv=cv, error_score=np.nan).fit(X, y)


def _same_search(ours, ref):
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"],
                               rtol=0, atol=1e-12, equal_nan=True)
    assert [p for p in ours.cv_results_["params"]] == list(ref.cv_results_["params"])
    np.testing.assert_array_equal(ours.cv_results_["rank_test_score"], ref.cv_results_["rank_test_score"])
    assert ours.best_params_ == ref.best_params_
    assert ours.best_index_ == ref.best_index_


@pytest.mark.parametrize("solver", ["auto", "svm"])
def test_classifier_cv_choice_equals_grid_search_with_one_kernel(solver, counters):
    X, y = _cancer()
    cv = StratifiedKFold(3, shuffle=True, random_state=1)
    reg = {"C": [0.1, 100.0]} if solver == "svm" else {"ridge": [1e-4, 0.3]}
    grid = {"depth": [1, 3], "fix_layers": [0, 2], "activation": ["relu", "erf"], **reg}
    key = next(iter(reg))
    ours = NTKClassifierCV(depths=grid["depth"], fix_layers=grid["fix_layers"],
                           activations=grid["activation"], solver=solver, cv=cv, **{key + "s": reg[key]})
    ours.fit(X, y)
    assert counters == {"recursions": 2, "kernels": 0}  # one recursion per activation, no other kernel
    assert ours.kernel_evaluations_ == 2
    ref = _grid_search(NTKClassifier(solver=solver), grid, X, y, cv)
    assert counters["kernels"] > 50  # GridSearchCV: a training and a validation kernel per fit
    _same_search(ours, ref)
    # the refit is the estimator with the best parameters fitted on all rows
    direct = NTKClassifier(solver=solver, **ours.best_params_).fit(X, y)
    np.testing.assert_allclose(ours.decision_function(X[:20]), direct.decision_function(X[:20]),
                               rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_array_equal(ours.classes_, [0, 1])


def test_searched_b_std_equals_grid_search_with_one_recursion_per_value(counters):
    X, y = _cancer(90)
    cv = StratifiedKFold(3, shuffle=True, random_state=4)
    grid = {"depth": [1, 3], "fix_layers": [0, 1], "C": [1.0], "activation": ["relu"],
            "b_std": [None, 0.1, 2.0]}
    ours = NTKClassifierCV(depths=grid["depth"], fix_layers=grid["fix_layers"], Cs=grid["C"],
                           b_stds=grid["b_std"], solver="svm", cv=cv).fit(X, y)
    assert counters == {"recursions": 3, "kernels": 0}  # one per b_std, no other kernel
    ref = _grid_search(NTKClassifier(solver="svm"), grid, X, y, cv)
    _same_search(ours, ref)
    assert len({s for s in ours.cv_results_["mean_test_score"] if s == s}) > 1  # the b_std matter
    direct = NTKClassifier(solver="svm", **ours.best_params_).fit(X, y)
    np.testing.assert_allclose(ours.decision_function(X[:20]), direct.decision_function(X[:20]),
                               rtol=1e-8, atol=1e-10)
    with pytest.raises(ParameterError, match="b_stds"):
        NTKClassifierCV(b_stds=(0.1, -1.0), cv=2).fit(X, y)


def test_regressor_cv_choice_equals_grid_search(counters):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 4))
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=60)
    cv = KFold(4, shuffle=True, random_state=0)
    grid = {"depth": [1, 3], "fix_layers": [0, 2], "ridge": [1e-3, 1.0], "activation": ["relu", "gelu"]}
    ours = NTKRegressorCV(depths=grid["depth"], fix_layers=grid["fix_layers"], ridges=grid["ridge"],
                          activations=grid["activation"], cv=cv).fit(X, y)
    assert counters == {"recursions": 2, "kernels": 0}
    ref = _grid_search(NTKRegressor(), grid, X, y, cv)
    _same_search(ours, ref)
    np.testing.assert_allclose(ours.predict(X[:9]), ref.predict(X[:9]), rtol=1e-8, atol=1e-10)


def test_svm_iteration_limit_reaches_every_candidate():
    X, y = _cancer(90)
    X = X[:, :2]  # overlapping classes: the linear kernel at C = 100 needs many iterations
    cv = StratifiedKFold(3, shuffle=True, random_state=3)
    grid = {"depth": [1, 2], "fix_layers": [0], "C": [1.0, 100.0], "activation": ["relu"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = NTKClassifierCV(depths=grid["depth"], Cs=grid["C"], solver="svm", svm_max_iter=30,
                               cv=cv).fit(X, y)
        ref = _grid_search(NTKClassifier(solver="svm", svm_max_iter=30), grid, X, y, cv)
        free = NTKClassifierCV(depths=grid["depth"], Cs=grid["C"], solver="svm", cv=cv).fit(X, y)
    _same_search(ours, ref)
    assert ours.best_estimator_.svm_max_iter == 30
    assert not np.allclose(ours.cv_results_["mean_test_score"], free.cv_results_["mean_test_score"])


def test_scoring_and_string_labels():
    X, y = _cancer(90)
    names = np.array(["benign", "malignant"])[y]
    cv = StratifiedKFold(3, shuffle=True, random_state=2)
    ours = NTKClassifierCV(depths=[2, 3], ridges=[1e-3, 1.0], cv=cv, scoring="neg_log_loss").fit(X, names)
    ref = GridSearchCV(NTKClassifier(), {"depth": [2, 3], "fix_layers": [0], "ridge": [1e-3, 1.0],
                                         "activation": ["relu"]}, cv=cv, scoring="neg_log_loss").fit(X, names)
    _same_search(ours, ref)
    assert set(ours.predict(X)) <= {"benign", "malignant"}


def test_invalid_grids_raise():
    X, y = _cancer(40)
    with pytest.raises(ParameterError, match="only the NTK"):
        NTKClassifierCV(kernel="nngp", fix_layers=(0, 1), cv=2).fit(X, y)
    with pytest.raises(ParameterError, match="no candidate"):
        NTKClassifierCV(depths=(1, 2), fix_layers=(2,), cv=2).fit(X, y)
    with pytest.raises(ParameterError, match="at least one"):
        NTKClassifierCV(depths=(), cv=2).fit(X, y)
    with pytest.raises(ParameterError, match="solver"):
        NTKClassifierCV(solver="cg", cv=2).fit(X, y)


@parametrize_with_checks([
    NTKClassifierCV(depths=(2,), ridges=(1e-2,), cv=2),  # small grids: the contract, not the search
    NTKRegressorCV(depths=(1, 2), fix_layers=(0, 1), ridges=(1e-2,), cv=2),
])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nk.errors.IllConditionedWarning)
        check(estimator)


def test_non_finite_kernel_raises_before_any_fit():
    X, y = _cancer(40)
    with pytest.raises(NonFiniteError, match="non-finite entries"):
        NTKClassifierCV(depths=(1, 2), Cs=(1.0,), solver="svm", cv=2).fit(X * 1e160, y)


@pytest.mark.parametrize("solver", ["auto", "svm"])
def test_precomputed_fits_leave_the_callers_kernel_intact(solver):
    # the SVM reads a precomputed kernel without copying it; kernel regression factorizes a copy
    X, y = _cancer(60)
    K = X @ X.T / X.shape[1] + 1.0
    before = K.copy()
    est = NTKClassifier(kernel="precomputed", solver=solver).fit(K, y)
    np.testing.assert_array_equal(K, before)
    np.testing.assert_array_equal(est.predict(K[:7]), NTKClassifier(kernel="precomputed", solver=solver)
                                  .fit(before.copy(), y).predict(before[:7]))
    reg = NTKRegressor(kernel="precomputed").fit(K, y.astype(float))
    np.testing.assert_array_equal(K, before)
    assert np.isfinite(reg.dual_coef_).all()
