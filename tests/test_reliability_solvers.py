"""Solvers and dynamics (issue 12): divergence raises, stiffness is handled, variances >= 0."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.errors import NonFiniteError, ParameterError, SingularMatrixError
from ntkit.linalg import conjugate_gradient

F64 = torch.float64


def _singular_psd(seed: int, n: int = 50, null: int = 5):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
    lam = torch.cat([torch.linspace(1, 10, n - null, dtype=F64), torch.zeros(null, dtype=F64)])
    A = (Q * lam) @ Q.T
    return 0.5 * (A + A.T), torch.randn(n, dtype=F64, generator=g)


# ------------------------------------------------------------------ 4. CG divergence
@pytest.mark.parametrize("seed", range(6))
def test_cg_on_a_singular_kernel_raises_like_cholesky(seed):
    A, b = _singular_psd(seed)
    with pytest.raises(SingularMatrixError):
        nk.kernel_regression(A, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SingularMatrixError):
            conjugate_gradient(A, b, maxiter=100)


def test_cg_solver_entry_points_raise_on_duplicated_points():
    x = torch.randn(60, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    x[1], x[3] = x[0], x[2]
    arch = nk.mlp(2, 1, "relu")
    K, y = arch.kernel(x, get="ntk"), torch.randn(60, dtype=F64)
    for solver in ("cholesky", "cg", "nystrom"):
        with pytest.raises(SingularMatrixError):
            nk.kernel_regression(K, y, solver=solver)
    with pytest.raises(SingularMatrixError):
        nk.kernel_regression(nk.linalg.KernelOperator(arch, x, get="ntk"), y, solver="cg")


def test_cg_still_converges_on_a_regular_system():
    A, b = _singular_psd(0)
    res = conjugate_gradient(A + 0.1 * torch.eye(50, dtype=F64), b, tol=1e-10)
    assert res.converged
    assert torch.allclose(A @ res.x + 0.1 * res.x, b, atol=1e-8)


# ------------------------------------------------------------------ 5. unstable GD, stiff ODE
def _ntk(n=20, seed=0):
    x = torch.randn(n, 4, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return nk.mlp(2, 1, "relu", b_std=0.1).kernel(x, get="ntk"), torch.randn(n, dtype=F64)


def test_gd_above_the_stability_limit_raises_when_it_overflows():
    K, y = _ntk()
    eta = 3 * nk.max_learning_rate(K)
    with pytest.warns(RuntimeWarning, match="max_learning_rate"):
        gd = nk.gradient_descent_mse(K, y, learning_rate=eta)
    assert torch.isfinite(gd.train(5)).all()  # a few steps are finite (and allowed)
    with pytest.raises(NonFiniteError, match="learning_rate < max_learning_rate"):
        gd.train(100000)
    with pytest.raises(NonFiniteError, match="diverges"):
        gd.loss([1, 100000])
    with pytest.raises(NonFiniteError, match="diverges"):
        gd.test(100000, K[:3])
    with pytest.raises(NonFiniteError, match="diverges"):  # sibling: the NTK-GP mean
        nk.gp_posterior(K, y, K[:3], ntk_train_train=K, ntk_test_train=K[:3], t=100000,
                        learning_rate=eta)


def test_stiff_gradient_flow_switches_to_an_implicit_method():
    K, y = _ntk()
    eta, t = 1e7, 1.0
    ode = nk.gradient_descent("mse", K, y, learning_rate=eta)
    start = time.perf_counter()
    out = ode.train(t)
    assert time.perf_counter() - start < 60  # DOP853 would take minutes
    assert ode.last_method == "Radau"
    exact = nk.gradient_descent_mse(K, y).train(eta * t)  # closed form at flow time η·t
    assert torch.allclose(out, exact, atol=1e-6)
    with pytest.raises(ParameterError, match=r"stiff.*Radau"):
        nk.gradient_descent("mse", K, y, learning_rate=eta, method="DOP853").train(t)
    small = nk.gradient_descent("mse", K, y, learning_rate=1.0)
    small.train(1.0)
    assert small.last_method == "DOP853"  # non-stiff problems keep the accurate explicit one


def test_unknown_ode_method_is_refused_at_construction():
    K, y = _ntk()
    with pytest.raises(ParameterError, match="method"):
        nk.gradient_descent("mse", K, y, method="Euler")


# ------------------------------------------------------------------ 6. GP variances
@pytest.mark.parametrize("seed", range(4))
def test_gp_variances_at_training_points_are_clipped_at_zero(seed):
    x = torch.randn(30, 6, dtype=F64, generator=torch.Generator().manual_seed(seed))
    k = nk.mlp(3, 1, "relu", b_std=0.1).kernel(x)
    y = torch.randn(30, dtype=F64)
    scale = float(k.nngp.diagonal().max())
    for post in (
        nk.gp_posterior(k.nngp, y, k.nngp, k.nngp),
        nk.gp_posterior(k.nngp, y, k.nngp, k.nngp, ntk_train_train=k.ntk, ntk_test_train=k.ntk),
        nk.gp_posterior(k.nngp, y, k.nngp, k.nngp, ntk_train_train=k.ntk, ntk_test_train=k.ntk,
                        t=1e6),
    ):
        assert (post.variance >= 0).all()
        assert float(post.variance.max()) < 1e-6 * scale  # the exact value is 0
        assert torch.isfinite(post.variance.sqrt()).all()
        assert torch.equal(post.covariance.diagonal(), post.variance)
    # Away from the training points the clip does nothing: variance = k(x,x) - k K^-1 k.
    xt = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(99))
    kt, ktt = nk.mlp(3, 1, "relu", b_std=0.1).kernel(xt, x, get="nngp"), None
    ktt = nk.mlp(3, 1, "relu", b_std=0.1).kernel(xt, get="nngp")
    post = nk.gp_posterior(k.nngp, y, kt, ktt)
    ref = ktt.diagonal() - (kt @ torch.linalg.solve(k.nngp, kt.T)).diagonal()
    np.testing.assert_allclose(post.variance, ref, rtol=1e-6)
