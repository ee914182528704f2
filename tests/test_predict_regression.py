"""kernel_regression and docs/DESIGN.md identities 4 and 6, against explicit feature-map GD.

Orientation used throughout: the feature matrix ``Phi`` is ``(p, n)`` with one column
``φ(x_i)`` per training example (``p >> n``); the model is ``h(w, x) = φ(x)ᵀ w`` and the
kernel is ``H = ΦᵀΦ`` ``(n, n)``, ``k(x, X) = φ(x)ᵀΦ`` ``(m, n)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit.bounds as bounds
import ntkit.predict as predict

TOL = {torch.float64: 1e-9, torch.float32: 2e-3}


def _linear_problem(seed: int = 0, n: int = 12, m: int = 5, p: int = 120, o: int | None = None):
    rng = np.random.default_rng(seed)
    Phi = rng.standard_normal((p, n)) / np.sqrt(p)
    Phi_t = rng.standard_normal((p, m)) / np.sqrt(p)
    shape = (n,) if o is None else (n, o)
    y = rng.standard_normal(shape)
    w0 = rng.standard_normal((p,) if o is None else (p, o)) * 0.3
    return Phi, Phi_t, y, w0


def _gd_weights(Phi, y, w0, lr, steps):
    """Explicit GD on (1/2n)‖Φᵀw − y‖² in weight space."""
    n = Phi.shape[1]
    w = w0.copy()
    for _ in range(steps):
        w = w - (lr / n) * Phi @ (Phi.T @ w - y)
    return w


@pytest.mark.parametrize("o", [None, 3])
def test_identity_4_and_6_explicit_feature_map(o):
    Phi, Phi_t, y, w0 = _linear_problem(o=o)
    H = Phi.T @ Phi
    n = Phi.shape[1]
    lr = 0.9 * predict.max_learning_rate(H)
    assert lr == pytest.approx(0.9 * 2 * n / np.linalg.eigvalsh(H)[-1], rel=1e-12)
    w_inf = _gd_weights(Phi, y, w0, lr, 3000)
    f0, ft0 = Phi.T @ w0, Phi_t.T @ w0
    # Identity 4a: GD from w0 converges to w0 + Φ(ΦᵀΦ)⁻¹(Y − h(w0, X)), the min-norm solution.
    w_closed = w0 + Phi @ np.linalg.solve(H, y - f0)
    np.testing.assert_allclose(w_inf, w_closed, atol=1e-10)
    # ... which is also what least squares on the residual (min norm) gives.
    w_lstsq = w0 + np.linalg.lstsq(Phi.T, y - f0, rcond=None)[0]
    np.testing.assert_allclose(w_closed, w_lstsq, atol=1e-10)
    # Identity 4b: its predictions equal the kernel-trick predictor.
    pred = predict.kernel_regression(H, y, Phi_t.T @ Phi, fx_train_0=f0, fx_test_0=ft0)
    assert isinstance(pred, torch.Tensor) and pred.dtype == torch.float64
    assert tuple(pred.shape) == ((5,) if o is None else (5, o))
    np.testing.assert_allclose(pred.numpy(), Phi_t.T @ w_inf, atol=1e-10)
    train = predict.kernel_regression(H, y, fx_train_0=f0)
    np.testing.assert_allclose(train.numpy(), y, atol=1e-10)
    # Identity 6: ‖w∞ − w0‖ = sqrt((Y − f0)ᵀ H⁻¹ (Y − f0)).
    dist = bounds.weight_distance(H, y, fx_train_0=f0)
    assert dist == pytest.approx(np.linalg.norm(w_inf - w0), rel=1e-9)
    assert bounds.yHy(H, y - f0) == pytest.approx(np.linalg.norm(w_inf - w0) ** 2, rel=1e-9)


def test_ridge_is_weight_decay_limit():
    Phi, Phi_t, y, w0 = _linear_problem(seed=1)
    H, n, rho = Phi.T @ Phi, Phi.shape[1], 0.3
    # GD on (1/2n)(‖Φᵀw − y‖² + ρ‖w − w0‖²)
    lr = 0.9 * predict.max_learning_rate(H, ridge=rho)
    w = w0.copy()
    for _ in range(3000):
        w = w - (lr / n) * (Phi @ (Phi.T @ w - y) + rho * (w - w0))
    f0, ft0 = Phi.T @ w0, Phi_t.T @ w0
    pred = predict.kernel_regression(H, y, Phi_t.T @ Phi, ridge=rho, fx_train_0=f0, fx_test_0=ft0)
    np.testing.assert_allclose(pred.numpy(), Phi_t.T @ w, atol=1e-10)
    # sklearn-free reference: (H + ρI)⁻¹ by numpy
    ref = ft0 + Phi_t.T @ Phi @ np.linalg.solve(H + rho * np.eye(n), y - f0)
    np.testing.assert_allclose(pred.numpy(), ref, atol=1e-12)
    assert bounds.weight_distance(H, y, fx_train_0=f0, ridge=rho) == pytest.approx(
        np.linalg.norm(w - w0), rel=1e-9
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_numpy_and_dtype(dtype):
    Phi, Phi_t, y, _ = _linear_problem(seed=2)
    H, Kt = Phi.T @ Phi, Phi_t.T @ Phi
    ref = Kt @ np.linalg.solve(H, y)
    out = predict.kernel_regression(H, y, Kt, dtype=dtype)
    assert out.dtype == dtype and out.device.type == "cpu"
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=TOL[dtype], atol=TOL[dtype])
    # torch inputs give the same as numpy inputs
    out_t = predict.kernel_regression(torch.from_numpy(H), torch.from_numpy(y), torch.from_numpy(Kt))
    np.testing.assert_allclose(out_t.numpy(), ref, atol=1e-10)


def test_four_d_multi_output_kernel_matches_block_solve():
    """A 4-D kernel (n, n, o, o) is solved as the (n·o, n·o) block system."""
    rng = np.random.default_rng(3)
    n, m, o, p = 6, 4, 2, 60
    J = rng.standard_normal((n, o, p)) / np.sqrt(p)
    Jt = rng.standard_normal((m, o, p)) / np.sqrt(p)
    K4 = np.einsum("iap,jbp->ijab", J, J)
    Kt4 = np.einsum("iap,jbp->ijab", Jt, J)
    y = rng.standard_normal((n, o))
    out = predict.kernel_regression(K4, y, Kt4)
    assert tuple(out.shape) == (m, o)
    # independent route: min-norm weights solving J w = y, then predict with Jt
    w = np.linalg.lstsq(J.reshape(n * o, p), y.reshape(-1), rcond=None)[0]
    np.testing.assert_allclose(out.numpy(), Jt @ w, atol=1e-10)


def test_pinv_on_singular_kernel_is_min_norm_solution():
    rng = np.random.default_rng(4)
    n, p = 10, 4  # rank-4 kernel on 10 points
    Phi = rng.standard_normal((p, n))
    Phi_t = rng.standard_normal((p, 3))
    y = rng.standard_normal(n)
    H = Phi.T @ Phi
    out = predict.kernel_regression(H, y, Phi_t.T @ Phi, pinv=True)
    w = np.linalg.lstsq(Phi.T, y, rcond=None)[0]  # least-squares fit in weight space
    np.testing.assert_allclose(out.numpy(), Phi_t.T @ w, atol=1e-9)
    # the training predictions are the projection of y on the range of H
    train = predict.kernel_regression(H, y, pinv=True)
    np.testing.assert_allclose(train.numpy(), Phi.T @ w, atol=1e-9)
