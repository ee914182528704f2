"""Bad input to ntkit.predict: clear ntkit errors (and warnings) that say what to change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit.predict as predict
from ntkit.errors import (
    IllConditionedWarning,
    NonFiniteError,
    NtkitError,
    ParameterError,
    ShapeError,
    SingularMatrixError,
)


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 30))
    B = rng.standard_normal((3, 30))
    return A @ A.T / 30, B @ A.T / 30, rng.standard_normal(6)


def test_errors_are_ntkit_value_errors():
    assert issubclass(SingularMatrixError, NtkitError) and issubclass(NtkitError, ValueError)


def test_shape_mismatches(problem):
    H, Kt, y = problem
    with pytest.raises(ShapeError, match="rows"):
        predict.kernel_regression(H, y[:5])
    with pytest.raises(ShapeError, match="transpose"):
        predict.kernel_regression(H, y, Kt.T)
    with pytest.raises(ShapeError, match="square"):
        predict.kernel_regression(H[:, :5], y)
    with pytest.raises(ShapeError, match="fx_train_0"):
        predict.kernel_regression(H, y, fx_train_0=np.zeros(5))
    with pytest.raises(ShapeError, match="fx_test_0"):
        predict.kernel_regression(H, y, Kt, fx_test_0=np.zeros((3, 2)))
    with pytest.raises(ParameterError, match="without k_test_train"):
        predict.kernel_regression(H, y, fx_test_0=np.zeros(3))
    with pytest.raises(ShapeError):
        predict.gradient_descent_mse(H, y).test(1.0, Kt[:, :4])
    with pytest.raises(ShapeError, match=r"\(6, 2\)"):
        predict.gradient_descent_mse(np.zeros((6, 6, 2, 2)) + np.eye(6)[:, :, None, None], y)
    with pytest.raises(ShapeError, match="same test points"):
        predict.gp_posterior(H, y, Kt, ntk_train_train=H, ntk_test_train=Kt[:2])


@pytest.mark.parametrize("where", ["H", "y", "Kt"])
def test_nan_inputs(problem, where):
    H, Kt, y = (a.copy() for a in problem)
    {"H": H, "y": y, "Kt": Kt}[where].flat[0] = np.nan
    with pytest.raises(NonFiniteError, match="NaN"):
        predict.kernel_regression(H, y, Kt)


def test_negative_or_bad_parameters(problem):
    H, Kt, y = problem
    with pytest.raises(ParameterError, match="ridge"):
        predict.kernel_regression(H, y, ridge=-1e-3)
    with pytest.raises(ParameterError, match="ridge"):
        predict.gradient_descent_mse(H, y, ridge=-1.0)
    with pytest.raises(ParameterError, match="learning_rate"):
        predict.gradient_descent_mse(H, y, learning_rate=0.0)
    with pytest.raises(ParameterError, match="diag_reg"):
        predict.gp_posterior(H, y, Kt, diag_reg=-1)
    with pytest.raises(ParameterError, match="float64"):
        predict.kernel_regression(H, y, dtype=torch.float16)


def test_negative_and_non_integer_times(problem):
    H, Kt, y = problem
    flow = predict.gradient_descent_mse(H, y)
    with pytest.raises(ParameterError, match=">= 0"):
        flow.train(-1.0)
    with pytest.raises(ParameterError, match=">= 0"):
        flow.test([0.0, -0.5], Kt)
    with pytest.raises(NonFiniteError):
        flow.train(float("nan"))
    with pytest.raises(ParameterError, match="integer"):
        predict.gradient_descent_mse(H, y, learning_rate=0.1).train(2.5)
    with pytest.raises(ParameterError, match=">= 0"):
        predict.gp_posterior(H, y, Kt, np.eye(3), ntk_train_train=H, ntk_test_train=Kt, t=-1)
    with pytest.raises(ParameterError, match=">= 0"):
        predict.gradient_descent("mse", H, y).train(-2.0)
    with pytest.raises(ParameterError, match=">= 0"):
        predict.loss_curve(H, y, [-1])


def test_non_symmetric_kernel(problem):
    H, Kt, y = problem
    Hb = H.copy()
    Hb[0, 1] += 0.1
    for call in (
        lambda: predict.kernel_regression(Hb, y),
        lambda: predict.gradient_descent_mse(Hb, y),
        lambda: predict.max_learning_rate(Hb),
        lambda: predict.gp_posterior(Hb, y, Kt),
        lambda: predict.gradient_descent("mse", Hb, y),
    ):
        with pytest.raises(ParameterError, match="not symmetric"):
            call()
    # round-off asymmetry is accepted (and symmetrized)
    Hr = H.copy()
    Hr[0, 1] *= 1 + 1e-13
    predict.kernel_regression(Hr, y)


def test_not_positive_semidefinite(problem):
    H, _, y = problem
    with pytest.raises(ParameterError, match="positive semidefinite"):
        predict.gradient_descent_mse(H - 2 * np.eye(6) * np.abs(H).max(), y)


def test_singular_kernel_error_and_pinv():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((6, 3))
    H, y = A @ A.T, rng.standard_normal(6)
    with pytest.raises(SingularMatrixError) as err:
        predict.kernel_regression(H, y)
    assert "ridge" in str(err.value) and "pinv=True" in str(err.value)
    with pytest.raises(SingularMatrixError, match="pinv=True"):
        predict.gp_posterior(H, y, H[:2])
    ok = predict.kernel_regression(H, y, ridge=1e-3)
    assert torch.isfinite(ok).all()
    # duplicated points give an exactly singular matrix
    Hd = np.ones((2, 2))
    with pytest.raises(SingularMatrixError, match="duplicate"):
        predict.kernel_regression(Hd, [1.0, 2.0])


def test_ill_conditioned_warning_states_the_number():
    H = np.diag([1.0, 1e-7, 1e-14])
    with pytest.warns(IllConditionedWarning, match=r"condition number ≈ 1\.0\de\+14"):
        predict.kernel_regression(H, [1.0, 1.0, 1.0])
    # well conditioned: no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict.kernel_regression(np.diag([1.0, 0.5]), [1.0, 1.0])
    # float32: flagged at a much smaller condition number
    with pytest.warns(IllConditionedWarning):
        predict.kernel_regression(np.diag([1.0, 1e-6]), [1.0, 1.0], dtype=torch.float32)
    # t = inf of the dynamics warns too
    with pytest.warns(IllConditionedWarning):
        predict.gradient_descent_mse(H, [1.0, 1.0, 1.0]).test(float("inf"), np.eye(3))


def test_gp_argument_combinations(problem):
    H, Kt, y = problem
    with pytest.raises(ParameterError, match="both"):
        predict.gp_posterior(H, y, Kt, ntk_train_train=H)
    with pytest.raises(ParameterError, match="NTK-GP"):
        predict.gp_posterior(H, y, Kt, t=1.0)
    with pytest.raises(ShapeError, match="full_cov=False"):
        predict.gp_posterior(H, y, Kt, np.ones(3))


@pytest.mark.parametrize("log_cond, warns", [(9, False), (13, True)])
def test_condition_estimate_on_dense_matrices(log_cond, warns):
    import re
    import warnings

    rng = np.random.default_rng(log_cond)
    Q, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    H = (Q * np.logspace(0, -log_cond, 60)) @ Q.T
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        predict.kernel_regression(H, rng.standard_normal(60))
    hits = [w for w in rec if issubclass(w.category, IllConditionedWarning)]
    assert bool(hits) == warns
    if warns:
        est = float(re.search(r"≈ ([0-9.e+]+)", str(hits[0].message)).group(1))
        assert 10 ** (log_cond - 1) < est <= 1.01 * 10**log_cond


def test_singularity_does_not_depend_on_whether_cholesky_fails():
    """One criterion (λ_min <= n·ε·λ_max, ntkit.linalg.conditioning) on every CPU.

    A factor with a 1e-9 pivot gives a matrix whose Cholesky succeeds everywhere (pivot²
    1e-18 > 0) although it is numerically singular; exactly rank-deficient Gram matrices,
    whose factorization succeeds or fails by rounding, must raise the same way.
    """
    import ntkit.linalg as linalg

    L = np.tril(np.random.default_rng(2).standard_normal((5, 5)), -1) + np.diag([1, 1, 1, 1, 1e-9])
    cases = [L @ L.T]
    for seed in range(20):
        A = np.random.default_rng(seed).standard_normal((8 + seed, 3 + seed % 4))
        cases.append(A @ A.T)
    for H in cases:
        y = np.ones(H.shape[0])
        with pytest.raises(SingularMatrixError, match="ridge"):
            predict.kernel_regression(H, y)
        with pytest.raises(SingularMatrixError, match="ridge"):
            linalg.solve(H, y, solver="cholesky")
    # just above the threshold it is a (warned) solve, not an error
    H = np.diag([1.0, 1e-13])
    with pytest.warns(IllConditionedWarning):
        assert torch.isfinite(predict.kernel_regression(H, [1.0, 1.0])).all()
