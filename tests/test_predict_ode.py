"""gradient_descent (function-space ODE) against fine-step Euler on the linearized net.

Reference: the linearized model ``f(w, x) = f0(x) + J(x)(w − w0)`` trained in *weight* space
by explicit Euler steps ``w ← w − h η ∇_w L`` with step ``h`` and ``h/2``, combined by
Richardson extrapolation (``2 E(h/2) − E(h)``, error ``O(h²)``). The kernel is ``K = J Jᵀ``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ntkit.predict as predict


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _euler(grad_f, J, Jt, f0, ft0, eta, T, h):
    """Weight-space Euler for the linearized net; J (n, o, P), returns f(T), f_test(T)."""
    n, o, P = J.shape
    Jf, Jtf = J.reshape(n * o, P), Jt.reshape(-1, P)
    v = np.zeros(P)
    for _ in range(round(T / h)):
        f = f0 + (Jf @ v).reshape(f0.shape)
        v = v - h * eta * Jf.T @ grad_f(f).reshape(-1)
    return f0 + (Jf @ v).reshape(f0.shape), ft0 + (Jtf @ v).reshape(ft0.shape)


def _richardson(*args, h):
    a, at = _euler(*args, h=h)
    b, bt = _euler(*args, h=h / 2)
    return 2 * b - a, 2 * bt - at


def test_binary_cross_entropy_matches_euler():
    rng = np.random.default_rng(0)
    n, m, P = 10, 4, 40
    J = rng.standard_normal((n, 1, P)) / np.sqrt(P) * 2
    Jt = rng.standard_normal((m, 1, P)) / np.sqrt(P) * 2
    s = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    f0, ft0 = 0.3 * rng.standard_normal(n), 0.3 * rng.standard_normal(m)
    eta, T = 2.0, 1.5

    def grad(f):  # logistic loss, mean over examples
        return -s / (1 + np.exp(s * f)) / n

    ref, ref_t = _richardson(grad, J, Jt, f0, ft0, eta, T, h=2e-3)
    K, Kt = J[:, 0] @ J[:, 0].T, Jt[:, 0] @ J[:, 0].T
    ode = predict.gradient_descent("cross_entropy", K, s, learning_rate=eta)
    out = ode.predict([T, 0.0], Kt, f0, ft0)
    np.testing.assert_allclose(out.train[0].numpy(), ref, atol=2e-7)
    np.testing.assert_allclose(out.test[0].numpy(), ref_t, atol=2e-7)
    np.testing.assert_allclose(out.train[1].numpy(), f0, atol=0)
    # {0, 1} labels are the same problem as {−1, +1}
    ode01 = predict.gradient_descent("cross_entropy", K, (s + 1) / 2, learning_rate=eta)
    np.testing.assert_allclose(ode01.test(T, Kt, f0, ft0).numpy(), ref_t, atol=2e-7)


def test_multiclass_cross_entropy_4d_kernel_matches_euler_and_callable():
    rng = np.random.default_rng(1)
    n, m, C, P = 8, 3, 3, 60
    J = rng.standard_normal((n, C, P)) / np.sqrt(P) * 2
    Jt = rng.standard_normal((m, C, P)) / np.sqrt(P) * 2
    labels = rng.integers(0, C, n)
    Y = np.eye(C)[labels]
    f0, ft0 = 0.2 * rng.standard_normal((n, C)), 0.2 * rng.standard_normal((m, C))
    eta, T = 1.5, 2.0

    def grad(f):
        return (_softmax(f) - Y) / n

    ref, ref_t = _richardson(grad, J, Jt, f0, ft0, eta, T, h=2e-3)
    K4 = np.einsum("iap,jbp->ijab", J, J)
    Kt4 = np.einsum("iap,jbp->ijab", Jt, J)
    ode = predict.gradient_descent("cross_entropy", K4, Y, learning_rate=eta)
    out = ode.predict(T, Kt4, f0, ft0)
    assert tuple(out.train.shape) == (n, C) and tuple(out.test.shape) == (m, C)
    np.testing.assert_allclose(out.train.numpy(), ref, atol=2e-7)
    np.testing.assert_allclose(out.test.numpy(), ref_t, atol=2e-7)
    # a callable loss through autograd, with integer labels and logits f0 of shape (n, C)
    ode_c = predict.gradient_descent(lambda f, y: F.cross_entropy(f, y.long()), K4, labels, learning_rate=eta)
    np.testing.assert_allclose(ode_c.test(T, Kt4, f0, ft0).numpy(), ref_t, atol=2e-7)


def test_mse_ode_equals_closed_form_flow():
    rng = np.random.default_rng(2)
    n, m, P = 9, 4, 50
    J, Jt = rng.standard_normal((n, P)) / np.sqrt(P), rng.standard_normal((m, P)) / np.sqrt(P)
    K, Kt = J @ J.T, Jt @ J.T
    y = rng.standard_normal((n, 2))
    f0, ft0 = rng.standard_normal((n, 2)), rng.standard_normal((m, 2))
    eta, ts = 3.0, [5.0, 0.5, 20.0]  # unsorted times on purpose
    ode = predict.gradient_descent("mse", K, y, learning_rate=eta)
    flow = predict.gradient_descent_mse(K, y)
    expect = flow.test([eta * t for t in ts], Kt, f0, ft0).numpy()
    np.testing.assert_allclose(ode.test(ts, Kt, f0, ft0).numpy(), expect, atol=1e-8)
    np.testing.assert_allclose(
        ode.train(ts, f0).numpy(), flow.train([eta * t for t in ts], f0).numpy(), atol=1e-8
    )
    # a callable MSE (autograd path) agrees with the built-in one
    ode_c = predict.gradient_descent(
        lambda f, y: 0.5 * ((f - y) ** 2).sum() / f.shape[0], K, y, learning_rate=eta
    )
    np.testing.assert_allclose(ode_c.test(ts, Kt, f0, ft0).numpy(), expect, atol=1e-8)
    out32 = predict.gradient_descent("mse", K, y, learning_rate=eta, dtype=torch.float32)
    assert out32.train(1.0).dtype == torch.float32


def test_bad_loss_inputs():
    K = np.eye(3)
    with pytest.raises(ValueError, match="one-hot"):
        predict.gradient_descent("cross_entropy", K, [0, 1, 2])
    with pytest.raises(ValueError, match="loss must be"):
        predict.gradient_descent("hinge", K, [1, -1, 1])
    ode = predict.gradient_descent(lambda f, y: (f - y) ** 2, K, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="scalar"):
        ode.train(1.0)
    with pytest.raises(ValueError, match="finite"):
        predict.gradient_descent("mse", K, [1.0, 0.0, 1.0]).train(float("inf"))
