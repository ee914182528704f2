"""ntkit.bounds against naive NumPy references, exact enumeration, and real data (digits)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import ntkit.bounds as bounds
from ntkit.errors import NonFiniteError, ParameterError, ShapeError, SingularMatrixError


def _gram(seed=0, n=10, p=40):
    rng = np.random.default_rng(seed)
    Phi = rng.standard_normal((p, n)) / np.sqrt(p)
    return Phi, Phi.T @ Phi, rng.standard_normal(n)


def test_quadratic_forms_against_numpy():
    Phi, H, y = _gram()
    n = len(y)
    q = y @ np.linalg.solve(H, y)
    assert bounds.yHy(H, y) == pytest.approx(q, rel=1e-10)
    assert bounds.complexity(H, y) == pytest.approx(math.sqrt(2 * q / n), rel=1e-10)
    assert bounds.lambda_min(H) == pytest.approx(np.linalg.eigvalsh(H)[0], rel=1e-10)
    # weight distance = norm of the min-norm interpolating weights (explicit feature map)
    w = np.linalg.lstsq(Phi.T, y, rcond=None)[0]
    assert bounds.weight_distance(H, y) == pytest.approx(np.linalg.norm(w), rel=1e-9)
    # multi-output: sum over columns
    Y = np.stack([y, 3 * y], 1)
    assert bounds.yHy(H, Y) == pytest.approx(10 * q, rel=1e-10)
    # float32
    assert bounds.yHy(H, y, dtype=torch.float32) == pytest.approx(q, rel=1e-3)


def test_generalization_bound_formula():
    _, H, y = _gram(1)
    n = len(y)
    comp = bounds.complexity(H, y)
    lam0 = np.linalg.eigvalsh(H)[0]
    b = bounds.generalization_bound(H, y, 0.05)
    assert b == pytest.approx(comp + math.sqrt(math.log(n / (lam0 * 0.05)) / n), rel=1e-10)
    b2 = bounds.generalization_bound(H, y, 0.05, c=2.0, c_prime=3.0)
    assert b2 == pytest.approx(comp + 2 * math.sqrt(math.log(3.0 / 0.05) / n), rel=1e-12)
    assert bounds.generalization_bound(H, y, 0.01) > b  # smaller δ, larger bound
    with pytest.raises(ParameterError, match="delta"):
        bounds.generalization_bound(H, y, 1.5)
    with pytest.raises(ParameterError, match="c_prime"):
        bounds.generalization_bound(H, y, 0.5, c_prime=0.1)


def test_rademacher_exact_enumeration_and_upper_bounds():
    Phi, H, _ = _gram(2, n=10)
    n, W = 10, 2.5
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))
    # definition: sup over the W-ball of (1/n) Σ σ_i ⟨v, φ(x_i)⟩ = W ‖Σ σ_i φ(x_i)‖ / n
    exact = W * np.mean(np.linalg.norm(signs @ Phi.T, axis=1)) / n
    est = bounds.rademacher(H, W, n_draws=20000, seed=3)
    sd = W * np.std(np.sqrt(np.einsum("si,ij,sj->s", signs, H, signs))) / n
    assert abs(est - exact) < 5 * sd / math.sqrt(20000)
    assert bounds.rademacher(H, W, 500, seed=7) == bounds.rademacher(H, W, 500, seed=7)
    ub_trace = bounds.rademacher_upper_bound(H, W, kind="trace")
    ub_max = bounds.rademacher_upper_bound(H, W)
    assert ub_max == pytest.approx(W * math.sqrt(np.diag(H).max()) / math.sqrt(n), rel=1e-12)
    assert est <= ub_trace <= ub_max
    assert exact <= ub_trace
    assert bounds.rademacher(H, 0.0, 10) == 0.0


def test_rademacher_below_bound_on_digits():
    x, _ = _digits_pair(0, 1)
    H = bounds.arora_h_infinity(x)
    W = 3.0
    est = bounds.rademacher(H, W, n_draws=400, seed=0)
    assert 0 < est <= bounds.rademacher_upper_bound(H, W, kind="trace")
    assert est <= bounds.rademacher_upper_bound(H, W)


def test_arora_h_infinity_against_monte_carlo():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    H = bounds.arora_h_infinity(x).numpy()
    w = rng.standard_normal((200_000, 3))
    act = (x @ w.T >= 0).astype(float)
    mc = (x @ x.T) * (act @ act.T) / w.shape[0]
    np.testing.assert_allclose(H, mc, atol=5e-3)
    np.testing.assert_allclose(np.diag(H), 0.5, atol=1e-15)
    with pytest.raises(ParameterError, match="normalize=True"):
        bounds.arora_h_infinity(2 * x)
    np.testing.assert_allclose(bounds.arora_h_infinity(2 * x, normalize=True).numpy(), H, atol=1e-14)


def _digits_pair(a, b):
    d = load_digits()
    mask = (d.target == a) | (d.target == b)
    x = d.data[mask].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.where(d.target[mask] == a, 1.0, -1.0)
    return x, y


def _two_layer_relu_ntk(x):
    """Lecture two-layer ReLU NTK for unit-norm inputs (N(0,1) normalization)."""
    xi = np.clip(x @ x.T, -1, 1)
    return (2 * xi * (np.pi - np.arccos(xi)) + np.sqrt(1 - xi**2)) / (2 * np.pi)


FRACTIONS = [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("pair", [(0, 1), (3, 5)])
def test_digits_complexity_grows_with_label_corruption(pair):
    x, y = _digits_pair(*pair)
    assert len(np.unique(x.round(12), axis=0)) == len(x)  # no duplicate images: H∞ ≻ 0
    for name, H in (("H_inf", bounds.arora_h_infinity(x)), ("ntk", _two_layer_relu_ntk(x))):
        comps = [
            np.mean([bounds.complexity(H, bounds.corrupt_labels(y, f, seed=s)) for s in range(3)])
            for f in FRACTIONS
        ]
        assert all(b > a for a, b in itertools.pairwise(comps)), (name, comps)
        factor = comps[-1] / comps[0]
        # measured: H∞ 10.2x (0 vs 1), 5.2x (3 vs 5); full NTK similar
        assert factor > 3.0, (name, factor)


def test_corrupt_labels_semantics():
    y = np.array([1, -1] * 50)
    out, mask = bounds.corrupt_labels(y, 0.3, seed=0, return_mask=True)
    assert mask.sum() == 30 and out.dtype == y.dtype
    np.testing.assert_array_equal(out[~mask], y[~mask])
    assert set(np.unique(out)) <= {-1, 1}
    np.testing.assert_array_equal(out, bounds.corrupt_labels(y, 0.3, seed=0))
    assert not np.array_equal(out, bounds.corrupt_labels(y, 0.3, seed=1))
    np.testing.assert_array_equal(bounds.corrupt_labels(y, 0.0, seed=5), y)
    # fraction 1: labels are uniform over the classes, independent of the originals
    z = np.arange(3000) % 4
    r = bounds.corrupt_labels(z, 1.0, seed=2)
    assert abs(np.mean(r == z) - 0.25) < 0.03
    assert np.all(np.abs(np.bincount(r) / 3000 - 0.25) < 0.03)
    t = bounds.corrupt_labels(torch.tensor([0, 1, 2, 1]), 0.5, seed=0)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    with pytest.raises(ParameterError, match="fraction"):
        bounds.corrupt_labels(y, 1.5)
    with pytest.raises(ShapeError, match="1-D"):
        bounds.corrupt_labels(np.eye(3), 0.5)
    with pytest.raises(NonFiniteError):
        bounds.corrupt_labels([1.0, np.nan], 0.5)
    with pytest.raises(ParameterError, match="two"):
        bounds.corrupt_labels([1, 1, 1], 0.5)


def test_bounds_bad_input():
    _, H, y = _gram(5)
    with pytest.raises(ShapeError):
        bounds.yHy(H, y[:-1])
    Hb = H.copy()
    Hb[0, 2] += 1.0
    with pytest.raises(ParameterError, match="not symmetric"):
        bounds.complexity(Hb, y)
    with pytest.raises(NonFiniteError):
        bounds.yHy(H, np.r_[np.nan, y[1:]])
    with pytest.raises(ParameterError):
        bounds.yHy(H, y, ridge=-1)
    with pytest.raises(ParameterError, match="W"):
        bounds.rademacher(H, -1.0)
    Hs = np.ones((4, 4))
    with pytest.raises(SingularMatrixError, match="pinv=True"):
        bounds.yHy(Hs, np.ones(4))
    assert bounds.yHy(Hs, np.ones(4), pinv=True) == pytest.approx(1.0)  # 1ᵀ(11ᵀ)⁺1 = 1
