"""Every closed-form activation by name in nk.sklearn's estimators and GP kernel (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest

import ntkit as nk
from ntkit.sklearn import NTK, NTKRegressor
from test_sklearn import _data, _fd_gradient

NAMES = ["gelu", "sin", "cos(1.2, 0.8)", "rbf(0.5)", "exp(1, 0.3)", "gaussian", "sign", "hermite(2)",
         "monomial(3)", "rectified_monomial(2)", "polynomial([0.1, 1, 0.3])", "erf(a=1.5, b=0.7, c=0.1)",
         "exp_normalized"]


@pytest.mark.parametrize("name", NAMES)
def test_gp_kernel_gradient_matches_finite_differences(name):
    X, _ = _data(n=10, d=4)
    if name != "sign":  # sign's kernel is not Lipschitz at rho = 1: finite differences are off
        X[3] = X[2]  # a duplicated row: rho = 1 off the diagonal too
    kernel = NTK(depth=2, activation=name, W_std=1.1, b_std=0.3)
    K, G = kernel(X, eval_gradient=True)
    assert np.all(np.isfinite(G))
    np.testing.assert_allclose(K, kernel(X), rtol=1e-12)
    np.testing.assert_allclose(G, _fd_gradient(kernel, X), rtol=1e-5, atol=1e-7 * np.abs(G).max())


@pytest.mark.parametrize("name", ["gelu", "hermite(3)", "rbf"])
def test_estimators_accept_closed_form_names(name):
    X, y = _data(n=20, d=3)
    est = NTKRegressor(depth=2, activation=name).fit(X, y)
    assert est.predict(X[:3]).shape == (3,)


def test_names_build_the_layers_they_say():
    from ntkit.infinite.names import activation_from_name

    layer = activation_from_name("Hermite(4)")
    assert isinstance(layer, nk.Hermite) and layer.degree == 4
    assert isinstance(activation_from_name("erf"), nk.Erf)
    with pytest.raises(nk.NtkitError, match="unknown activation"):
        activation_from_name("swish")
    with pytest.raises(nk.NtkitError, match="bad arguments"):
        activation_from_name("hermite()")
    with pytest.raises(nk.NtkitError, match="numbers or lists"):
        activation_from_name("sin(a=__import__('os'))")
