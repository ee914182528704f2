"""gradient_descent_mse, loss_curve, max_learning_rate against step-by-step simulations.

Reference routes: explicit GD loops in weight space for a linear model
``h(w, x) = f0(x) + J(x)(w − w0)`` (J from a torch MLP via torch.func.jacrev, or random
features), ``scipy.linalg.expm`` for gradient flow, ``numpy`` solves for the limits.
docs/DESIGN.md identity 5 is checked here in its correct form: on the training set
``f_t = f_0 + (I − e^{−Ht/n})(y − f_0)`` and on test points
``f_t(x) = f_0(x) + k(x, X) H⁻¹ (I − e^{−Ht/n})(y − f_0)`` (mean loss, η absorbed in t).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.func import functional_call, jacrev

import ntkit.predict as predict
from ntkit.errors import IllConditionedWarning


def _mlp_linearization(n: int = 10, m: int = 4, d: int = 3, width: int = 48, out: int = 1):
    """Jacobians J (n, out, P), Jt (m, out, P) and outputs f0 of a small tanh MLP."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(d, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, out),
    ).double()
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.randn(n, d, dtype=torch.float64)
    xt = torch.randn(m, d, dtype=torch.float64)

    def jac(inp):
        J = jacrev(lambda p: functional_call(net, p, (inp,)))(params)
        return torch.cat([J[k].reshape(inp.shape[0], out, -1) for k in params], dim=-1)

    with torch.no_grad():
        f0, ft0 = net(x), net(xt)
    return jac(x).numpy(), jac(xt).numpy(), f0.numpy(), ft0.numpy()


def _simulate_gd(J, f0, y, lr, steps, Jt=None, ft0=None, rho=0.0):
    """GD on (1/2n)(‖f0 + J(w − w0) − y‖² + ρ‖w − w0‖²) in weight space (w0 = 0 here)."""
    n = J.shape[0]
    Jf = J.reshape(-1, J.shape[-1])
    v = np.zeros(J.shape[-1])
    rec = {}
    for k in range(max(steps) + 1):
        if k in steps:
            ft = None if Jt is None else ft0.reshape(-1) + Jt.reshape(-1, J.shape[-1]) @ v
            f = f0.reshape(-1) + Jf @ v
            rec[k] = (f, ft, 0.5 * np.sum((f - y.reshape(-1)) ** 2) / n)
        v = v - (lr / n) * (Jf.T @ (f0.reshape(-1) + Jf @ v - y.reshape(-1)) + rho * v)
    return rec


STEPS = [0, 1, 7, 60, 400]


def test_discrete_gd_equals_linearized_mlp_gd():
    J, Jt, f0, ft0 = _mlp_linearization()
    J, Jt, f0, ft0 = J[:, 0], Jt[:, 0], f0[:, 0], ft0[:, 0]
    y = np.sin(np.arange(J.shape[0], dtype=float))
    H, Kt = J @ J.T, Jt @ J.T
    lr = 0.8 * predict.max_learning_rate(H)
    gd = predict.gradient_descent_mse(H, y, learning_rate=lr)
    train = gd.train(STEPS, fx_train_0=f0)
    test = gd.test(STEPS, Kt, fx_train_0=f0, fx_test_0=ft0)
    assert tuple(train.shape) == (len(STEPS), J.shape[0])
    assert tuple(test.shape) == (len(STEPS), Jt.shape[0])
    rec = _simulate_gd(J[:, None], f0, y, lr, STEPS, Jt[:, None], ft0)
    for i, k in enumerate(STEPS):
        np.testing.assert_allclose(train[i].numpy(), rec[k][0], atol=1e-8, rtol=0)
        np.testing.assert_allclose(test[i].numpy(), rec[k][1], atol=1e-8, rtol=0)
        # scalar k gives the same without the time axis
    np.testing.assert_allclose(gd.test(60, Kt, f0, ft0).numpy(), rec[60][1], atol=1e-8)
    # loss_curve equals the simulated loss
    lc = predict.loss_curve(H, y, STEPS, learning_rate=lr, fx_train_0=f0)
    np.testing.assert_allclose(lc.loss.numpy(), [rec[k][2] for k in STEPS], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(lc.residual_sq.numpy(), 2 * J.shape[0] * lc.loss.numpy(), rtol=1e-12)


def test_multi_output_4d_kernel_discrete_gd():
    J, Jt, f0, ft0 = _mlp_linearization(out=2)
    n, m, o = J.shape[0], Jt.shape[0], 2
    y = np.stack([np.cos(np.arange(n)), np.sin(np.arange(n))], axis=1)
    K4 = np.einsum("iap,jbp->ijab", J, J)
    Kt4 = np.einsum("iap,jbp->ijab", Jt, J)
    lr = 0.8 * predict.max_learning_rate(K4)
    gd = predict.gradient_descent_mse(K4, y, learning_rate=lr)
    test = gd.test(STEPS, Kt4, f0, ft0)
    assert tuple(test.shape) == (len(STEPS), m, o)
    rec = _simulate_gd(J, f0, y, lr, STEPS, Jt, ft0)
    for i, k in enumerate(STEPS):
        np.testing.assert_allclose(test[i].numpy().reshape(-1), rec[k][1], atol=1e-8, rtol=0)
        np.testing.assert_allclose(gd.train(k, f0).numpy().reshape(-1), rec[k][0], atol=1e-8)


def test_shared_kernel_multi_output_and_ridge_dynamics():
    rng = np.random.default_rng(5)
    n, m, p, o, rho = 9, 3, 80, 3, 0.2
    J = rng.standard_normal((n, p)) / np.sqrt(p) * 2
    Jt = rng.standard_normal((m, p)) / np.sqrt(p) * 2
    y = rng.standard_normal((n, o))
    f0, ft0 = rng.standard_normal((n, o)) * 0.1, rng.standard_normal((m, o)) * 0.1
    H, Kt = J @ J.T, Jt @ J.T
    lr = 0.7 * predict.max_learning_rate(H, ridge=rho)
    gd = predict.gradient_descent_mse(H, y, learning_rate=lr, ridge=rho)
    for c in range(o):
        rec = _simulate_gd(J[:, None], f0[:, c], y[:, c], lr, STEPS, Jt[:, None], ft0[:, c], rho)
        for i, k in enumerate(STEPS):
            np.testing.assert_allclose(gd.train(STEPS, f0)[i, :, c].numpy(), rec[k][0], atol=1e-10)
            np.testing.assert_allclose(gd.test(STEPS, Kt, f0, ft0)[i, :, c].numpy(), rec[k][1], atol=1e-10)
    # the data-fit loss (ridge term excluded) matches the simulation
    rec_all = [_simulate_gd(J[:, None], f0[:, c], y[:, c], lr, STEPS, rho=rho) for c in range(o)]
    sim_loss = [sum(r[k][2] for r in rec_all) for k in STEPS]
    np.testing.assert_allclose(gd.loss(STEPS, f0).numpy(), sim_loss, rtol=1e-9)
    # k = inf is kernel ridge regression
    np.testing.assert_allclose(
        gd.test(float("inf"), Kt, f0, ft0).numpy(),
        predict.kernel_regression(H, y, Kt, ridge=rho, fx_train_0=f0, fx_test_0=ft0).numpy(),
        atol=1e-11,
    )


def test_gradient_flow_matches_expm_and_limit():
    rng = np.random.default_rng(6)
    n, m, p = 8, 5, 50
    J, Jt = rng.standard_normal((n, p)), rng.standard_normal((m, p))
    H, Kt = J @ J.T / p, Jt @ J.T / p
    y, f0, ft0 = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(m)
    flow = predict.gradient_descent_mse(H, y)
    ts = [0.0, 0.3, 2.0, 17.0, 250.0]
    tr, te = flow.train(ts, f0), flow.test(ts, Kt, f0, ft0)
    for i, t in enumerate(ts):
        E = scipy.linalg.expm(-H * t / n)
        np.testing.assert_allclose(tr[i].numpy(), f0 + (np.eye(n) - E) @ (y - f0), atol=1e-10)
        ref = ft0 + Kt @ np.linalg.solve(H, (np.eye(n) - E) @ (y - f0))
        np.testing.assert_allclose(te[i].numpy(), ref, atol=1e-9)
    # t → ∞ equals kernel_regression (both a huge finite t and t = inf)
    kr = predict.kernel_regression(H, y, Kt, fx_train_0=f0, fx_test_0=ft0).numpy()
    t_big = 60 * n / float(np.linalg.eigvalsh(H)[0])
    out = flow.test([t_big, float("inf")], Kt, f0, ft0).numpy()
    np.testing.assert_allclose(out[0], kr, atol=1e-10)
    np.testing.assert_allclose(out[1], kr, atol=1e-10)
    # discrete GD with a tiny step approaches the flow at t = η k
    eta = 1e-3
    gd = predict.gradient_descent_mse(H, y, learning_rate=eta)
    np.testing.assert_allclose(
        gd.test(2000, Kt, f0, ft0).numpy(), flow.test(2.0, Kt, f0, ft0).numpy(), atol=1e-3
    )
    # flow loss curve equals the loss of the flow trajectory
    lc = predict.loss_curve(H, y, ts, fx_train_0=f0)
    ref_loss = [0.5 * np.sum((tr[i].numpy() - y) ** 2) / n for i in range(len(ts))]
    np.testing.assert_allclose(lc.loss.numpy(), ref_loss, rtol=1e-8, atol=1e-20)
    # projections and eigenvalues are those of numpy's eigh (up to sign), descending
    w, V = np.linalg.eigh(H)
    np.testing.assert_allclose(lc.eigenvalues.numpy(), w[::-1], rtol=1e-10)
    np.testing.assert_allclose(np.abs(lc.projections.numpy()), np.abs(V.T @ (y - f0))[::-1], atol=1e-10)


def test_singular_kernel_dynamics_are_finite_and_reach_pinv_limit():
    rng = np.random.default_rng(7)
    n, p = 10, 3
    J, Jt = rng.standard_normal((n, p)), rng.standard_normal((4, p))
    H, Kt = J @ J.T, Jt @ J.T
    y = rng.standard_normal(n)
    flow = predict.gradient_descent_mse(H, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IllConditionedWarning)
        out = flow.test([1.0, float("inf")], Kt)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(
        out[1].numpy(), predict.kernel_regression(H, y, Kt, pinv=True).numpy(), atol=1e-9
    )
    # zero eigenvalues: the null-space part of y is never fitted
    res = y - flow.train(float("inf")).numpy()
    np.testing.assert_allclose(J.T @ res, 0, atol=1e-9)
    proj = J @ np.linalg.lstsq(J, y, rcond=None)[0]
    lc = predict.loss_curve(H, y, [float("inf")])
    np.testing.assert_allclose(lc.loss.numpy(), [np.sum((y - proj) ** 2) / (2 * n)], rtol=1e-9)
    full = predict.loss_curve(H + np.eye(n), y, float("inf"))
    assert float(full.loss) < 1e-25 and full.loss.ndim == 0


def test_max_learning_rate_is_the_stability_edge():
    rng = np.random.default_rng(8)
    n = 7
    A = rng.standard_normal((n, 20))
    H, y = A @ A.T, rng.standard_normal(n)
    lr_max = predict.max_learning_rate(H)
    assert lr_max == pytest.approx(2 * n / np.linalg.eigvalsh(H)[-1], rel=1e-12)
    stable = predict.gradient_descent_mse(H, y, learning_rate=0.99 * lr_max)
    assert float(stable.loss(5000)) < 1e-8
    with pytest.warns(RuntimeWarning, match="max_learning_rate"):
        unstable = predict.gradient_descent_mse(H, y, learning_rate=1.01 * lr_max)
    losses = unstable.loss([0, 200, 400]).numpy()
    assert losses[2] > losses[1] > losses[0]


def test_float32_dynamics():
    rng = np.random.default_rng(9)
    n, m, p = 8, 3, 40
    J, Jt = rng.standard_normal((n, p)) / np.sqrt(p), rng.standard_normal((m, p)) / np.sqrt(p)
    H, Kt, y = J @ J.T, Jt @ J.T, rng.standard_normal(n)
    lr = 0.5 * predict.max_learning_rate(H)
    out32 = predict.gradient_descent_mse(H.astype(np.float32), y, learning_rate=lr, dtype=torch.float32).test(
        [3, 30], Kt
    )
    assert out32.dtype == torch.float32
    rec = _simulate_gd(J[:, None], np.zeros(n), y, lr, [3, 30], Jt[:, None], np.zeros(m))
    np.testing.assert_allclose(out32[0].numpy(), rec[3][1], atol=1e-4)
    np.testing.assert_allclose(out32[1].numpy(), rec[30][1], atol=1e-4)
