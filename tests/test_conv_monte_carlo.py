"""Analytic convolutional kernels against finite networks from ``arch.build`` (issue 5).

The empirical NTK of a finite net (``torch.func`` Jacobians, ``conv_reference``) deviates
from the infinite-width NTK by ``O(1/√m)`` for ``m`` channels (Jacot et al. 2018; Arora et
al. 2019 for the CNTK). Default tests use two widths and a few seeds; ``-m slow`` fits the
log-log slope over a sweep.
"""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from conftest import loglog_slope
from conv_reference import empirical_ntk, monte_carlo_nngp, one_thread
from ntkit.infinite.conv import Conv
from ntkit.infinite.pooling import AvgPool, Flatten, GlobalAvgPool


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def make(name: str, m: int, readout: int = 1, parameterization: str = "ntk"):
    p = parameterization
    if name == "cnn-flatten":
        return nk.serial(
            Conv(m, 3, b_std=0.1, parameterization=p), nk.ReLU(),
            Conv(m, (2, 3), stride=2, padding="same", W_std=1.3, parameterization=p), nk.ReLU(),
            Flatten(), nk.Dense(readout, parameterization=p),
        )
    if name == "cnn-gap":
        return nk.serial(
            Conv(m, 3, padding="circular", W_std=1.2, parameterization=p), nk.ReLU(),
            AvgPool(2, stride=1, padding="valid"),
            Conv(m, 2, padding="valid", b_std=0.2, parameterization=p), nk.ReLU(),
            GlobalAvgPool(), nk.Dense(readout, parameterization=p),
        )
    if name == "resnet":
        block = nk.serial(
            nk.FanOut(2),
            nk.parallel(nk.serial(nk.ReLU(), Conv(m, 3, W_std=1.4, parameterization=p)), nk.Identity()),
            nk.FanInSum(),
        )
        return nk.serial(
            Conv(m, 3, parameterization=p), block, block, nk.ReLU(),
            GlobalAvgPool(), nk.Dense(readout, parameterization=p),
        )
    raise ValueError(name)


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(11))


def ntk_errors(name, x, widths, seeds, parameterization="ntk"):
    """Root-mean-square relative error of the empirical NTK per width (over seeds)."""
    errors = []
    for m in widths:
        arch = make(name, m, parameterization=parameterization)
        exact = arch.kernel(x, get="ntk")
        errs = [
            float((empirical_ntk(arch.build(x.shape[1:], seed=s), x) - exact).norm() / exact.norm())
            for s in seeds
        ]
        errors.append(float(torch.tensor(errs).pow(2).mean().sqrt()))
    return errors


@pytest.mark.parametrize("name", ["cnn-flatten", "cnn-gap", "resnet"])
def test_empirical_ntk_approaches_the_analytic_kernel(name, images):
    small, large = ntk_errors(name, images, [8, 256], range(6))
    # 32x the width: 1/√m predicts a ratio of √32 ≈ 5.7 (seen: 4.1 to 9.2 over seed sets).
    assert 2.8 < small / large < 16, (small, large)
    assert large < 0.2, large


def test_standard_parameterization_matches_finite_networks(images):
    small, large = ntk_errors("cnn-flatten", images, [8, 256], range(6), parameterization="standard")
    assert 2.8 < small / large < 16 and large < 0.2, (small, large)


@pytest.mark.parametrize("name", ["cnn-flatten", "cnn-gap", "resnet"])
def test_nngp_is_the_output_covariance(name, images):
    """128 outputs x 100 seeds of networks 64 channels wide (seen: 1-3.3% error)."""
    arch = make(name, 64, readout=128)
    nngp = monte_carlo_nngp(arch, images, range(100))
    exact = arch.kernel(images, get="nngp")
    assert float((nngp - exact).norm() / exact.norm()) < 0.06


def test_one_dimensional_conv_net(images):
    x = images.reshape(4, 2, 16)
    arch = nk.serial(Conv(256, 5, stride=2, b_std=0.3), nk.ReLU(), AvgPool(2),
                     Conv(256, 3, padding="circular"), nk.ReLU(), GlobalAvgPool(), nk.Dense(1))
    exact = arch.kernel(x, get="ntk")
    errs = [float((empirical_ntk(arch.build((2, 16), seed=s), x) - exact).norm() / exact.norm())
            for s in range(2)]
    assert max(errs) < 0.12, errs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn-flatten", "cnn-gap", "resnet"])
def test_error_falls_as_one_over_sqrt_width(name, images):
    widths = [16, 32, 64, 128, 256, 512]
    errors = ntk_errors(name, images, widths, range(6))
    slope = loglog_slope(widths, errors)
    assert -0.8 < slope < -0.3, (slope, errors)
