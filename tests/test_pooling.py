"""AvgPool, GlobalAvgPool and Flatten (issue 5): kernels, finite modules, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from conv_reference import ntkit_arch, one_thread, reference_kernel
from ntkit.errors import NtkitError, ParameterError, ShapeError
from ntkit.infinite.conv import Conv
from ntkit.infinite.engine import input_state
from ntkit.infinite.pooling import AvgPool, Flatten, GlobalAvgPool


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def _x(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "pool",
    [
        ("avgpool", (2, 2), (2, 2), "valid"),
        ("avgpool", (3, 2), (1, 2), "same"),
        ("avgpool", (2, 3), (2, 1), "circular"),
        ("avgpool", (5, 5), (1, 1), "same"),  # window larger than the image
    ],
)
def test_avgpool_matches_naive_position_loop(pool):
    spec = [("conv", (3, 3), (1, 1), "same", 1.4, 0.1), ("relu",), pool,
            ("conv", (2, 2), (1, 1), "same", 1.0, None), ("relu",), ("flatten",), ("dense", 1.0, 0.1)]
    x = _x(4, 2, 4, 5)
    ref_nngp, ref_ntk = reference_kernel(spec, x.numpy())
    k = ntkit_arch(spec).kernel(x)
    np.testing.assert_allclose(k.ntk.numpy(), ref_ntk, rtol=1e-12)
    np.testing.assert_allclose(k.nngp.numpy(), ref_nngp, rtol=1e-12)


def test_activation_after_the_pooled_readout_uses_exact_pooled_variances():
    """GAP-Dense-ReLU-Dense: the ReLU needs each example's pooled variance (self pairs)."""
    spec = [("conv", (3, 3), (1, 1), "same", 1.4, 0.1), ("relu",), ("gap",), ("dense", 1.2, 0.1),
            ("relu",), ("dense", 1.0, None)]
    x = _x(5, 1, 4, 4, seed=1)
    ref_nngp, ref_ntk = reference_kernel(spec, x.numpy())
    arch = ntkit_arch(spec)
    k = arch.kernel(x)
    np.testing.assert_allclose(k.ntk.numpy(), ref_ntk, rtol=1e-12)
    # Rows and columns from different sets: the chunks carry both sides' self pairs.
    k12 = arch.kernel(x[:2], x[2:])
    np.testing.assert_allclose(k12.ntk.numpy(), ref_ntk[:2, 2:], rtol=1e-12)
    np.testing.assert_allclose(k12.nngp.numpy(), ref_nngp[:2, 2:], rtol=1e-12)
    np.testing.assert_allclose(k12.var1.numpy(), np.diag(ref_nngp)[:2], rtol=1e-12)
    np.testing.assert_allclose(k12.var2.numpy(), np.diag(ref_nngp)[2:], rtol=1e-12)
    # var1 is the diagonal of the symmetric kernel bit for bit.
    assert torch.equal(k.var1, k.nngp.diagonal())


def test_global_avg_pool_equals_a_whole_image_avgpool_then_flatten():
    x = _x(4, 2, 4, 5, seed=2)
    body = [Conv(8, 3, b_std=0.2), nk.ReLU(), Conv(8, 2, stride=2), nk.Erf()]
    gap = nk.serial(*body, GlobalAvgPool(), nk.Dense(1)).kernel(x)
    pooled = nk.serial(*body, AvgPool((2, 3), padding="valid"), Flatten(), nk.Dense(1)).kernel(x)
    torch.testing.assert_close(gap.ntk, pooled.ntk, rtol=1e-12, atol=0)
    torch.testing.assert_close(gap.var1, pooled.var1, rtol=1e-12, atol=0)


@pytest.mark.parametrize("readout", [GlobalAvgPool, Flatten])
def test_diagonal_mode_equals_the_diagonal(readout):
    arch = nk.serial(Conv(8, 3), nk.ReLU(), AvgPool(2, 1), nk.ReLU(), readout(), nk.Dense(1))
    x1, x2 = _x(5, 1, 4, 4, seed=3), _x(5, 1, 4, 4, seed=4)
    full = arch.kernel(x1, x2)
    diag = arch.kernel(x1, x2, diagonal=True)
    torch.testing.assert_close(diag.ntk, full.ntk.diagonal(), rtol=1e-12, atol=0)
    torch.testing.assert_close(diag.var2, full.var2, rtol=1e-12, atol=0)
    same = arch.kernel(x1, diagonal=True)
    torch.testing.assert_close(same.nngp, arch.kernel(x1).nngp.diagonal(), rtol=1e-12, atol=0)


def test_flatten_passes_flat_inputs_and_reshapes_the_module():
    x = _x(3, 5)
    torch.testing.assert_close(
        nk.serial(Flatten(), nk.Dense(2)).kernel(x).ntk, nk.Dense(2).kernel(x).ntk, rtol=0, atol=0
    )
    module = nk.serial(Conv(4, 3), Flatten(), nk.Dense(2)).build((2, 3, 3), seed=0)
    assert module(_x(6, 2, 3, 3)).shape == (6, 2)


def test_finite_pooling_modules():
    x = _x(2, 3, 6, 5)
    avg = AvgPool(2).build((3, 6, 5))
    torch.testing.assert_close(avg(x), torch.nn.functional.avg_pool2d(x, 2))
    same = AvgPool(3, 1, padding="same").build((3, 6, 5))
    torch.testing.assert_close(
        same(x), torch.nn.functional.avg_pool2d(x, 3, 1, padding=1, count_include_pad=True)
    )
    gap = GlobalAvgPool().build((3, 6, 5))
    torch.testing.assert_close(gap(x), x.mean((2, 3)))
    assert AvgPool(2, padding="circular").build((3, 5)).forward(x[:, :, 0]).shape == (2, 3, 3)


def test_needs_full_spatial_is_answered_per_layer_and_propagated():
    assert AvgPool(2).needs_full_spatial() and GlobalAvgPool().needs_full_spatial()
    assert not Conv(4, 3).needs_full_spatial() and not Flatten().needs_full_spatial()
    assert nk.serial(Conv(4, 3), nk.ReLU(), GlobalAvgPool()).needs_full_spatial()
    assert not nk.serial(Conv(4, 3), nk.ReLU(), Flatten(), nk.Dense(1)).needs_full_spatial()
    branch = nk.parallel(nk.serial(Conv(4, 3), AvgPool(1)), nk.Identity())
    assert nk.serial(nk.FanOut(2), branch, nk.FanInSum()).needs_full_spatial()


def test_pooling_errors():
    with pytest.raises(ShapeError, match="flat inputs"):
        nk.serial(GlobalAvgPool(), nk.Dense(1)).kernel(_x(3, 4))
    with pytest.raises(ShapeError, match="flat inputs"):
        nk.serial(AvgPool(2), Flatten()).kernel(_x(3, 4))
    with pytest.raises(ShapeError, match="GlobalAvgPool expects images"):
        GlobalAvgPool().build((4,))
    with pytest.raises(ParameterError, match="padding"):
        AvgPool(2, padding="full")
    with pytest.raises(ParameterError, match="kernel_size"):
        AvgPool((2, -1))
    # The pairwise full layout has no self-covariances to pool the variances with.
    state = input_state(_x(2, 1, 3, 3), _x(2, 1, 3, 3), want_ntk=True, diagonal=False, full_spatial=True)
    with pytest.raises(NtkitError, match=r"arch\.kernel"):
        GlobalAvgPool().apply_kernel(state)
    flat_layout = input_state(_x(2, 1, 3, 3), None, want_ntk=True, diagonal=False, full_spatial=False)
    with pytest.raises(NtkitError, match="full spatial covariance"):
        AvgPool(2).apply_kernel(flat_layout)
