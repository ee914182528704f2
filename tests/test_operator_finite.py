"""No silent NaN/Inf from the matrix-free operator (issue 12, item 1, at the operator).

Every product (``op @ v``, ``op.T @ u``, ``gram``), dense view (``to_dense``, ``diag``) and
prediction of a :class:`~ntkit.linalg.KernelOperator` is checked before it is returned:
overflow raises the library's ``NonFiniteError`` naming what to change, as ``arch.kernel``
does, instead of handing back NaN/Inf.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.errors import NonFiniteError
from ntkit.linalg import KernelOperator, TensorSource

F64 = torch.float64


def _x(n, d=10, seed=0):
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def test_overflowing_architecture_through_the_operator_raises():
    """W_std = 1e77: W_std² is finite, the depth-2 NTK is not (it reached the caller as Inf)."""
    arch = nk.mlp(2, 1, "relu", W_std=1e77)
    x = _x(6)
    xt = x[:3].clone()  # rows paired with themselves: the entries that overflow
    with pytest.raises(NonFiniteError, match="W_std"):
        arch.kernel(x, get="ntk")  # the dense route already refused it
    op = KernelOperator(arch, x)
    with pytest.raises(NonFiniteError, match=r"K @ v .*LayerSource.*W_std"):
        op @ torch.ones(6, dtype=F64)
    with pytest.raises(NonFiniteError, match="W_std"):
        op.to_dense()
    cross = KernelOperator(arch, xt, x)
    with pytest.raises(NonFiniteError, match="W_std"):
        cross.T @ torch.ones(3, dtype=F64)
    with pytest.raises(NonFiniteError, match="W_std"):
        cross.gram(torch.ones(6, dtype=F64))
    with pytest.raises(NonFiniteError, match="W_std"):
        nk.linalg.predict(arch, xt, x, torch.ones(6, dtype=F64))
    # the solver names the cause instead of blaming its inputs or diverging
    with pytest.raises(NonFiniteError, match="W_std"):
        nk.linalg.solve(op, torch.ones(6, dtype=F64), solver="cg", preconditioner=None)


def test_empirical_source_of_a_model_with_a_nan_weight_raises():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x = _x(6)
    src = nk.EmpiricalNTKSource(model, x, method="jacobian")
    op = KernelOperator(src)
    assert bool(torch.isfinite(op @ torch.ones(6, dtype=F64)).all())
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")  # weights are read when a tile is computed
    with pytest.raises(NonFiniteError, match=r"EmpiricalNTKSource.*NaN/Inf weight"):
        KernelOperator(src, cache=False) @ torch.ones(6, dtype=F64)
    with pytest.raises(NonFiniteError, match="NaN/Inf weight"):
        KernelOperator(src, cache=False).diag()


def test_float32_products_that_overflow_raise():
    """A finite float32 matrix whose product overflows (and a matrix holding Inf)."""
    K = torch.full((4, 4), 1e38, dtype=torch.float32)
    op = KernelOperator(TensorSource(K))
    with pytest.raises(NonFiniteError, match=r"TensorSource.*float32"):
        op @ torch.ones(4)
    K64 = torch.eye(4, dtype=F64)
    K64[1, 2] = K64[2, 1] = float("inf")
    with pytest.raises(NonFiniteError, match="precomputed kernel matrix"):
        KernelOperator(TensorSource(K64)).to_dense()
