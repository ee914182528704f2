"""Hostile inputs (issue 12): overflow, complex, float16, random forwards, misleading messages.

Every public result that overflows must raise an ntkit error naming the cause instead of
returning NaN/Inf; complex inputs are refused (never truncated to their real part).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit as nk
from ntkit.errors import DeviceError, ModelError, NonFiniteError, ParameterError

F64 = torch.float64


def _x(n=4, d=10, scale=1.0, seed=0):
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed)) * scale


# ------------------------------------------------------------------ 1. overflow -> error
def test_huge_w_std_kernel_raises_naming_the_fix():
    with pytest.raises(NonFiniteError, match=r"W_std / b_std.*float64|float64.*W_std / b_std"):
        nk.mlp(30, 1, "relu", W_std=1e6).kernel(torch.randn(4, 10), get="ntk")


def test_erf_ntk_infinite_diagonal_raises():
    with pytest.raises(NonFiniteError, match="W_std / b_std"):
        nk.mlp(1000, 1, "erf", W_std=3.0, b_std=0.5).kernel(_x())


def test_huge_inputs_raise_in_engine_and_theory():
    x = _x(scale=1e160)
    with pytest.raises(NonFiniteError, match="rescale"):
        nk.mlp(3, 1, "relu").kernel(x)
    with pytest.raises(NonFiniteError, match="rescale"):
        nk.theory.two_layer_ntk(x)
    with pytest.raises(NonFiniteError, match="rescale"):  # sibling: the diagonal route
        nk.mlp(3, 1, "relu").kernel(x, diagonal=True)


def test_conv_and_monte_carlo_overflow_raise():
    img = torch.randn(2, 1, 4, 4, dtype=F64) * 1e160
    arch = nk.serial(nk.Conv(2, (3, 3), padding="same"), nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(1))
    with pytest.raises(NonFiniteError, match="rescale"):
        arch.kernel(img)
    with pytest.raises(NonFiniteError, match="overflowed"):
        nk.monte_carlo_kernel(nk.mlp(2, 8, "relu", W_std=1e150), _x(2, 3), n_samples=1, get="nngp")


def test_w_std_squared_overflow_is_a_parameter_error():
    for make in (lambda: nk.mlp(3, 1, "relu", W_std=1e200), lambda: nk.Dense(3, W_std=1e200),
                 lambda: nk.Dense(3, b_std=1e155), lambda: nk.Conv(3, (3,), W_std=1e300)):
        with pytest.raises(ParameterError, match="overflows"):
            make()
    from ntkit.sklearn import NTKRegressor

    with pytest.raises(ParameterError, match="overflows"):
        NTKRegressor(W_std=1e200).fit(np.eye(3), np.ones(3))


@pytest.mark.parametrize("fn", [torch.log, torch.sqrt, lambda z: 1 / z])
def test_activation_not_finite_on_the_gaussian_support_is_refused(fn):
    with pytest.raises(ParameterError, match="not finite"):
        nk.Activation(fn)
    with pytest.raises(ParameterError, match="not finite"):  # sibling entry point
        nk.theory.two_layer_ntk(_x(), activation=fn, method="quadrature")


def test_activation_with_infinite_derivative_is_refused():
    with pytest.raises(ParameterError, match="derivative"):
        nk.Activation(lambda z: z.abs().sqrt())


def test_float16_is_refused_clearly():
    with pytest.raises(ParameterError, match=r"float16.*float32"):
        nk.mlp(3, 1, "relu").kernel(torch.randn(4, 10), dtype=torch.float16)
    with pytest.raises(ParameterError, match="float16"):
        nk.empirical_ntk(nn.Linear(3, 1).half(), torch.randn(2, 3).half())
    with pytest.raises(ParameterError, match="bfloat16"):
        nk.kernel_regression(torch.eye(3), torch.ones(3), dtype=torch.bfloat16)


def test_empirical_ntk_of_nan_weight_names_the_parameter():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        model[2].weight[0, 1] = float("nan")
    for method in ("auto", "jacobian", "ntk_vp", "structured"):
        with pytest.raises(NonFiniteError, match=r"parameter '2\.weight'"):
            nk.empirical_ntk(model, torch.randn(3, 3, dtype=F64), method=method)
    with pytest.raises(NonFiniteError, match=r"'2\.weight'"):  # sibling: the linearization
        nk.linearize(model)


def test_empirical_ntk_overflowing_outputs_raise():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))  # float32
    with pytest.raises(NonFiniteError, match=r"empirical NTK.*overflowed"):
        nk.empirical_ntk(model, torch.full((2, 3), 1e30))


# ------------------------------------------------------------------ 2. complex -> error
def test_complex_inputs_are_refused_everywhere():
    rng = np.random.default_rng(0)
    xc = rng.standard_normal((5, 4)) + 1j * rng.standard_normal((5, 4))
    with pytest.raises(ParameterError, match="complex"):
        nk.mlp(2, 1, "relu").kernel(xc)
    with pytest.raises(ParameterError, match="complex"):
        nk.mlp(2, 1, "relu").kernel(np.real(xc), torch.from_numpy(xc))
    with pytest.raises(ParameterError, match="complex"):
        nk.kernel_regression(xc @ xc.conj().T + np.eye(5), np.ones(5))
    with pytest.raises(ParameterError, match="complex"):
        nk.kernel_regression(np.eye(5), np.ones(5) + 1j)
    with pytest.raises(ParameterError, match="complex"):
        nk.empirical_ntk(nn.Linear(4, 1).double(), torch.from_numpy(xc))
    with pytest.raises(ParameterError, match="complex"):
        nk.theory.two_layer_ntk(xc)
    with pytest.raises(ParameterError, match="complex"):
        nk.linearize(nn.Linear(4, 1).double())(torch.from_numpy(xc))
    with pytest.raises(ValueError, match=r"(?i)complex"):  # scikit-learn's own check
        nk.sklearn.NTKRegressor().fit(xc, np.ones(5))
    with pytest.raises(ParameterError, match="complex"):
        nk.gp_posterior(np.eye(5) + 0j, np.ones(5), np.ones((2, 5)))


# ------------------------------------------------------------------ 7. random forwards
class _DropoutInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.out = nn.Linear(4, 3), nn.Linear(3, 1)

    def forward(self, x):
        return self.out(F.dropout(torch.relu(self.inner(x)), 0.1, training=True))


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian", "ntk_vp"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_forward_is_refused_by_every_method(method, seed):
    torch.manual_seed(seed)
    model = _DropoutInForward().double()
    with pytest.raises(ModelError, match="draws random numbers"):
        nk.empirical_ntk(model, torch.randn(5, 4, dtype=F64), method=method)


def test_batchnorm_messages_suggest_what_works():
    x = torch.randn(4, 3, dtype=F64)
    no_stats = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False),
                             nn.Linear(4, 1)).double().eval()
    with pytest.raises(ModelError, match=r"track_running_stats=True.*eval"):
        nk.empirical_ntk(no_stats, x)
    train = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    with pytest.raises(ModelError, match=r"eval\(\)") as info:
        nk.empirical_ntk(train, x)
    assert "track_running_stats=False" not in str(info.value)


# ------------------------------------------------------------------ 9. messages
def test_misleading_messages_become_ntkit_errors():
    arch = nk.mlp(2, 1, "relu")
    x = torch.randn(3, 4, dtype=F64)
    with pytest.raises(ParameterError, match="get must be"):
        arch.kernel(x, get=None)
    with pytest.raises(ParameterError, match=r"memory_budget.*bytes"):
        arch.kernel(x, memory_budget="lots")  # "1GiB" is a valid spelling (issue 14)
    with pytest.raises(DeviceError, match="meta"):
        arch.kernel(torch.randn(3, 4, device="meta"))
    with pytest.raises(DeviceError, match="meta"):
        nk.kernel_regression(torch.eye(3, device="meta"), torch.ones(3))
    with pytest.raises(ParameterError, match="seed"):
        arch.build((4,), seed="a")
    with pytest.raises(ParameterError, match="degree"):
        nk.Activation(torch.tanh, degree=20000)


def test_linearize_wrong_inputs_name_the_fix():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    lin = nk.linearize(net)
    with pytest.raises(ModelError, match="original model accepts"):
        lin(torch.randn(3, 5, dtype=F64))
    with pytest.raises(ParameterError, match=r"x\.double\(\)"):
        lin(torch.randn(3, 4))
    out = lin(np.random.default_rng(0).standard_normal((3, 4)))  # NumPy inputs are converted
    assert out.shape == (3, 1) and out.dtype == F64
