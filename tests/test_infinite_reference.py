"""Analytic kernels against a naive per-pair recursion written separately here (NumPy loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit as nk


def relu_moments(q11, q22, q12):
    """Textbook arc-cosine formulas with arccos (Cho & Saul 2009), scalar inputs."""
    s = math.sqrt(q11 * q22)
    rho = max(-1.0, min(1.0, q12 / s))
    theta = math.acos(rho)
    e_phi = s * (math.sin(theta) + (math.pi - theta) * math.cos(theta)) / (2 * math.pi)
    e_dphi = (math.pi - theta) / (2 * math.pi)
    return e_phi, e_dphi


def erf_moments(q11, q22, q12):
    """Williams (1997)."""
    d = (1 + 2 * q11) * (1 + 2 * q22)
    return (2 / math.pi) * math.asin(2 * q12 / math.sqrt(d)), (4 / math.pi) / math.sqrt(d - 4 * q12**2)


def reference_mlp(x1, x2, depth, W_std, b_std, moments):
    """(nngp, ntk) of Dense-φ-...-Dense with ``depth`` Dense layers, one pair at a time."""
    b2 = 0.0 if b_std is None else b_std**2
    w2 = W_std**2
    n1, n2, d = len(x1), len(x2), x1.shape[1]
    nngp = np.zeros((n1, n2))
    ntk = np.zeros((n1, n2))
    for i in range(n1):
        for j in range(n2):
            k11, k22, k12 = x1[i] @ x1[i] / d, x2[j] @ x2[j] / d, x1[i] @ x2[j] / d
            t12 = None
            for layer in range(depth):
                if layer > 0:
                    e11, _ = moments(k11, k11, k11)
                    e22, _ = moments(k22, k22, k22)
                    e12, de12 = moments(k11, k22, k12)
                    k11, k22, k12, t12 = e11, e22, e12, t12 * de12
                k11, k22, k12 = w2 * k11 + b2, w2 * k22 + b2, w2 * k12 + b2
                t12 = k12 if t12 is None else k12 + w2 * t12
            nngp[i, j], ntk[i, j] = k12, t12
    return nngp, ntk


def reference_residual(x1, x2, W_std, b_std):
    """Dense-FanOut-(ReLU-Dense | Identity)-FanInSum-ReLU-Dense(1), one pair at a time."""
    w2, b2 = W_std**2, b_std**2
    d = x1.shape[1]
    nngp = np.zeros((len(x1), len(x2)))
    ntk = np.zeros_like(nngp)
    for i in range(len(x1)):
        for j in range(len(x2)):
            k11, k22, k12 = (w2 * v + b2 for v in (x1[i] @ x1[i] / d, x2[j] @ x2[j] / d,
                                                   x1[i] @ x2[j] / d))
            t12 = k12
            # residual branch: ReLU then Dense
            e11, e22 = relu_moments(k11, k11, k11)[0], relu_moments(k22, k22, k22)[0]
            e12, de = relu_moments(k11, k22, k12)
            r11, r22, r12 = w2 * e11 + b2, w2 * e22 + b2, w2 * e12 + b2
            rt = r12 + w2 * t12 * de
            # sum with the identity branch
            k11, k22, k12, t12 = k11 + r11, k22 + r22, k12 + r12, t12 + rt
            e11, e22 = relu_moments(k11, k11, k11)[0], relu_moments(k22, k22, k22)[0]
            e12, de = relu_moments(k11, k22, k12)
            k12 = w2 * e12 + b2
            nngp[i, j], ntk[i, j] = k12, k12 + w2 * t12 * de
    return nngp, ntk


@pytest.fixture
def data():
    g = np.random.default_rng(0)
    return g.normal(size=(7, 5)), g.normal(size=(4, 5))


def test_depth5_relu_mlp_with_biases_matches_reference(data):
    x1, x2 = data
    arch = nk.mlp(5, 64, "relu", W_std=1.4, b_std=0.3)
    k = arch.kernel(x1, x2)
    nngp, ntk = reference_mlp(x1, x2, 5, 1.4, 0.3, relu_moments)
    np.testing.assert_allclose(k.nngp.numpy(), nngp, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(k.ntk.numpy(), ntk, rtol=1e-12, atol=1e-13)


def test_erf_mlp_matches_reference(data):
    x1, x2 = data
    arch = nk.mlp(4, 64, "erf", W_std=1.7, b_std=0.2)
    k = arch.kernel(x1, x2)
    nngp, ntk = reference_mlp(x1, x2, 4, 1.7, 0.2, erf_moments)
    np.testing.assert_allclose(k.nngp.numpy(), nngp, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(k.ntk.numpy(), ntk, rtol=1e-12, atol=1e-13)


def test_residual_mlp_matches_reference(data):
    x1, x2 = data
    W, b = 1.2, 0.1
    arch = nk.serial(
        nk.Dense(32, W, b),
        nk.FanOut(2),
        nk.parallel(nk.serial(nk.ReLU(), nk.Dense(32, W, b)), nk.Identity()),
        nk.FanInSum(),
        nk.ReLU(),
        nk.Dense(1, W, b),
    )
    k = arch.kernel(x1, x2)
    nngp, ntk = reference_residual(x1, x2, W, b)
    np.testing.assert_allclose(k.nngp.numpy(), nngp, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(k.ntk.numpy(), ntk, rtol=1e-12, atol=1e-13)


def test_fan_in_concat_weights_branches_by_width(data):
    x1, _ = data
    a, b = nk.serial(nk.Dense(30), nk.ReLU()), nk.serial(nk.Dense(10), nk.Erf())
    concat = nk.serial(nk.FanOut(2), nk.parallel(a, b), nk.FanInConcat(), nk.Dense(1))
    ka, kb = nk.serial(a, nk.Dense(1)).kernel(x1), nk.serial(b, nk.Dense(1)).kernel(x1)
    k = concat.kernel(x1)
    torch.testing.assert_close(k.nngp, 0.75 * ka.nngp + 0.25 * kb.nngp, rtol=1e-12, atol=0)
    torch.testing.assert_close(k.ntk, 0.75 * ka.ntk + 0.25 * kb.ntk, rtol=1e-12, atol=0)
