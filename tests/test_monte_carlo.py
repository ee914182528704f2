"""nk.monte_carlo_kernel: averages of real finite nets against the analytic kernels.

For a depth-2 net ``Dense-φ-Dense`` the first-layer pre-activations are exactly Gaussian, so
the expected empirical NNGP and NTK equal the infinite-width kernels at any width: the
Monte-Carlo error is pure sampling noise and falls like ``1/√n_samples``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk
from conftest import loglog_slope, relative_error
from ntkit.empirical import empirical_ntk
from ntkit.monte_carlo import monte_carlo_kernel

F64 = torch.float64



def sample_errors(arch, x, counts, repeats, field):
    exact = getattr(arch.kernel(x), field)
    return [np.mean([relative_error(getattr(monte_carlo_kernel(arch, x, n_samples=n,
                                                               seed=10_000 * (r + 1)), field), exact)
                     for r in range(repeats)]) for n in counts]


def test_error_falls_like_inverse_sqrt_samples_quick():
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    arch = nk.mlp(2, 16, "erf", W_std=1.5, b_std=0.2)
    counts = [4, 16, 64]
    for field in ("nngp", "ntk"):
        errors = sample_errors(arch, x, counts, 4, field)
        assert -0.75 <= loglog_slope(counts, errors) <= -0.3, (field, errors)


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_error_falls_like_inverse_sqrt_samples(activation):
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    arch = nk.mlp(2, 16, activation, W_std=1.5, b_std=0.2)
    counts = [4, 16, 64, 256]
    for field in ("nngp", "ntk"):
        errors = sample_errors(arch, x, counts, 8, field)
        assert -0.65 <= loglog_slope(counts, errors) <= -0.35, (field, errors)


def test_is_the_average_of_the_built_networks():
    """Independent route: build the same seeds by hand, average f fᵀ/o and the traced NTK / o."""
    arch = nk.mlp(3, 8, "relu", W_std=1.4, b_std=0.3, out=3)
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(4, 5, generator=g, dtype=F64), torch.randn(2, 5, generator=g, dtype=F64)
    k = monte_carlo_kernel(arch, x1, x2, n_samples=3, seed=7)
    nngp = ntk = 0
    for s in range(3):
        net = arch.build((5,), seed=7 + s)
        f1, f2 = net(x1).detach(), net(x2).detach()
        nngp = nngp + f1 @ f2.T / 3
        ntk = ntk + empirical_ntk(net, x1, x2, method="jacobian") / 3
    torch.testing.assert_close(k.nngp, nngp / 3, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(k.ntk, ntk / 3, rtol=1e-12, atol=1e-14)
    assert k.nngp.shape == k.ntk.shape == (4, 2) and k.nngp.dtype == F64
    symmetric = monte_carlo_kernel(arch, x1, n_samples=3, seed=7)
    torch.testing.assert_close(symmetric.var1, symmetric.nngp.diagonal(), rtol=1e-12, atol=0)
    assert symmetric.var2 is symmetric.var1
    only = monte_carlo_kernel(arch, x1, n_samples=2, get="nngp")
    assert only.ntk is None and only.nngp is not None


class _SpatialArch:
    """A stand-in architecture whose nets keep a spatial axis: outputs ``(n, C=3, S=4)``."""

    def build(self, in_shape, seed=None, dtype=F64):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(in_shape[0], 12), nn.Tanh(), nn.Linear(12, 12),
                             nn.Unflatten(1, (3, 4))).to(dtype)


def test_spatial_outputs_average_over_channels_only():
    x = torch.randn(3, 5, dtype=F64)
    k = monte_carlo_kernel(_SpatialArch(), x, n_samples=2, seed=0)
    assert k.nngp.shape == k.ntk.shape == (3, 3, 4) and k.var1.shape == (3, 4)
    nngp = ntk = 0
    for s in range(2):
        net = _SpatialArch().build((5,), seed=s)
        f = net(x).detach()  # (n, 3, 4)
        nngp = nngp + torch.einsum("icp,jcp->ijp", f, f) / 3
        per_output = empirical_ntk(net, x, output="diagonal", method="jacobian")  # (n, n, 12)
        ntk = ntk + per_output.reshape(3, 3, 3, 4).mean(2)
    torch.testing.assert_close(k.nngp, nngp / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(k.ntk, ntk / 2, rtol=1e-12, atol=1e-15)


def test_bad_arguments():
    arch = nk.mlp(2, 8)
    x = torch.randn(3, 4, dtype=F64)
    with pytest.raises(nk.errors.ParameterError, match="architecture"):
        monte_carlo_kernel(nn.Linear(4, 1), x)
    with pytest.raises(nk.errors.ParameterError, match="n_samples"):
        monte_carlo_kernel(arch, x, n_samples=0)
    with pytest.raises(nk.errors.ParameterError, match="get"):
        monte_carlo_kernel(arch, x, get="both")
    with pytest.raises(nk.errors.ShapeError, match="same example shape"):
        monte_carlo_kernel(arch, x, torch.randn(2, 5, dtype=F64))
    with pytest.raises(nk.errors.ShapeError, match="rank"):
        monte_carlo_kernel(arch, torch.randn(4, dtype=F64))
