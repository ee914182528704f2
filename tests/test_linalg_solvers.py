"""Solvers of ntkit.linalg against independent routes: torch.linalg.solve on the dense kernel
from ``arch.kernel`` and scikit-learn's KernelRidge."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge

import ntkit as nk
from ntkit.data import load_dataset
from ntkit.errors import ParameterError, ShapeError, SingularMatrixError
from ntkit.linalg import (
    ConvergenceWarning,
    KernelOperator,
    NystromPreconditioner,
    choose_solver,
    conjugate_gradient,
    nystrom,
    predict,
    solve,
)

F64 = torch.float64
solve_module = importlib.import_module("ntkit.linalg.solve")


def rel(a, b) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.fixture(scope="module")
def problem():
    """mnist1d (generated offline), 10-class one-hot regression with the depth-3 ReLU NTK."""
    X, y = load_dataset("mnist1d")
    arch = nk.mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1)
    x, xt = torch.from_numpy(X[:400]), torch.from_numpy(X[4000:4300])
    Y = torch.nn.functional.one_hot(torch.from_numpy(y[:400]), 10).to(F64)
    K = arch.kernel(x, get="ntk")
    Kt = arch.kernel(xt, x, get="ntk")
    ridge = 1e-3 * float(K.diagonal().mean())
    exact = torch.linalg.solve(K + ridge * torch.eye(400, dtype=F64), Y)
    return dict(arch=arch, x=x, xt=xt, y=y[:400], yt=y[4000:4300], Y=Y, K=K, Kt=Kt,
                ridge=ridge, exact=exact)


def test_cholesky_equals_torch_and_sklearn(problem):
    p = problem
    op = KernelOperator(p["arch"], p["x"], tile=64)
    alpha = solve(op, p["Y"], solver="cholesky", ridge=p["ridge"])
    assert rel(alpha, p["exact"]) < 1e-10
    krr = KernelRidge(alpha=p["ridge"], kernel="precomputed").fit(p["K"].numpy(), p["Y"].numpy())
    assert rel(alpha, torch.from_numpy(krr.dual_coef_)) < 1e-8
    # dense input, 1-D targets, the caller's matrix untouched
    K = p["K"].clone()
    a1 = solve(K, p["Y"][:, 3], solver="cholesky", ridge=p["ridge"])
    assert a1.shape == (400,) and rel(a1, p["exact"][:, 3]) < 1e-10
    assert torch.equal(K, p["K"])


@pytest.mark.parametrize("preconditioner", [None, "auto"])
def test_cg_equals_cholesky(problem, preconditioner):
    p = problem
    op = KernelOperator(p["arch"], p["x"], tile=64)
    alpha, info = solve(op, p["Y"], solver="cg", ridge=p["ridge"], tol=1e-13,
                        preconditioner=preconditioner, return_info=True)
    assert info.solver == "cg" and info.converged
    assert rel(alpha, p["exact"]) < 1e-8
    if preconditioner == "auto":
        assert info.iterations <= 5  # rank min(n, 500) = n: an (almost) exact preconditioner


def test_nystrom_preconditioner_speeds_up_cg(problem):
    p = problem
    A = p["K"] + p["ridge"] * torch.eye(400, dtype=F64)
    plain = conjugate_gradient(A, p["Y"], tol=1e-10, maxiter=2000)
    pre = NystromPreconditioner(p["K"], rank=100, ridge=p["ridge"], seed=1)
    fast = conjugate_gradient(A, p["Y"], preconditioner=pre, tol=1e-10, maxiter=2000)
    assert plain.converged and fast.converged
    assert fast.iterations < plain.iterations / 2
    assert rel(fast.x, p["exact"]) < 1e-6


def test_auto_preconditioner_is_stronger_when_matrix_free(problem, monkeypatch):
    # Each matrix-free CG step recomputes the kernel: the default preconditioner takes more
    # columns there. The ranks are scaled down to this problem's n = 400.
    p = problem
    monkeypatch.setattr(solve_module, "DEFAULT_PRECONDITIONER_RANK", 20)
    monkeypatch.setattr(solve_module, "MATRIX_FREE_PRECONDITIONER_RANK", 200)
    ranks = []
    real = solve_module.NystromPreconditioner

    def spy(*args, rank, **kwargs):
        ranks.append(rank)
        return real(*args, rank=rank, **kwargs)

    monkeypatch.setattr(solve_module, "NystromPreconditioner", spy)
    steps = {}
    for cache in (True, False):
        op = KernelOperator(p["arch"], p["x"], tile=64, cache=cache)
        assert op.cached is cache
        alpha, info = solve(op, p["Y"], solver="cg", ridge=p["ridge"], tol=1e-10,
                            return_info=True)
        assert rel(alpha, p["exact"]) < 1e-7
        steps[cache] = info.iterations
    assert ranks == [20, 200]
    assert steps[False] < steps[True]


def test_nystrom_with_all_points_equals_cholesky(problem):
    p = problem
    op = KernelOperator(p["arch"], p["x"], tile=64)
    for kernel in (op, p["K"]):
        alpha, info = solve(kernel, p["Y"], solver="nystrom", centers=400, ridge=p["ridge"],
                            tol=1e-13, return_info=True)
        assert info.index.numel() == 400
        assert rel(alpha, p["exact"]) < 1e-8
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(3))
    sol = nystrom(op, p["Y"], centers=perm, ridge=p["ridge"], tol=1e-13)
    assert rel(sol.alpha(400), p["exact"]) < 1e-8
    assert rel(sol.predict(p["xt"]), p["Kt"] @ p["exact"]) < 1e-8


def test_nystrom_gram_mode_when_knm_does_not_fit(problem):
    p = problem
    op = KernelOperator(p["arch"], p["x"], memory_budget=150_000)  # K_nM (≥ 400×60 float64) does not fit
    sol = nystrom(op, p["Y"], centers=400, ridge=p["ridge"], tol=1e-13)
    assert sol.mode == "gram"
    assert rel(sol.alpha(400), p["exact"]) < 1e-8
    small = nystrom(op, p["Y"], centers=60, ridge=p["ridge"], seed=4)
    cached = nystrom(KernelOperator(p["arch"], p["x"]), p["Y"], centers=60, ridge=p["ridge"], seed=4)
    assert small.mode == "gram" and cached.mode == "iterative"
    assert rel(small.beta, cached.beta) < 1e-6


def test_nystrom_approaches_exact_as_centres_grow(problem):
    p = problem
    op = KernelOperator(p["arch"], p["x"], tile=64)
    f_exact = p["Kt"] @ p["exact"]
    acc_exact = float((f_exact.argmax(1).numpy() == p["yt"]).mean())
    errors, gaps = [], []
    for M in (25, 100, 400):
        sol = nystrom(op, p["Y"], centers=M, ridge=p["ridge"], seed=0)
        f = sol.predict(p["xt"])
        errors.append(rel(f, f_exact))
        gaps.append(abs(float((f.argmax(1).numpy() == p["yt"]).mean()) - acc_exact))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6
    assert gaps[-1] == 0.0 and gaps[0] >= gaps[-1]


def test_nystrom_centres_as_points(problem):
    p = problem
    op = KernelOperator(p["arch"], p["x"], tile=64)
    idx = torch.arange(0, 400, 4)
    by_index = nystrom(op, p["Y"], centers=idx, ridge=p["ridge"])
    by_points = nystrom(op, p["Y"], centers=p["x"][idx], ridge=p["ridge"])
    assert by_points.index is None
    # the point route evaluates self pairs as cross pairs (√ε-accurate for arc-cosine kernels)
    assert rel(by_points.predict(p["xt"]), by_index.predict(p["xt"])) < 1e-5


def test_nystrom_bad_centres(problem):
    p = problem
    with pytest.raises(ParameterError, match="exceeds the number of training points"):
        solve(p["K"], p["Y"], solver="nystrom", centers=401)
    with pytest.raises(ParameterError, match="distinct"):
        nystrom(p["K"], p["Y"], centers=[1, 2, 2])
    with pytest.raises(ShapeError):
        nystrom(p["K"], p["Y"], centers=[0, 400])


def test_cg_warns_with_the_achieved_residual(problem):
    p = problem
    A = p["K"] + p["ridge"] * torch.eye(400, dtype=F64)
    with pytest.warns(ConvergenceWarning, match="maxiter=3") as record:
        res = conjugate_gradient(A, p["Y"], maxiter=3, tol=1e-12)
    assert not res.converged and res.iterations == 3
    true = float((torch.linalg.vector_norm(p["Y"] - A @ res.x, dim=0)
                  / torch.linalg.vector_norm(p["Y"], dim=0)).max())
    assert res.residual == pytest.approx(true, rel=1e-10)
    assert f"{true:.3e}" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert conjugate_gradient(A, p["Y"], maxiter=3, warn=False).residual > 1e-12


def test_preconditioner_hook_callable_and_object(problem):
    p = problem
    A = p["K"] + p["ridge"] * torch.eye(400, dtype=F64)
    d = A.diagonal()
    calls = []

    def jacobi(r):
        calls.append(r.shape)
        return r / d[:, None]

    res = conjugate_gradient(A, p["Y"], preconditioner=jacobi, tol=1e-12, maxiter=2000)
    assert calls and calls[0] == (400, 10)
    assert rel(res.x, p["exact"]) < 1e-8

    class Jacobi:
        def apply(self, r):
            return r / d[:, None]

    res2 = conjugate_gradient(A, p["Y"], preconditioner=Jacobi(), tol=1e-12, maxiter=2000)
    assert res2.iterations == res.iterations
    alpha = solve(p["K"], p["Y"], solver="cg", ridge=p["ridge"], preconditioner=jacobi, tol=1e-12,
                  maxiter=2000)
    assert rel(alpha, p["exact"]) < 1e-8


def test_cg_progress_bar(problem, capsys):
    p = problem
    conjugate_gradient(p["K"] + torch.eye(400, dtype=F64), p["Y"][:, 0], progress=True, maxiter=5,
                       warn=False)
    assert "CG" in capsys.readouterr().err
    conjugate_gradient(p["K"] + torch.eye(400, dtype=F64), p["Y"][:, 0], progress=False, maxiter=5,
                       warn=False)
    assert capsys.readouterr().err == ""


def test_auto_rule(problem, monkeypatch):
    p = problem
    arch, x = p["arch"], p["x"]
    assert choose_solver(KernelOperator(arch, x, memory_budget="64MiB")) == "cholesky"
    # half the matrix (plus one tile) fits, the whole one does not: CG on cached tiles
    op = KernelOperator(arch, x, memory_budget=1_100_000, tile=16)
    assert op.cached and choose_solver(op) == "cg"
    op = KernelOperator(arch, x, memory_budget=300_000, tile=16)
    assert not op.cached and choose_solver(op) == "nystrom"
    assert choose_solver(p["K"]) == "cholesky"
    monkeypatch.setattr(solve_module, "AUTO_CHOLESKY_MAX_N", 100)
    assert choose_solver(p["K"]) == "cg"
    alpha, info = solve(p["K"], p["Y"], ridge=p["ridge"], tol=1e-12, return_info=True)
    assert info.solver == "cg" and rel(alpha, p["exact"]) < 1e-8


def test_predict_helper(problem):
    p = problem
    f = predict(p["arch"], p["xt"], p["x"], p["exact"], memory_budget="2MiB")
    assert rel(f, p["Kt"] @ p["exact"]) < 1e-12
    sol = nystrom(KernelOperator(p["arch"], p["x"]), p["Y"], centers=50, ridge=p["ridge"])
    assert rel(predict(p["arch"], p["xt"], p["x"], sol.alpha(400)), sol.predict(p["xt"])) < 1e-12
    assert predict(p["arch"], p["xt"], p["x"], torch.zeros(400)).abs().max() == 0


def test_singular_and_bad_inputs(problem):
    p = problem
    # a linear kernel <x, x'>/d of 21 points in 5 dimensions has rank 5: singular
    linear = nk.serial(nk.Dense(1))
    op = KernelOperator(linear, p["x"][:21, :5])
    with pytest.raises(SingularMatrixError, match="ridge > 0"):
        solve(op, torch.ones(21), solver="cholesky")
    ones = torch.ones(21, dtype=F64)
    ref = torch.linalg.solve(op.to_dense() + 1e-3 * torch.eye(21, dtype=F64), ones)
    assert rel(solve(op, ones, solver="cholesky", ridge=1e-3), ref) < 1e-10
    with pytest.raises(ShapeError, match="400 rows"):
        solve(p["K"], torch.ones(5))
    with pytest.raises(ParameterError):
        solve(p["K"], p["Y"], solver="lu")
    with pytest.raises(ParameterError):
        solve(p["K"], p["Y"], ridge=-1.0)
    with pytest.raises(ShapeError, match="symmetric training kernel"):
        solve(KernelOperator(p["arch"], p["xt"], p["x"]), p["Y"])
    with pytest.raises(ParameterError, match="not symmetric"):
        solve(p["K"] + torch.triu(torch.ones(400, 400, dtype=F64)), p["Y"])


def test_float32_solvers(problem):
    p = problem
    op = KernelOperator(p["arch"], p["x"], dtype=torch.float32)
    big_ridge = 0.1 * float(p["K"].diagonal().mean())
    ref = torch.linalg.solve(p["K"] + big_ridge * torch.eye(400, dtype=F64), p["Y"])
    for solver in ("cholesky", "cg", "nystrom"):
        kw = {"centers": 400} if solver == "nystrom" else {}
        alpha = solve(op, p["Y"], solver=solver, ridge=big_ridge, **kw)
        assert alpha.dtype == torch.float32
        assert rel(alpha.double(), ref) < 1e-3, solver
    assert np.isfinite(alpha.numpy()).all()
