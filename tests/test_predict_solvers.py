"""kernel_regression through ntkit.linalg: operators and iterative solvers equal Cholesky."""

from __future__ import annotations

import pytest
import torch

import ntkit as nk


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    xt = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    return nk.mlp(3, 64, "relu", W_std=1.4, b_std=0.1), x, xt, y


def test_dense_solvers_agree(problem):
    arch, x, xt, y = problem
    k, kt = arch.kernel(x, get="ntk"), arch.kernel(xt, x, get="ntk")
    exact = nk.kernel_regression(k, y, kt, ridge=1e-3, solver="cholesky")
    for solver in ("cg", "nystrom"):
        got = nk.kernel_regression(k, y, kt, ridge=1e-3, solver=solver)
        torch.testing.assert_close(got, exact, rtol=1e-6, atol=1e-7)


def test_operators_never_forming_the_matrix_agree(problem):
    arch, x, xt, y = problem
    exact = nk.kernel_regression(arch.kernel(x, get="ntk"), y, arch.kernel(xt, x, get="ntk"),
                                 ridge=1e-3)
    op, op_test = nk.linalg.KernelOperator(arch, x), nk.linalg.KernelOperator(arch, xt, x)
    for solver in ("auto", "cg"):
        got = nk.kernel_regression(op, y, op_test, ridge=1e-3, solver=solver)
        torch.testing.assert_close(got, exact, rtol=1e-6, atol=1e-7)


def test_bad_solver_name(problem):
    arch, x, _, y = problem
    with pytest.raises(nk.NtkitError, match="solver"):
        nk.kernel_regression(arch.kernel(x, get="ntk"), y, solver="lu")
