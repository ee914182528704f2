"""The one dense solve (ntkit.linalg.solve_psd) and the checks every kernel_regression path runs."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.errors import IllConditionedWarning, ParameterError, ShapeError, SingularMatrixError
from ntkit.linalg import eigh_psd, solve, solve_psd

F64 = torch.float64


def _spd(n: int, log_cond: float, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return torch.from_numpy((Q * np.logspace(0, -log_cond, n)) @ Q.T)


def test_cholesky_against_an_independent_solve_with_ridge():
    K, B = _spd(30, 6), torch.randn(30, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    want = np.linalg.solve(K.numpy() + 0.1 * np.eye(30), B.numpy())
    got = solve_psd(K, B, ridge=0.1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(solve_psd(K, B[:, 0], ridge=0.1).numpy(), want[:, 0], rtol=1e-10, atol=1e-12)
    Kc = K.clone()
    solve_psd(K, B, ridge=0.1)
    assert torch.equal(K, Kc)  # not overwritten unless asked
    solve_psd(Kc, B, ridge=0.1, overwrite=True)
    assert not torch.equal(K, Kc)  # the factor took its place


def test_pinv_is_the_minimum_norm_solution():
    A = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    K, b = A @ A.T, torch.randn(8, dtype=F64, generator=torch.Generator().manual_seed(3))
    with pytest.raises(SingularMatrixError, match="pinv=True"):
        solve_psd(K, b)
    got = solve_psd(K, b, pinv=True, rcond=1e-10)
    np.testing.assert_allclose(got.numpy(), np.linalg.pinv(K.numpy(), rcond=1e-10) @ b.numpy(), atol=1e-10)


def test_float64_accumulation_of_a_float32_kernel():
    K64 = _spd(40, 3, seed=4)
    b = torch.ones(40, dtype=F64)
    ref = solve_psd(K64, b)
    K32 = K64.float()
    acc = solve_psd(K32, b.float(), dtype=torch.float64)
    assert acc.dtype == F64
    plain = solve_psd(K32, b.float())
    assert plain.dtype == torch.float32
    exact32 = torch.linalg.solve(K32.double(), b)  # the float32 matrix, solved exactly
    assert (acc - exact32).abs().max() < 1e-9 * exact32.abs().max()
    assert (plain.double() - exact32).abs().max() > (acc - exact32).abs().max()
    assert (acc - ref).abs().max() < 1e-2 * ref.abs().max()  # the float32 matrix is close to K64


def test_one_stack_same_warning_and_error_everywhere():
    """predict, bounds and linalg.solve share the solve: same criterion, same warning."""
    H = _spd(20, 13, seed=5)
    y = torch.ones(20, dtype=F64)
    messages = []
    for call in (lambda: nk.kernel_regression(H, y), lambda: solve(H, y, solver="cholesky"),
                 lambda: nk.bounds.yHy(H, y), lambda: solve_psd(H, y)):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            call()
        hits = [w for w in rec if issubclass(w.category, IllConditionedWarning)]
        assert len(hits) == 1, call
        assert hits[0].filename == __file__  # points at the user's line
        messages.append(re.search(r"≈ ([0-9.e+]+)", str(hits[0].message)).group(1))
    assert len(set(messages)) == 1
    singular = torch.ones(3, 3, dtype=F64)
    for call in (lambda: nk.kernel_regression(singular, torch.ones(3)),
                 lambda: solve(singular, torch.ones(3), solver="cholesky"),
                 lambda: nk.bounds.yHy(singular, torch.ones(3))):
        with pytest.raises(SingularMatrixError, match="ridge > 0"):
            call()


def test_solve_psd_errors():
    with pytest.raises(ShapeError, match="square"):
        solve_psd(torch.ones(3, 2, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(ShapeError, match="right-hand side"):
        solve_psd(torch.eye(3, dtype=F64), torch.ones(4, dtype=F64))
    with pytest.raises(ParameterError, match=r"float64 or torch\.float32"):
        solve_psd(torch.eye(3, dtype=F64), torch.ones(3, dtype=F64), dtype=torch.float16)
    with pytest.raises(ParameterError, match="positive semidefinite"):
        eigh_psd(-torch.eye(3, dtype=F64))


@pytest.fixture
def regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g, dtype=F64)
    xt = torch.randn(6, 4, generator=g, dtype=F64)
    y = torch.randn(30, generator=g, dtype=F64)
    return nk.mlp(2, 8, "relu", W_std=1.3, b_std=0.2), x, xt, y


@pytest.mark.parametrize("route", ["matrix-cg", "operator"])
def test_every_path_runs_the_dense_input_checks(regression, route):
    arch, x, xt, y = regression
    if route == "operator":
        k, kt, solver = nk.linalg.KernelOperator(arch, x), nk.linalg.KernelOperator(arch, xt, x), "auto"
    else:
        k, kt, solver = arch.kernel(x, get="ntk"), arch.kernel(xt, x, get="ntk"), "cg"
    f0t = torch.randn(6, dtype=F64)
    ok = nk.kernel_regression(k, y, kt, ridge=1e-3, fx_test_0=f0t, solver=solver)
    assert ok.shape == (6,)
    # (m, 1) initial test outputs against (n,) targets: an error, not an (m, m) broadcast
    with pytest.raises(ShapeError, match="fx_test_0"):
        nk.kernel_regression(k, y, kt, ridge=1e-3, fx_test_0=f0t[:, None], solver=solver)
    with pytest.raises(ShapeError, match="fx_train_0"):
        nk.kernel_regression(k, y, kt, ridge=1e-3, fx_train_0=y[:, None], solver=solver)
    with pytest.raises(ShapeError, match="y_train"):
        nk.kernel_regression(k, y[:5], kt, ridge=1e-3, solver=solver)
    with pytest.raises(ParameterError, match="rcond"):
        nk.kernel_regression(k, y, kt, ridge=1e-3, rcond=1e-8, solver=solver)
    with pytest.raises(ParameterError, match="fx_test_0"):
        nk.kernel_regression(k, y, ridge=1e-3, fx_test_0=f0t, solver=solver)
    with pytest.raises(ParameterError, match="ridge"):
        nk.kernel_regression(k, y, kt, ridge=-1.0, solver=solver)


def test_dtype_is_honoured_or_refused(regression):
    arch, x, xt, y = regression
    k, kt = arch.kernel(x, get="ntk"), arch.kernel(xt, x, get="ntk")
    got = nk.kernel_regression(k, y, kt, ridge=1e-3, solver="cg", dtype=torch.float32)
    assert got.dtype == torch.float32
    exact = nk.kernel_regression(k, y, kt, ridge=1e-3)
    torch.testing.assert_close(got.double(), exact, rtol=1e-3, atol=1e-4)
    op = nk.linalg.KernelOperator(arch, x)
    with pytest.raises(ParameterError, match="dtype"):
        nk.kernel_regression(op, y, ridge=1e-3, dtype=torch.float32)
    assert nk.kernel_regression(op, y, ridge=1e-3, dtype=torch.float64).dtype == F64
