"""The estimators on the floor: dual coefficients from ntkit.linalg, no identity matrix, no dense
test kernel after a matrix-free fit, and predictions equal to the former route (predicting at
"test points" whose kernel rows are the unit vectors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit
from ntkit.predict import gradient_descent_mse, kernel_regression
from ntkit.sklearn import NTKClassifier, NTKKernelFunction, NTKRegressor


def _data(n=60, m=15, d=5, o=None, seed=0):
    rng = np.random.default_rng(seed)
    X, Xt = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    y = rng.standard_normal((n,) if o is None else (n, o))
    return X, Xt, y


def _former_dual(H, Y, ridge, t):
    """The code path before the change: the solvers' predictor at k_test_train = I."""
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    if t is None:
        return kernel_regression(H, Y, eye, ridge=ridge)
    return gradient_descent_mse(H, Y, ridge=ridge).test(t, eye)


@pytest.mark.parametrize("t", [None, 7.5])
@pytest.mark.parametrize("o", [None, 3])
def test_predictions_equal_the_former_route(t, o):
    X, Xt, y = _data(o=o)
    reg = NTKRegressor(ridge_mode="absolute", depth=3, ridge=1e-2, t=t).fit(X, y)
    fn = NTKKernelFunction(depth=3)
    H = torch.from_numpy(fn(X))
    dual = _former_dual(H, torch.from_numpy(y), 1e-2, t).numpy()
    scale = np.abs(dual).max()
    np.testing.assert_allclose(reg.dual_coef_, dual, rtol=0, atol=1e-12 * scale)
    want = fn(Xt, X) @ dual
    np.testing.assert_allclose(reg.predict(Xt), want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_classifier_and_precomputed_equal_the_former_route():
    X, Xt, _ = _data(seed=1)
    labels = np.arange(X.shape[0]) % 3
    fn = NTKKernelFunction(depth=2)
    H = torch.from_numpy(fn(X))
    onehot = np.eye(3)[labels]
    for t in (None, 4.0):
        dual = _former_dual(H, torch.from_numpy(onehot), 1e-3, t).numpy()
        clf = NTKClassifier(ridge_mode="absolute", depth=2, ridge=1e-3, t=t).fit(X, labels)
        np.testing.assert_allclose(clf.dual_coef_, dual, rtol=0, atol=1e-12 * np.abs(dual).max())
        pre = NTKClassifier(ridge_mode="absolute", kernel="precomputed", ridge=1e-3, t=t)
        pre.fit(H.numpy(), labels)
        np.testing.assert_allclose(pre.dual_coef_, dual, rtol=0, atol=1e-12 * np.abs(dual).max())
        F = fn(Xt, X) @ dual
        np.testing.assert_allclose(pre.decision_function(fn(Xt, X)), F, rtol=0, atol=1e-12 * np.abs(F).max())


def test_dual_coefficients_reproduce_the_test_predictor():
    X, Xt, y = _data(o=2, seed=2)
    fn = NTKKernelFunction(depth=3)
    H, Kt = torch.from_numpy(fn(X)), torch.from_numpy(fn(Xt, X))
    f0 = torch.from_numpy(np.random.default_rng(3).standard_normal(y.shape))
    for lr in (None, 0.5):
        dyn = gradient_descent_mse(H, torch.from_numpy(y), learning_rate=lr, ridge=1e-3)
        times = [0, 3, 40, float("inf")]
        alpha = dyn.dual_coefficients(times, fx_train_0=f0)
        assert alpha.shape == (4, *y.shape)
        want = dyn.test(times, Kt, fx_train_0=f0)
        got = torch.einsum("mn,tno->tmo", Kt, alpha)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))
        assert float(alpha[0].abs().max()) == 0.0  # nothing learned at t = 0


@pytest.mark.parametrize("solver", ["cg", "nystrom"])
def test_matrix_free_fit_predicts_without_the_dense_test_kernel(solver, monkeypatch):
    X, Xt, y = _data(n=80, seed=4)
    reg = NTKRegressor(depth=3, ridge=1e-2, solver=solver).fit(X, y)
    dense = reg.kernel_function_(Xt, reg.X_fit_) @ reg.dual_coef_  # the former predict

    def refuse(self, *args, **kwargs):
        raise AssertionError("the dense m×n test kernel was formed after a matrix-free fit")

    monkeypatch.setattr(NTKKernelFunction, "__call__", refuse)
    got = reg.predict(Xt)
    np.testing.assert_allclose(got, dense, rtol=0, atol=1e-12 * np.abs(dense).max())


_MEMORY_SCRIPT = r"""
import json, sys
import numpy as np, torch
from ntkit.sklearn import NTKKernelFunction, NTKRegressor

def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1])

def reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (Linux >= 4.0)

n = int(sys.argv[1])
rng = np.random.default_rng(0)
X, y = rng.standard_normal((n, 8)), rng.standard_normal(n)
NTKRegressor(ridge=1e-2).fit(X[:50], y[:50])  # load every library first
eyes = []
real_eye = torch.eye
def eye(*args, **kwargs):
    if args and isinstance(args[0], int) and args[0] >= n:
        eyes.append(args[0])
    return real_eye(*args, **kwargs)
torch.eye = eye
reset(); base = hwm_kib()
H = NTKKernelFunction()(X)  # the kernel alone: its peak, with H kept
kernel_peak = hwm_kib() - base
del H
reset(); base = hwm_kib()
NTKRegressor(ridge=1e-2).fit(X, y)
fit_peak = hwm_kib() - base
print(json.dumps({"kernel_peak": kernel_peak * 1024, "fit_peak": fit_peak * 1024, "eyes": eyes}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_fit_at_n_4000_allocates_no_identity():
    n = 4000
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(ntkit.__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(n)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["eyes"] == []  # no n×n identity was asked for
    # the solve works in place inside the kernel's buffer: fitting costs no more than
    # computing the kernel (the former route added an identity, a symmetrized copy and a
    # factor: about 2.5 n² doubles more)
    assert out["fit_peak"] <= out["kernel_peak"] + 0.5 * n * n * 8, out
