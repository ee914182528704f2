"""gp_posterior against direct Gaussian computations done here in NumPy.

NNGP: conditioning through the joint precision matrix (Schur complement) — a different
algebraic route from the library's ``K(x,X)(K+σ²I)⁻¹`` formula.
NTK-GP: the trained outputs ``f_t(x) = f_0(x) + Θ(x,X) M_t (y − f_0(X))`` are an affine map
of the Gaussian vector ``(f_0(X), f_0(x)) ~ N(0, K_joint)``; their mean and covariance are
computed as ``A K_joint Aᵀ`` with ``M_t`` from ``scipy.linalg.expm`` / matrix powers.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import ntkit.predict as predict


def _kernels(seed: int = 0, n: int = 9, m: int = 4, d: int = 5):
    """A consistent NNGP / NTK pair on n + m points from random ReLU features."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + m, d))
    W1 = rng.standard_normal((d, 300))
    phi = np.maximum(x @ W1, 0) / np.sqrt(300)
    K = phi @ phi.T + 0.1  # NNGP (with a bias variance)
    W2 = rng.standard_normal((d, 200))
    psi = (x @ W2 > 0) * (x @ W2) / np.sqrt(200)
    Theta = K + psi @ psi.T + x @ x.T / d  # NTK ⪰ NNGP
    y = rng.standard_normal(n)
    return K, Theta, y, n


def _split(A, n):
    return A[:n, :n], A[n:, :n], A[n:, n:]


def test_nngp_posterior_matches_precision_conditioning():
    K, _, y, n = _kernels()
    sigma2 = 0.05
    C = K.copy()
    C[:n, :n] += sigma2 * np.eye(n)
    P = np.linalg.inv(C)
    P_tt, P_tX = P[n:, n:], P[n:, :n]
    cov_ref = np.linalg.inv(P_tt)
    mean_ref = -cov_ref @ P_tX @ y
    Kxx, Ktx, Ktt = _split(K, n)
    post = predict.gp_posterior(Kxx, y, Ktx, Ktt, diag_reg=sigma2)
    assert post.kind == "nngp"
    np.testing.assert_allclose(post.mean.numpy(), mean_ref, atol=1e-9)
    np.testing.assert_allclose(post.covariance.numpy(), cov_ref, atol=1e-9)
    np.testing.assert_allclose(post.variance.numpy(), np.diag(cov_ref), atol=1e-9)
    # diagonal-only input gives the same variances
    diag = predict.gp_posterior(Kxx, y, Ktx, np.diag(Ktt).copy(), diag_reg=sigma2, full_cov=False)
    assert diag.covariance is None
    np.testing.assert_allclose(diag.variance.numpy(), np.diag(cov_ref), atol=1e-9)
    # multi-output targets: columns independent, covariance shared
    Y = np.stack([y, -2 * y], 1)
    post2 = predict.gp_posterior(Kxx, Y, Ktx, Ktt, diag_reg=sigma2)
    np.testing.assert_allclose(post2.mean.numpy(), np.stack([mean_ref, -2 * mean_ref], 1), atol=1e-9)


def _ntk_gp_reference(K, Theta, y, n, M):
    """Mean and covariance of f0(x) + Θ(x,X) M (y − f0(X)) with (f0(X), f0(x)) ~ N(0, K)."""
    m = K.shape[0] - n
    B = Theta[n:, :n] @ M
    A = np.hstack([-B, np.eye(m)])
    return B @ y, A @ K @ A.T


def test_ntk_gp_converged_matches_linear_gaussian_transform():
    K, Theta, y, n = _kernels(seed=1)
    Kxx, Ktx, Ktt = _split(K, n)
    Txx, Ttx, _ = _split(Theta, n)
    post = predict.gp_posterior(Kxx, y, Ktx, Ktt, ntk_train_train=Txx, ntk_test_train=Ttx)
    assert post.kind == "ntk"
    mean_ref, cov_ref = _ntk_gp_reference(K, Theta, y, n, np.linalg.inv(Txx))
    np.testing.assert_allclose(post.mean.numpy(), mean_ref, atol=1e-8)
    np.testing.assert_allclose(post.covariance.numpy(), cov_ref, atol=1e-8)
    np.testing.assert_allclose(post.variance.numpy(), np.diag(cov_ref), atol=1e-8)
    # t = inf is the same as t = None; the mean is kernel regression with the NTK
    post_inf = predict.gp_posterior(Kxx, y, Ktx, Ktt, ntk_train_train=Txx, ntk_test_train=Ttx, t=float("inf"))
    np.testing.assert_allclose(post_inf.covariance.numpy(), cov_ref, atol=1e-8)
    np.testing.assert_allclose(post.mean.numpy(), predict.kernel_regression(Txx, y, Ttx).numpy(), atol=1e-9)


def test_ntk_gp_at_finite_times_and_discrete_steps():
    K, Theta, y, n = _kernels(seed=2)
    Kxx, Ktx, Ktt = _split(K, n)
    Txx, Ttx, _ = _split(Theta, n)
    ts = [0.0, 0.5, 4.0, 40.0]
    post = predict.gp_posterior(Kxx, y, Ktx, Ktt, ntk_train_train=Txx, ntk_test_train=Ttx, t=ts)
    assert tuple(post.mean.shape) == (len(ts), K.shape[0] - n)
    assert tuple(post.covariance.shape) == (len(ts), K.shape[0] - n, K.shape[0] - n)
    for i, t in enumerate(ts):
        M = np.linalg.solve(Txx, np.eye(n) - scipy.linalg.expm(-Txx * t / n))
        mean_ref, cov_ref = _ntk_gp_reference(K, Theta, y, n, M)
        np.testing.assert_allclose(post.mean[i].numpy(), mean_ref, atol=1e-9)
        np.testing.assert_allclose(post.covariance[i].numpy(), cov_ref, atol=1e-9)
    # t = 0: the prior
    np.testing.assert_allclose(post.covariance[0].numpy(), Ktt, atol=1e-12)
    # mean equals the gradient-flow prediction from f0 = 0
    flow = predict.gradient_descent_mse(Txx, y)
    np.testing.assert_allclose(post.mean.numpy(), flow.test(ts, Ttx).numpy(), atol=1e-12)
    # discrete GD steps
    eta, ks = 0.5 * predict.max_learning_rate(Txx), [1, 10]
    post_d = predict.gp_posterior(
        Kxx, y, Ktx, Ktt, ntk_train_train=Txx, ntk_test_train=Ttx, t=ks, learning_rate=eta
    )
    for i, k in enumerate(ks):
        step = np.linalg.matrix_power(np.eye(n) - eta * Txx / n, k)
        M = np.linalg.solve(Txx, np.eye(n) - step)
        mean_ref, cov_ref = _ntk_gp_reference(K, Theta, y, n, M)
        np.testing.assert_allclose(post_d.mean[i].numpy(), mean_ref, atol=1e-9)
        np.testing.assert_allclose(post_d.covariance[i].numpy(), cov_ref, atol=1e-9)


def test_ntk_gp_monte_carlo_ensemble():
    """The NTK-GP is the law of an ensemble of GD-trained linear models (MC, 4000 draws)."""
    K, Theta, y, n = _kernels(seed=3)
    Kxx, Ktx, Ktt = _split(K, n)
    Txx, Ttx, _ = _split(Theta, n)
    t = 3.0
    post = predict.gp_posterior(Kxx, y, Ktx, Ktt, ntk_train_train=Txx, ntk_test_train=Ttx, t=t)
    rng = np.random.default_rng(0)
    F0 = rng.multivariate_normal(np.zeros(K.shape[0]), K, size=4000)
    flow = predict.gradient_descent_mse(Txx, y)
    outs = torch.stack([flow.test(t, Ttx, f[:n], f[n:]) for f in F0[:4000:10]])  # 400 nets
    # the per-net predictor is linear in f0, so use the explicit linear map for all 4000
    M = np.linalg.solve(Txx, np.eye(n) - scipy.linalg.expm(-Txx * t / n))
    B = Ttx @ M
    samples = F0[:, n:] - F0[:, :n] @ B.T + B @ y
    np.testing.assert_allclose(outs.numpy(), samples[::10], atol=1e-9)
    se = np.sqrt(np.diag(post.covariance.numpy()) / len(samples))
    assert np.all(np.abs(samples.mean(0) - post.mean.numpy()) < 5 * se)
    np.testing.assert_allclose(np.cov(samples.T), post.covariance.numpy(), atol=0.1 * np.abs(Ktt).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gp_dtype(dtype):
    K, _, y, n = _kernels(seed=4)
    Kxx, Ktx, Ktt = _split(K, n)
    post = predict.gp_posterior(Kxx, y, Ktx, Ktt, diag_reg=0.1, dtype=dtype)
    ref = predict.gp_posterior(Kxx, y, Ktx, Ktt, diag_reg=0.1)
    assert post.mean.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(post.mean.double().numpy(), ref.mean.numpy(), atol=tol)
    np.testing.assert_allclose(post.covariance.double().numpy(), ref.covariance.numpy(), atol=tol)
