"""Matrix-free kernel regression with the empirical NTK of a real network (issue 14).

``nk.empirical.EmpiricalNTKSource(model, x)`` is a kernel source: a ``KernelOperator`` over
it multiplies by the empirical NTK tile by tile. Checked against independent routes: the
tiles against the naive one-backward-per-example NTK, the matrix-free solves against the
dense solve of ``empirical_ntk``'s matrix.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit as nk
from conftest import naive_empirical_ntk
from ntkit.empirical import EmpiricalNTKSource
from ntkit.errors import MemoryBudgetError
from ntkit.linalg import KernelOperator, solve

F64 = torch.float64


def _model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)).double()


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, dtype=F64, generator=g)
    return x, torch.sin(x[:, 0]) + 0.1 * torch.randn(n, dtype=F64, generator=g)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_source_tiles_match_independent_route():
    model = _model()
    x, _ = _data(12, 0)
    src = EmpiricalNTKSource(model, x)
    assert src.symmetric and src.shape == (12, 12) and src.dtype == F64
    ref = naive_empirical_ntk(model, x)  # one backward pass per example and output
    scale = float(ref.abs().max())
    K = src.block(slice(0, 12), slice(0, 12))
    assert torch.equal(K, K.T)
    assert float((K - ref).abs().max()) < 1e-12 * scale
    assert float((src.diagonal() - ref.diagonal()).abs().max()) < 1e-12 * scale
    cross = src.restrict(rows=torch.arange(5), cols=torch.arange(5, 12))
    assert not cross.symmetric and cross.shape == (5, 7)
    assert float((cross.block(slice(0, 5), slice(0, 7)) - ref[:5, 5:]).abs().max()) < 1e-12 * scale
    assert float((cross.block(slice(1, 4), slice(2, 6)) - ref[1:4, 7:11]).abs().max()) < 1e-12 * scale
    # a non-symmetric source's diagonal pairs x1[i] with x2[i]
    assert float((cross.diagonal() - ref[torch.arange(5), torch.arange(5, 10)]).abs().max()) < 1e-12 * scale
    # x2 equal to x1 is the symmetric source
    assert EmpiricalNTKSource(model, x, x.clone()).symmetric


def test_tuple_inputs_and_model_kwargs():
    """Inputs of any layout (:class:`ntkit.empirical.Examples`): a dict, model_kwargs."""

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(2, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, u, v, scale=1.0):
            return self.out(torch.tanh(self.a(u) + scale * self.b(v)))

    torch.manual_seed(0)
    model = Two().double()
    g = torch.Generator().manual_seed(1)
    x = {"u": torch.randn(10, 3, dtype=F64, generator=g), "v": torch.randn(10, 2, dtype=F64, generator=g)}
    ref = nk.empirical_ntk(model, x, model_kwargs={"scale": 0.5}, method="jacobian")
    src = EmpiricalNTKSource(model, x, model_kwargs={"scale": 0.5}, method="jacobian")
    op = KernelOperator(src, memory_budget=src.tile_bytes(4, 4), cache=False)
    assert op.tile == 4
    dense = op @ torch.eye(10, dtype=F64)
    assert _rel(dense, ref) < 1e-12
    # test rows through with_inputs: the same layout, the same method
    xt = {k: v[:3] + 1.0 for k, v in x.items()}
    cross = op.with_inputs(xt, x)
    assert cross.source.method == "jacobian"
    ref_cross = nk.empirical_ntk(model, xt, x, model_kwargs={"scale": 0.5}, method="jacobian")
    assert _rel(cross @ torch.eye(10, dtype=F64), ref_cross) < 1e-12


@pytest.mark.parametrize("method", ["jacobian", "structured"])
def test_matrix_free_cg_equals_dense_solve(method):
    model = _model()
    x, y = _data(150, 1)
    x_test, _ = _data(40, 2)
    ridge = 1e-2
    K = nk.empirical_ntk(model, x, method=method)
    alpha_dense = torch.linalg.solve(K + ridge * torch.eye(150, dtype=F64), y)
    src = EmpiricalNTKSource(model, x, method=method)
    assert src.method == method
    # a budget far below the 150×150 matrix: tiles only, never the matrix
    budget = src.tile_bytes(40, 40)
    op = KernelOperator(src, memory_budget=budget, cache=False)
    assert not op.cached and op.tile == 40 and len(op.tile_grid()) == 10
    alpha = solve(op, y, solver="cg", ridge=ridge, tol=1e-13, maxiter=2000)
    assert _rel(alpha, alpha_dense) < 1e-8
    # predictions through the operator on test points
    pred = op.with_inputs(x_test, x) @ alpha
    pred_dense = nk.empirical_ntk(model, x_test, x, method=method) @ alpha_dense
    assert _rel(pred, pred_dense) < 1e-8


def test_matrix_free_nystrom_all_centres_equals_dense_solve():
    model = _model()
    x, y = _data(120, 4)
    ridge = 1e-1
    K = nk.empirical_ntk(model, x)
    alpha_dense = torch.linalg.solve(K + ridge * torch.eye(120, dtype=F64), y)
    src = EmpiricalNTKSource(model, x)
    # one 30×30 tile plus row panels of 30 rows (and their float64 copies): never the matrix
    op = KernelOperator(src, memory_budget=src.tile_bytes(30, 30) + 3 * 30 * 120 * 8, cache=False, tile=30)
    assert not op.cached
    alpha = solve(op, y, solver="nystrom", ridge=ridge, centers=120, tol=1e-13, maxiter=2000)
    assert _rel(alpha, alpha_dense) < 1e-8


def test_output_size_not_checked_for_a_source(monkeypatch):
    """A source never allocates the matrix: an n where the dense kernel is refused still works."""
    monkeypatch.setenv("NTKIT_MAX_OUTPUT", "1MiB")
    model = _model()
    x, _ = _data(600, 5)  # 600² float64 = 2.9 MB > 1 MiB
    with pytest.raises(MemoryBudgetError):
        nk.empirical_ntk(model, x)
    src = EmpiricalNTKSource(model, x)
    v = torch.zeros(600, dtype=F64)
    v[:3] = 1.0
    out = KernelOperator(src, memory_budget="4MiB", cache=False) @ v
    ref = nk.empirical_ntk(model, x, x[:3]).sum(1)  # (600, 3): small enough
    assert _rel(out, ref) < 1e-12


def test_tensor_source_regression_matches_dense():
    x, y = _data(60, 5)
    K = nk.mlp(3, 1, "relu").kernel(x, get="ntk")
    op = KernelOperator(nk.linalg.TensorSource(K), memory_budget=4096)
    assert op.symmetric and op.tile < 60
    alpha = solve(op, y, solver="cg", ridge=1e-3, tol=1e-13, maxiter=5000)
    ref = torch.linalg.solve(K + 1e-3 * torch.eye(60, dtype=F64), y)
    assert _rel(alpha, ref) < 1e-8
    assert torch.equal(op.restrict(rows=torch.arange(10), cols=torch.arange(10, 60)).to_dense(), K[:10, 10:])
