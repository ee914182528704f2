"""nk.fit_hyperparameters: the GP marginal likelihood, its autograd gradient, and its maximization."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

import ntkit as nk
from ntkit.errors import ParameterError, SingularMatrixError

F64 = torch.float64



def _data(n=12, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.1 * torch.randn(n, generator=g, dtype=F64)
    return x, y - y.mean()


def _fc(activation):
    return lambda W_std, b_std: nk.mlp(3, 1, activation, W_std=W_std, b_std=b_std)


def _cnn(W_std, b_std):
    return nk.serial(nk.Conv(1, 3, W_std=W_std, b_std=b_std), nk.ReLU(),
                     nk.Conv(1, 3, W_std=W_std, b_std=b_std), nk.Erf(),
                     nk.GlobalAvgPool(), nk.Dense(1, W_std=W_std, b_std=b_std))


CASES = {
    "relu": (_fc("relu"), lambda: _data()),
    "erf": (_fc("erf"), lambda: _data()),
    "tanh-quadrature": (_fc("tanh"), lambda: _data(n=8)),
    "cnn": (_cnn, lambda: (torch.randn(6, 2, 5, generator=torch.Generator().manual_seed(1), dtype=F64),
                           torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=F64))),
}


def test_value_is_the_gaussian_log_density():
    # Independent route: scipy's multivariate normal density with covariance K + noise·I.
    x, y = _data()
    params = {"W_std": 1.3, "b_std": 0.2, "noise": 0.05}
    for kernel in ("nngp", "ntk"):
        got = nk.log_marginal_likelihood(_fc("relu"), x, y, params, kernel=kernel)
        K = nk.mlp(3, 1, "relu", W_std=1.3, b_std=0.2).kernel(x, get=kernel).numpy()
        want = scipy.stats.multivariate_normal(np.zeros(len(y)), K + 0.05 * np.eye(len(y))).logpdf(y.numpy())
        assert float(got) == pytest.approx(want, rel=1e-12)
    # two outputs: the sum of the columns' log densities
    Y = torch.stack([y, -2 * y + 0.3], 1)
    two = nk.log_marginal_likelihood(_fc("relu"), x, Y, params)
    one = [nk.log_marginal_likelihood(_fc("relu"), x, Y[:, k], params) for k in range(2)]
    assert float(two) == pytest.approx(float(sum(one)), rel=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_matches_finite_differences(case):
    arch_fn, data = CASES[case]
    x, y = data()
    values = {"W_std": 1.3, "b_std": 0.3, "noise": 0.07}
    leaves = {k: torch.tensor(v, dtype=F64, requires_grad=True) for k, v in values.items()}
    lml = nk.log_marginal_likelihood(arch_fn, x, y, leaves)
    grads = torch.autograd.grad(lml, list(leaves.values()))
    for (name, v), g in zip(values.items(), grads):
        h = 1e-5 * v
        up = nk.log_marginal_likelihood(arch_fn, x, y, {**values, name: v + h})
        down = nk.log_marginal_likelihood(arch_fn, x, y, {**values, name: v - h})
        fd = float(up - down) / (2 * h)
        assert float(g) == pytest.approx(fd, rel=1e-6, abs=1e-9 * abs(float(lml.detach()))), (case, name)


@pytest.mark.parametrize("case", ["erf", "tanh-quadrature", "cnn"])
def test_fit_increases_the_marginal_likelihood(case):
    arch_fn, data = CASES[case]
    x, y = data()
    start = {"W_std": 0.5, "b_std": 1.0, "noise": 1.0}
    fit = nk.fit_hyperparameters(arch_fn, x, y, params=start, max_iter=4 if case == "tanh-quadrature" else 15)
    assert fit.log_marginal_likelihood > fit.initial_log_marginal_likelihood + 0.5
    assert fit.log_marginal_likelihood == pytest.approx(max(fit.history), abs=1e-9)
    again = nk.log_marginal_likelihood(arch_fn, x, y, fit.params)
    assert float(again) == pytest.approx(fit.log_marginal_likelihood, rel=1e-12)
    assert set(fit.params) == {"W_std", "b_std", "noise"} and isinstance(fit.arch, nk.Layer)


def test_fit_respects_bounds_and_reports_bad_input():
    x, y = _data()
    def relu(W_std):
        return nk.mlp(3, 1, "relu", W_std=W_std, b_std=0.1)

    fit = nk.fit_hyperparameters(relu, x, y, params={"W_std": 1.0, "noise": 0.5},
                                 bounds={"noise": (0.2, 2.0)}, max_iter=10)
    assert 0.2 - 1e-12 <= fit.params["noise"] <= 2.0 + 1e-12
    with pytest.raises(ParameterError, match="> 0"):
        nk.fit_hyperparameters(relu, x, y, params={"W_std": -1.0})
    with pytest.raises(ParameterError, match="bounds"):
        nk.fit_hyperparameters(relu, x, y, params={"W_std": 1.0}, bounds={"b_std": (0.1, 1)})
    with pytest.raises(SingularMatrixError, match="noise"):
        nk.log_marginal_likelihood(lambda W_std: nk.mlp(1, 1, "relu", W_std=W_std), x, y, {"W_std": 1.0})
