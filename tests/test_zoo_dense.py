"""Dense(..., parameterization="standard", s=(s_in, s_out)): neural-tangents' width scalings."""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from conftest import naive_empirical_ntk, relative_error


def _arch(width, s_mid):
    return nk.serial(
        nk.Dense(width, 1.3, 0.2, parameterization="standard", s=(1, s_mid)), nk.ReLU(),
        nk.Dense(1, 1.1, 0.1, parameterization="standard", s=(s_mid, 1)),
    )


def test_kernel_uses_the_base_width_and_the_built_net_the_scaled_one():
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scaled, plain = _arch(64, 4).kernel(x), _arch(64, 1).kernel(x)
    torch.testing.assert_close(scaled.ntk, plain.ntk, rtol=1e-13, atol=0)
    torch.testing.assert_close(scaled.nngp, plain.nngp, rtol=1e-13, atol=0)
    net = _arch(64, 4).build((3,), seed=0)
    assert net[0].weight.shape == (256, 3) and net[2].weight.shape == (1, 256)
    # Monte Carlo over finite nets of width 4·64: their empirical NTK averages to the kernel.
    mean = torch.stack([naive_empirical_ntk(_arch(64, 4).build((3,), seed=s), x) for s in range(8)]).mean(0)
    assert relative_error(mean, scaled.ntk) < 0.06
    # Without s the same finite width (256) has 4x the fan-in factor in its NTK.
    assert _arch(256, 1).kernel(x).ntk.mean() > 3 * scaled.ntk.mean()


def test_bad_s_is_a_clear_error():
    with pytest.raises(nk.NtkitError, match="standard parameterization only"):
        nk.Dense(4, s=(1, 2))
    with pytest.raises(nk.NtkitError, match="pair of integers"):
        nk.Dense(4, parameterization="standard", s=(0, 1))
