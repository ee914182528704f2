"""ntkit.sklearn: estimator contract, equivalence with ntkit.predict and independent routes."""

from __future__ import annotations

import pickle
import re
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import WhiteKernel
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks

import ntkit as nk
from ntkit.errors import ParameterError
from ntkit.predict import gradient_descent_mse, kernel_regression
from ntkit.sklearn import NTK, NTKClassifier, NTKKernelFunction, NTKRegressor, ntk_kernel


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny kernels: threads only add contention on the shared, busy cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n=40, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2]
    return X, y


def _kernels(X, Xt, *, depth=3, W_std=2**0.5, b_std=0.1, get="ntk"):
    arch = nk.mlp(depth, 1, "relu", W_std=W_std, b_std=b_std)
    return arch.kernel(X, get=get), arch.kernel(Xt, X, get=get)


# ------------------------------------------------------------------- scikit-learn checks
# With kernel="precomputed" three checks feed matrices that are not kernels; SVC's libsvm
# tolerates them, a Cholesky/eigh solve of a Gram matrix rightly does not.
_PRECOMPUTED_XFAIL = {
    "check_estimators_dtypes": "casts the linear kernel X Xᵀ to int: not positive semidefinite",
    "check_positive_only_tag_during_fit": "subtracts the mean from X Xᵀ: not positive semidefinite",
    "check_decision_proba_consistency": "passes raw (n, 2) features, not a kernel, to a pairwise "
    "estimator (the check does not apply the pairwise transform)",
}


def _expected_failed_checks(estimator):
    if estimator.kernel != "precomputed":
        return {}
    fails = dict(_PRECOMPUTED_XFAIL)
    if isinstance(estimator, NTKRegressor):
        fails.pop("check_decision_proba_consistency")  # no decision_function
        # a relative ridge of 1 (the mean diagonal) makes even the int-cast X Xᵀ well posed
        fails.pop("check_estimators_dtypes")
    return fails


@parametrize_with_checks(
    [
        NTKRegressor(),
        NTKClassifier(),
        NTKClassifier(kernel="nngp", t=50.0),
        NTKRegressor(kernel="precomputed", ridge=1.0),
        NTKClassifier(kernel="precomputed", ridge=1.0, t=10.0),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nk.errors.IllConditionedWarning)
        check(estimator)


# ------------------------------------------------------------------- equivalences
@pytest.mark.parametrize("get", ["ntk", "nngp"])
@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.5])
def test_regressor_equals_kernel_regression(get, ridge):
    X, y = _data()
    Xt, _ = _data(n=13, seed=1)
    H, Kt = _kernels(X, Xt, depth=3, get=get)
    expected = kernel_regression(H, y, Kt, ridge=ridge).numpy()
    got = NTKRegressor(ridge_mode="absolute", depth=3, kernel=get, ridge=ridge).fit(X, y).predict(Xt)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    other = NTKRegressor(ridge_mode="absolute", depth=2, kernel=get, ridge=ridge).fit(X, y).predict(Xt)
    assert not np.allclose(got, other)


@pytest.mark.parametrize("solver", ["cg", "nystrom"])
def test_iterative_solvers_match_the_dense_solve(solver):
    # Independent route: scipy's dense solve of (H + ridge I) a = y. Nyström keeps
    # min(n, 5000) = n centres here, so it is exact up to its tolerance too.
    X, y = _data(n=60)
    Xt, _ = _data(n=11, seed=1)
    H, Kt = _kernels(X, Xt, depth=3, get="ntk")
    ridge = 1e-2
    dual = scipy.linalg.solve(H.numpy() + ridge * np.eye(len(X)), y, assume_a="pos")
    reg = NTKRegressor(ridge_mode="absolute", depth=3, ridge=ridge, solver=solver).fit(X, y)
    np.testing.assert_allclose(reg.dual_coef_, dual, rtol=1e-5, atol=1e-8 * np.abs(dual).max())
    np.testing.assert_allclose(reg.predict(Xt), Kt.numpy() @ dual, rtol=1e-5, atol=1e-8)
    pre = NTKRegressor(ridge_mode="absolute", kernel="precomputed", ridge=ridge, solver=solver)
    pre.fit(H.numpy(), y)
    np.testing.assert_allclose(pre.predict(Kt.numpy()), Kt.numpy() @ dual, rtol=1e-5, atol=1e-8)
    labels = (y > np.median(y)).astype(int)
    clf = NTKClassifier(ridge_mode="absolute", depth=3, ridge=ridge, solver=solver).fit(X, labels)
    exact = NTKClassifier(ridge_mode="absolute", depth=3, ridge=ridge).fit(X, labels)
    np.testing.assert_allclose(clf.decision_function(Xt), exact.decision_function(Xt),
                               rtol=1e-5, atol=1e-8)


def test_iterative_solver_needs_t_none_and_a_known_name():
    X, y = _data()
    with pytest.raises(ParameterError, match="finite t"):
        NTKRegressor(solver="cg", t=5.0).fit(X, y)
    with pytest.raises(ParameterError, match="solver"):
        NTKRegressor(solver="lsqr").fit(X, y)
    assert NTKRegressor(solver="cg", t=float("inf")).fit(X, y).dual_coef_.shape == (len(X),)


def test_regressor_equals_sklearn_kernel_ridge_on_the_callable():
    # scikit-learn's own solver (KernelRidge, which calls the kernel on pairs of rows).
    X, y = _data(n=15, d=3)
    Xt, _ = _data(n=4, d=3, seed=9)
    ref = KernelRidge(kernel=ntk_kernel(depth=2, b_std=0.3), alpha=1e-2).fit(X, y).predict(Xt)
    got = NTKRegressor(ridge_mode="absolute", depth=2, b_std=0.3, ridge=1e-2).fit(X, y).predict(Xt)
    np.testing.assert_allclose(got, ref, rtol=1e-8)


def test_regressor_linear_kernel_independent_route():
    # depth=1, no bias: k(x, x') = W_std² <x, x'> / d; solve with NumPy, not ntkit.
    X, y = _data(n=12, d=20)
    Xt, _ = _data(n=7, d=20, seed=3)
    W, ridge = 1.7, 0.3
    K = W**2 * X @ X.T / X.shape[1]
    Kt = W**2 * Xt @ X.T / X.shape[1]
    expected = Kt @ np.linalg.solve(K + ridge * np.eye(len(X)), y)
    model = NTKRegressor(ridge_mode="absolute", depth=1, W_std=W, b_std=None, ridge=ridge).fit(X, y)
    np.testing.assert_allclose(model.predict(Xt), expected, rtol=1e-10)
    np.testing.assert_allclose(model.dual_coef_, np.linalg.solve(K + ridge * np.eye(len(X)), y), rtol=1e-10)


def test_regressor_gradient_flow_matches_expm_and_ntkit():
    X, y = _data(n=25)
    Xt, _ = _data(n=6, seed=2)
    H, Kt = _kernels(X, Xt)
    n, t, ridge = len(X), 7.0, 0.2
    A = H.numpy() + ridge * np.eye(n)
    # Gradient flow df/dt = -(1/n)(A f - y) ... in weight space: f_test = Kt A⁻¹ (I - e^{-At/n}) y.
    expected = Kt.numpy() @ np.linalg.solve(A, (np.eye(n) - scipy.linalg.expm(-A * t / n)) @ y)
    got = NTKRegressor(ridge_mode="absolute", t=t, ridge=ridge).fit(X, y).predict(Xt)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    via_ntkit = gradient_descent_mse(H, y, ridge=ridge).test(t, Kt).numpy()
    np.testing.assert_allclose(got, via_ntkit, rtol=1e-9, atol=1e-12)
    # t = 0: nothing learned; t large: kernel regression.
    zero = NTKRegressor(ridge_mode="absolute", t=0.0).fit(X, y).predict(Xt)
    np.testing.assert_allclose(zero, 0.0, atol=1e-12)
    far = NTKRegressor(ridge_mode="absolute", t=1e9, ridge=ridge).fit(X, y).predict(Xt)
    converged = NTKRegressor(ridge_mode="absolute", ridge=ridge).fit(X, y).predict(Xt)
    np.testing.assert_allclose(far, converged, rtol=1e-7)


def test_multi_output_is_columnwise():
    X, y = _data()
    Y = np.column_stack([y, np.cos(X[:, 3]), X[:, 4]])
    Xt, _ = _data(n=9, seed=5)
    model = NTKRegressor(ridge=1e-3).fit(X, Y)
    pred = model.predict(Xt)
    assert pred.shape == (9, 3)
    for j in range(3):
        single = NTKRegressor(ridge=1e-3).fit(X, Y[:, j]).predict(Xt)
        np.testing.assert_allclose(pred[:, j], single, rtol=1e-10, atol=1e-12)
    assert NTKRegressor().fit(X, Y[:, :1]).predict(Xt).shape == (9, 1)


def test_classifier_is_argmax_of_one_hot_regression_with_string_labels():
    X, y_num = _data(n=60, seed=4)
    names = np.array(["low", "mid", "high"])
    y = names[np.digitize(y_num, np.quantile(y_num, [1 / 3, 2 / 3]))]
    Xt, _ = _data(n=20, seed=6)
    clf = NTKClassifier(depth=2, ridge=1e-2).fit(X, y)
    assert list(clf.classes_) == ["high", "low", "mid"]
    onehot = (y[:, None] == clf.classes_[None, :]).astype(float)
    F = NTKRegressor(depth=2, ridge=1e-2).fit(X, onehot).predict(Xt)
    np.testing.assert_allclose(clf.decision_function(Xt), F, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(clf.predict(Xt), clf.classes_[F.argmax(1)])
    assert clf.predict(Xt).dtype.kind == "U"
    proba = clf.predict_proba(Xt)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(proba.argmax(1), F.argmax(1))
    expected = np.exp(F / 0.1) / np.exp(F / 0.1).sum(1, keepdims=True)
    np.testing.assert_allclose(proba, expected, rtol=1e-10)
    np.testing.assert_allclose(clf.predict_log_proba(Xt), np.log(expected), rtol=1e-10, atol=1e-12)


def test_binary_decision_is_regression_on_pm1_labels():
    X, y_num = _data(n=50, seed=7)
    y = np.where(y_num > np.median(y_num), "yes", "no")
    Xt, _ = _data(n=15, seed=8)
    clf = NTKClassifier(ridge=1e-3).fit(X, y)
    pm1 = np.where(y == "yes", 1.0, -1.0)  # classes_ = ["no", "yes"]
    reg = NTKRegressor(ridge=1e-3).fit(X, pm1).predict(Xt)
    dec = clf.decision_function(Xt)
    assert dec.shape == (15,)
    np.testing.assert_allclose(dec, reg, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(clf.predict(Xt), np.where(reg > 0, "yes", "no"))


# ------------------------------------------------------------------- workflow
def test_pipeline_gridsearch_and_clone():
    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), NTKClassifier())
    search = GridSearchCV(pipe, {"ntkclassifier__depth": [1, 3], "ntkclassifier__ridge": [1e-6, 1.0]}, cv=3)
    search.fit(X, y)
    assert search.best_params_["ntkclassifier__depth"] in (1, 3)
    assert search.best_score_ > 0.9
    assert search.score(X, y) > 0.95

    est = NTKClassifier(depth=4, activation="erf", W_std=1.3, b_std=None, kernel="nngp", t=3.0,
                        ridge=0.01, temperature=0.5)
    twin = clone(est)
    assert twin is not est
    assert twin.get_params() == est.get_params()
    assert not hasattr(clone(est.fit(X, y)), "dual_coef_")


def test_pandas_input_and_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = load_iris(return_X_y=True, as_frame=True)
    labels = pd.Series(np.array(["setosa", "versicolor", "virginica"])[y.to_numpy()])
    clf = NTKClassifier().fit(X, labels)
    np.testing.assert_array_equal(clf.feature_names_in_, X.columns.to_numpy())
    assert clf.n_features_in_ == 4
    plain = NTKClassifier().fit(X.to_numpy(), labels)
    np.testing.assert_array_equal(clf.predict(X), plain.predict(X.to_numpy()))
    renamed = X.rename(columns=lambda c: c.upper())
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(renamed)
    reg = NTKRegressor().fit(X.iloc[:, :3], X.iloc[:, 3])
    assert reg.predict(X.iloc[:5, :3]).shape == (5,)


def test_precomputed_kernel_equals_built_in_and_slices_in_gridsearch():
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    fn = ntk_kernel(depth=2)
    K = fn(X)
    train, test = np.arange(0, 150, 2), np.arange(1, 150, 2)
    pre = NTKClassifier(kernel="precomputed", ridge=1e-3).fit(K[np.ix_(train, train)], y[train])
    ref = NTKClassifier(depth=2, ridge=1e-3).fit(X[train], y[train])
    np.testing.assert_allclose(
        pre.decision_function(K[np.ix_(test, train)]), ref.decision_function(X[test]), rtol=1e-9, atol=1e-12
    )
    assert pre.X_fit_ is None and pre.n_features_in_ == len(train)
    # GridSearchCV slices a pairwise estimator's kernel on both axes.
    search = GridSearchCV(NTKClassifier(kernel="precomputed"), {"ridge": [1e-6, 1.0]}, cv=3).fit(K, y)
    plain = GridSearchCV(NTKClassifier(depth=2), {"ridge": [1e-6, 1.0]}, cv=3).fit(X, y)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], plain.cv_results_["mean_test_score"])
    with pytest.raises(ValueError, match="square"):
        NTKRegressor(kernel="precomputed").fit(K[:, :10], y)


def test_pickle_roundtrip():
    X, y = _data()
    model = NTKRegressor(depth=2).fit(X, y)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(X), model.predict(X))


# ------------------------------------------------------------------- bad input
def _message(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.type, str(info.value)


@pytest.mark.parametrize("ours, theirs", [(NTKClassifier, SVC), (NTKRegressor, KernelRidge)])
def test_bad_input_errors_match_sklearn(ours, theirs):
    X, y = load_iris(return_X_y=True)
    Xnan = X.copy()
    Xnan[3, 1] = np.nan
    cases = {
        "nan": lambda est: est.fit(Xnan, y),
        "zero rows": lambda est: est.fit(X[:0], y[:0]),
        "1d X": lambda est: est.fit(X[:, 0], y),
        "inf": lambda est: est.fit(np.where(np.isnan(Xnan), np.inf, Xnan), y),
        "wrong width at predict": lambda est: est.fit(X, y).predict(X[:, :3]),
        "y length": lambda est: est.fit(X, y[:-1]),
    }
    for name, case in cases.items():
        t1, m1 = _message(lambda c=case: c(ours()))
        t2, m2 = _message(lambda c=case: c(theirs()))
        assert t1 is t2 or issubclass(t1, t2), name
        m2 = m2.replace(theirs.__name__, ours.__name__)
        # scikit-learn's own messages (the NaN one names the estimator's missing-value advice).
        assert m1.splitlines()[0] == m2.splitlines()[0], name


def test_classifier_label_errors_match_sklearn():
    X, _ = _data(n=20)
    one = np.array(["a"] * 20)
    for est in (NTKClassifier(), SVC()):
        with pytest.raises(ValueError, match="1 class"):
            est.fit(X, one)
    continuous = np.linspace(0, 1, 20)
    for est in (NTKClassifier(), SVC()):
        with pytest.raises(ValueError, match="Unknown label type: continuous"):
            est.fit(X, continuous)
    with pytest.raises(Exception) as ours:
        NTKClassifier().predict(X)
    with pytest.raises(Exception) as theirs:
        SVC().predict(X)
    assert ours.type is theirs.type  # NotFittedError


@pytest.mark.parametrize(
    "params",
    [{"depth": 0}, {"kernel": "rbf"}, {"ridge": -1.0}, {"t": -1.0}, {"W_std": -1.0},
     {"activation": "nope"}, {"temperature": 0.0}, {"b_std": float("nan")}],
)
def test_bad_parameters_raise_at_fit(params):
    X, y = _data(n=10)
    labels = (y > 0).astype(int)
    est = NTKClassifier(**params)  # no validation in __init__
    assert all(est.get_params()[k] is v for k, v in params.items())
    with pytest.raises(ValueError):
        est.fit(X, labels)


# ------------------------------------------------------------------- kernels
def test_ntk_kernel_callable_matches_precomputed_svc():
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    fn = ntk_kernel(depth=3, b_std=0.2)
    K = nk.mlp(3, 1, "relu", W_std=2**0.5, b_std=0.2).kernel(X, get="ntk").numpy()
    np.testing.assert_allclose(fn(X), K, rtol=1e-12)
    np.testing.assert_allclose(fn(X[:10], X), K[:10], rtol=1e-12)
    a = SVC(kernel=fn, C=3.0).fit(X, y)
    b = SVC(kernel="precomputed", C=3.0).fit(K, y)
    np.testing.assert_array_equal(a.support_, b.support_)
    np.testing.assert_allclose(a.decision_function(X), b.decision_function(K), rtol=1e-8, atol=1e-10)
    again = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(again.predict(X), a.predict(X))
    assert fn == ntk_kernel(depth=3, b_std=0.2) and fn != ntk_kernel(depth=2, b_std=0.2)
    assert isinstance(fn, NTKKernelFunction) and repr(fn) == "ntk_kernel(depth=3, b_std=0.2)"
    grid = GridSearchCV(SVC(), {"kernel": [ntk_kernel(depth=d) for d in (1, 2)]}, cv=3).fit(X, y)
    assert grid.best_params_["kernel"] in (ntk_kernel(depth=1), ntk_kernel(depth=2))
    with pytest.raises(ParameterError):
        ntk_kernel(kernel="rbf")


def _fd_gradient(kernel, X, h=1e-5):
    cols = []
    for i in range(kernel.n_dims):
        up, down = kernel.theta.copy(), kernel.theta.copy()
        up[i] += h
        down[i] -= h
        cols.append((kernel.clone_with_theta(up)(X) - kernel.clone_with_theta(down)(X)) / (2 * h))
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize(
    "params",
    [
        {"depth": 3},
        {"depth": 2, "activation": "erf", "W_std": 1.3, "b_std": 0.7},
        {"depth": 4, "activation": "abs", "W_std": 0.9, "b_std": 0.3, "kernel": "nngp"},
        {"depth": 2, "b_std": None},
    ],
)
def test_gp_kernel_gradient_matches_finite_differences(params):
    X, _ = _data(n=15, d=4)
    X[3] = X[2]  # a duplicated row: rho = 1 off the diagonal too
    kernel = NTK(**params)
    K, G = kernel(X, eval_gradient=True)
    assert G.shape == (15, 15, 1 if params.get("b_std", 0.1) is None else 2)
    np.testing.assert_allclose(K, kernel(X), rtol=1e-12)
    np.testing.assert_allclose(G, _fd_gradient(kernel, X), rtol=1e-5, atol=1e-7 * np.abs(G).max())
    np.testing.assert_allclose(kernel.diag(X), np.diag(K), rtol=1e-12)


def test_gp_kernel_in_gaussian_process():
    X, y = _data(n=30, d=3)
    kernel = NTK(depth=2) + WhiteKernel(1e-2)
    assert not NTK().is_stationary()
    start = GaussianProcessRegressor(kernel, optimizer=None).fit(X, y).log_marginal_likelihood_value_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bounds warnings
        gp = GaussianProcessRegressor(kernel, random_state=0).fit(X, y)
    assert gp.log_marginal_likelihood_value_ > start
    fitted = gp.kernel_.k1
    assert isinstance(fitted, NTK) and (fitted.W_std, fitted.b_std) != (2**0.5, 0.1)
    assert gp.predict(X[:4]).shape == (4,)
    # Bounds and theta are in log-space, as for scikit-learn's kernels.
    np.testing.assert_allclose(NTK(W_std=2.0, b_std=0.5).theta, np.log([2.0, 0.5]))
    np.testing.assert_allclose(NTK().bounds, np.log([[1e-2, 1e2], [1e-3, 1e2]]))
    assert NTK(W_std_bounds="fixed").n_dims == 1
    with pytest.raises(ValueError, match="Y is None"):
        NTK()(X, X, eval_gradient=True)


def test_gp_kernel_rejects_gradient_for_quadrature_activation():
    X, _ = _data(n=5, d=3)
    kernel = NTK(activation="tanh", depth=2)
    K = kernel(X)
    assert K.shape == (5, 5) and np.all(np.isfinite(K))
    with pytest.raises(ParameterError, match="closed-form"):
        kernel(X, eval_gradient=True)


def test_ntk_kernel_values_are_the_erf_closed_form():
    # Independent of arch.kernel: the depth-2 erf recursion by hand (Williams 1997),
    # NTK parameterization, input kernel <x, x'>/d.
    X, _ = _data(n=8, d=3)
    W2, b2 = 1.1**2, 0.4**2
    q = W2 * (X @ X.T) / X.shape[1] + b2  # first Dense
    d = np.diag(q)
    s = np.sqrt(np.outer(1 + 2 * d, 1 + 2 * d))
    e = (2 / np.pi) * np.arcsin(2 * q / s)
    e_dot = (4 / np.pi) / np.sqrt(s**2 - 4 * q**2)
    nngp = W2 * e + b2
    ntk = nngp + W2 * q * e_dot
    np.testing.assert_allclose(
        NTK(depth=2, activation="erf", W_std=1.1, b_std=0.4, kernel="nngp")(X), nngp, rtol=1e-12)
    np.testing.assert_allclose(
        NTK(depth=2, activation="erf", W_std=1.1, b_std=0.4, kernel="ntk")(X), ntk, rtol=1e-10)


def test_errors_are_not_silent_for_singular_ridgeless_fit():
    # depth=1 without bias is the linear kernel: rank d < n, so H is singular.
    X, y = _data(n=12, d=3)
    with pytest.raises(nk.errors.SingularMatrixError, match=re.escape("ridge > 0")):
        NTKRegressor(depth=1, b_std=None, ridge=0.0).fit(X, y)
    NTKRegressor(depth=1, b_std=None).fit(X, y)  # the default ridge solves it
