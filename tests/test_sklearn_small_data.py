"""The estimators' small-data options: arch=, input_shape, fix_layers, relative ridge, the SVM."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks

import ntkit as nk
from ntkit.errors import ParameterError, ShapeError
from ntkit.infinite.fixed import fix_layers
from ntkit.sklearn import NTKClassifier, NTKRegressor, ntk_kernel


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n=40, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2]
    return X, y


def _iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@parametrize_with_checks(
    [
        NTKClassifier(solver="svm"),
        NTKClassifier(arch=nk.serial(nk.Dense(1, W_std=1.5, b_std=0.1), nk.Erf(), nk.Dense(1)), fix_layers=1),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nk.errors.IllConditionedWarning)
        check(estimator)


# ------------------------------------------------------------------- fix_layers and arch=
def test_fix_layers_estimator_equals_the_fixed_kernel_and_zero_equals_the_ntk():
    X, y = _data()
    Xt, _ = _data(n=9, seed=1)
    arch = nk.mlp(3, 1, "relu", W_std=2**0.5, b_std=0.1)
    for f in (0, 1, 2):
        net = fix_layers(arch, f)
        H, Kt = net.kernel(X, get="ntk").numpy(), net.kernel(Xt, X, get="ntk").numpy()
        want = Kt @ np.linalg.solve(H + 1e-3 * np.eye(len(X)), y)
        got = NTKRegressor(depth=3, fix_layers=f, ridge=1e-3, ridge_mode="absolute").fit(X, y).predict(Xt)
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
    ntk = NTKRegressor(depth=3, ridge=1e-3, ridge_mode="absolute").fit(X, y).predict(Xt)
    np.testing.assert_array_equal(NTKRegressor(depth=3, fix_layers=0, ridge=1e-3, ridge_mode="absolute")
                                  .fit(X, y).predict(Xt), ntk)
    # L' = depth - 1 trains the readout only: the NNGP regressor
    top = NTKRegressor(depth=3, fix_layers=2, ridge=1e-3, ridge_mode="absolute").fit(X, y).predict(Xt)
    nngp = NTKRegressor(depth=3, kernel="nngp", ridge=1e-3, ridge_mode="absolute").fit(X, y).predict(Xt)
    np.testing.assert_allclose(top, nngp, rtol=1e-9, atol=1e-11)
    assert not np.allclose(top, ntk, rtol=1e-3)


def test_arch_equals_the_mlp_parameters():
    X, y = _data()
    arch = nk.mlp(3, 1, "erf", W_std=1.4, b_std=0.2)
    a = NTKRegressor(arch=arch, fix_layers=1).fit(X, y).predict(X[:5])
    b = NTKRegressor(depth=3, activation="erf", W_std=1.4, b_std=0.2, fix_layers=1).fit(X, y).predict(X[:5])
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_conv_arch_on_flat_rows_with_input_shape():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(24, 2 * 5 * 5))
    labels = np.arange(24) % 3
    arch = nk.serial(nk.Conv(4, 3, W_std=2**0.5, b_std=0.1), nk.ReLU(), nk.GlobalAvgPool(),
                     nk.Dense(1, W_std=2**0.5, b_std=0.1))
    images = X.reshape(24, 2, 5, 5)
    for f in (0, 1):
        net = fix_layers(arch, f)
        H = net.kernel(images[:18], get="ntk").numpy()
        Kt = net.kernel(images[18:], images[:18], get="ntk").numpy()
        ref = NTKClassifier(kernel="precomputed").fit(H, labels[:18])
        clf = NTKClassifier(arch=arch, input_shape=(2, 5, 5), fix_layers=f).fit(X[:18], labels[:18])
        np.testing.assert_allclose(clf.decision_function(X[18:]), ref.decision_function(Kt), rtol=1e-8,
                                   atol=1e-10)
    with pytest.raises(ShapeError, match="input_shape"):
        NTKClassifier(arch=arch, input_shape=(2, 4, 4)).fit(X, labels)
    with pytest.raises(ShapeError, match="readout"):
        NTKClassifier(arch=nk.serial(nk.Conv(4, 3), nk.ReLU()), input_shape=(2, 5, 5)).fit(X, labels)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"arch": nk.mlp(2, 1), "depth": 4}, "depth"),
        ({"arch": nk.mlp(2, 1), "activation": "erf"}, "activation"),
        ({"arch": "mlp"}, "arch"),
        ({"kernel": "nngp", "fix_layers": 1}, "NNGP"),
        ({"depth": 3, "fix_layers": 3}, "fix_layers"),
        ({"fix_layers": -1}, "fix_layers"),
        ({"kernel": "precomputed", "fix_layers": 1}, "precomputed"),
        ({"kernel": "precomputed", "arch": nk.mlp(2, 1)}, "precomputed"),
        ({"solver": "svm", "t": 3.0}, "svm"),
        ({"solver": "svm", "C": 0.0}, "C must"),
        ({"solver": "svm", "svm_max_iter": 0}, "svm_max_iter"),
        ({"solver": "svm", "svm_max_iter": 2.5}, "svm_max_iter"),
        ({"solver": "svm", "svm_max_iter": True}, "svm_max_iter"),
        ({"svm_max_iter": 100}, "solver='svm'"),
        ({"ridge_mode": "scaled"}, "ridge_mode"),
        ({"input_shape": (0, 2)}, "input_shape"),
    ],
)
def test_invalid_combinations_raise_clear_errors(params, match):
    X, y = _data(n=12)
    labels = (y > 0).astype(int)
    est = NTKClassifier(**params)
    with pytest.raises(ParameterError, match=match):
        est.fit(np.ones((12, 12)) + np.eye(12) if params.get("kernel") == "precomputed" else X, labels)


def test_regressor_refuses_the_svm():
    X, y = _data(n=10)
    with pytest.raises(ParameterError, match="solver"):
        NTKRegressor(solver="svm").fit(X, y)


# ------------------------------------------------------------------- relative ridge
def test_relative_ridge_is_the_absolute_ridge_times_the_mean_diagonal():
    X, y = _data()
    H = nk.mlp(3, 1, "relu", W_std=2**0.5, b_std=0.1).kernel(X, get="ntk").numpy()
    scale = np.trace(H) / len(X)
    rel = NTKRegressor(ridge=0.05).fit(X, y)
    ab = NTKRegressor(ridge=0.05 * scale, ridge_mode="absolute").fit(X, y)
    assert rel.ridge_ == pytest.approx(0.05 * scale, rel=1e-12)
    np.testing.assert_allclose(rel.predict(X[:7]), ab.predict(X[:7]), rtol=1e-10, atol=1e-12)


def test_relative_ridge_makes_predictions_invariant_to_the_kernel_scale():
    # depth 1 without bias: k = W² <x, x'>/d, so W_std only scales the kernel. The relative
    # ridge scales with it and the predictions do not change; the absolute ridge does not.
    X, y = _data()
    fits = {m: [NTKRegressor(depth=1, W_std=w, b_std=None, ridge=0.3, ridge_mode=m).fit(X, y).predict(X[:6])
                for w in (0.5, 3.0)] for m in ("relative", "absolute")}
    np.testing.assert_allclose(fits["relative"][0], fits["relative"][1], rtol=1e-10)
    assert not np.allclose(fits["absolute"][0], fits["absolute"][1], rtol=1e-3)


# ------------------------------------------------------------------- the SVM
@pytest.mark.parametrize("C", [0.3, 10.0])
def test_svm_equals_svc_on_the_precomputed_kernel(C):
    X, y = _iris()
    train, test = np.arange(0, 150, 2), np.arange(1, 150, 2)
    fn = ntk_kernel(depth=3, fix_layers=1)
    ref = SVC(kernel="precomputed", C=C).fit(fn(X[train]), y[train])
    Kt = fn(X[test], X[train])
    clf = NTKClassifier(depth=3, fix_layers=1, solver="svm", C=C).fit(X[train], y[train])
    np.testing.assert_array_equal(clf.predict(X[test]), ref.predict(Kt))
    np.testing.assert_allclose(clf.decision_function(X[test]), ref.decision_function(Kt), rtol=1e-8,
                               atol=1e-9)
    proba = clf.predict_proba(X[test])
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], clf.predict(X[test]))
    # the same SVM from a precomputed kernel, and string labels
    names = np.array(["setosa", "versicolor", "virginica"])
    pre = NTKClassifier(kernel="precomputed", solver="svm", C=C).fit(fn(X[train]), names[y[train]])
    np.testing.assert_array_equal(pre.predict(Kt), names[ref.predict(Kt)])


def test_svm_iteration_limit_is_svcs_max_iter():
    # overlapping classes under the linear kernel at a large C: libsvm needs many iterations
    X, y = _iris()
    keep = y > 0
    X, labels = X[keep][:, :2], y[keep]
    K = ntk_kernel(depth=1)(X)
    full = SVC(kernel="precomputed", C=100.0).fit(K, labels)
    assert full.n_iter_[0] > 200
    with pytest.warns(ConvergenceWarning):
        ref = SVC(kernel="precomputed", C=100.0, max_iter=50).fit(K, labels)
    with pytest.warns(ConvergenceWarning):
        clf = NTKClassifier(depth=1, solver="svm", C=100.0, svm_max_iter=50).fit(X, labels)
    np.testing.assert_array_equal(clf.svc_.n_iter_, [50])
    np.testing.assert_allclose(clf.decision_function(X), ref.decision_function(K), rtol=1e-8, atol=1e-9)
    assert not np.allclose(clf.decision_function(X), full.decision_function(K), rtol=1e-3)


def test_binary_svm_decision_sign_and_proba():
    X, y = _iris()
    keep = y > 0
    X, labels = X[keep], np.where(y[keep] == 2, "b", "a")
    clf = NTKClassifier(solver="svm", C=1.0).fit(X, labels)
    ref = SVC(kernel="precomputed", C=1.0).fit(ntk_kernel()(X), labels)
    d = clf.decision_function(X)
    np.testing.assert_allclose(d, ref.decision_function(ntk_kernel()(X)), rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(np.where(d > 0, "b", "a"), clf.predict(X))
    p = clf.predict_proba(X)[:, 1]
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-d / clf.temperature)), rtol=1e-10)
