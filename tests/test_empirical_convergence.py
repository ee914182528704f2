"""Width convergence: the empirical NTK of arch.build → arch.kernel as the widths grow.

The relative Frobenius error of a finite net's NTK against the infinite-width kernel falls
like ``1/√width`` (Jacot et al. 2018; Arora et al. 2019, Thm 3.1), so its fitted log-log
slope over widths is about −0.5. Both sides come from independent code: the empirical kernel
differentiates the real ``nn.Module`` built by ``arch.build``, the analytic one runs the
kernel recursion.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from conftest import loglog_slope, relative_error
from ntkit.empirical import empirical_ntk


def mean_errors(arch_at, x, widths, seeds, first_seed=0):
    errors = []
    for w in widths:
        arch = arch_at(w)
        exact = arch.kernel(x, get="ntk")
        errors.append(np.mean([
            relative_error(empirical_ntk(arch.build(x.shape[1:], seed=first_seed + s), x), exact)
            for s in range(seeds)
        ]))
    return errors


@pytest.mark.parametrize(("depth", "activation"), [(2, "relu"), (3, "erf")])
def test_width_convergence_quick(depth, activation):
    """Widths 64…1024, 8 seeds: already the acceptance slope range, and a small error."""
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    widths = [64, 256, 1024]
    errors = mean_errors(lambda w: nk.mlp(depth, w, activation, W_std=1.5, b_std=0.1), x, widths, 8)
    assert -0.75 <= loglog_slope(widths, errors) <= -0.35, errors
    assert errors[-1] < 0.12, errors


@pytest.mark.slow
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_width_convergence_slope(depth, activation):
    """The acceptance test: widths 64…4096, averaged over seeds."""
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    widths = [64, 256, 1024, 4096]
    errors = mean_errors(lambda w: nk.mlp(depth, w, activation, W_std=1.5, b_std=0.1), x, widths, 6)
    assert -0.75 <= loglog_slope(widths, errors) <= -0.35, errors
    assert errors[-1] < 0.06, errors
