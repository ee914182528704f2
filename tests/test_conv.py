"""Convolutional infinite-width kernels (issue 5): exactness against independent routes.

- a naive position-by-position CNTK recursion (``conv_reference.reference_kernel``);
- the fully-connected kernel on 1×1 images;
- translation invariance with circular padding;
- bad input gives clear ntkit errors.
Monte-Carlo checks over finite networks are in ``test_conv_monte_carlo.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from conftest import RTOL
from conv_reference import ntkit_arch, one_thread, reference_kernel
from ntkit.errors import NtkitError, ParameterError, ShapeError
from ntkit.infinite.conv import Conv
from ntkit.infinite.pooling import AvgPool, Flatten, GlobalAvgPool

# (image shape, layer spec) — strides, even windows, every padding, 1-D and 2-D, biases.
CASES = {
    "2d-same-valid-flatten": (
        (2, 5, 4),
        [("conv", (3, 3), (1, 1), "same", 1.3, 0.2), ("relu",),
         ("conv", (2, 3), (2, 1), "valid", 1.0, None), ("relu",), ("flatten",), ("dense", 1.1, 0.1)],
    ),
    "2d-circular-stride-gap": (
        (2, 5, 4),
        [("conv", (3, 3), (1, 1), "circular", 1.3, 0.2), ("relu",),
         ("conv", (2, 2), (2, 2), "same", 1.0, None), ("relu",), ("gap",), ("dense", 1.1, 0.1)],
    ),
    "2d-avgpool-same": (
        (1, 5, 5),
        [("conv", (3, 3), (1, 1), "same", 1.3, None), ("relu",), ("avgpool", (2, 2), (2, 2), "same"),
         ("conv", (2, 2), (1, 1), "circular", 1.0, 0.3), ("relu",), ("gap",), ("dense", 1.0, None)],
    ),
    "1d-even-window-flatten": (
        (3, 7),
        [("conv", (4,), (2,), "same", 1.3, 0.5), ("relu",), ("avgpool", (3,), (1,), "valid"),
         ("relu",), ("flatten",), ("dense", 1.0, None)],
    ),
    "1d-window-larger-than-image": (
        (3, 7),
        [("conv", (4,), (3,), "circular", 1.3, 0.5), ("relu",), ("avgpool", (2,), (2,), "circular"),
         ("conv", (9,), (1,), "same", 1.0, None), ("gap",), ("dense", 1.0, None)],
    ),
}


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_naive_position_loop(name):
    shape, spec = CASES[name]
    x = torch.randn(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref_nngp, ref_ntk = reference_kernel(spec, x.numpy())
    k = ntkit_arch(spec).kernel(x)
    np.testing.assert_allclose(k.nngp.numpy(), ref_nngp, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k.ntk.numpy(), ref_ntk, rtol=1e-12, atol=1e-14)
    # var1 is the kernel of each example with itself.
    np.testing.assert_allclose(k.var1.numpy(), np.diag(ref_nngp), rtol=1e-12)
    # x2 given: an off-diagonal block, with the column variances. (No example in both: an
    # example paired with a copy of itself is exact only to √ε, as for dense layers.)
    k12 = ntkit_arch(spec).kernel(x[:2], x[2:])
    np.testing.assert_allclose(k12.ntk.numpy(), ref_ntk[:2, 2:], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k12.var2.numpy(), np.diag(ref_nngp)[2:], rtol=1e-12)


def test_spatial_output_without_readout_matches_reference():
    """A net that ends spatial returns (n1, n2, *S, *S) (pooling) or (n1, n2, *S)."""
    spec = [("conv", (3, 3), (1, 1), "same", 1.2, 0.1), ("relu",), ("avgpool", (2, 2), (1, 1), "valid")]
    x = torch.randn(3, 2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref_nngp, ref_ntk = reference_kernel(spec, x.numpy())
    k = ntkit_arch(spec).kernel(x)
    assert k.ntk.shape == (3, 3, 3, 2, 3, 2)
    np.testing.assert_allclose(k.ntk.reshape(3, 3, 6, 6).numpy(), ref_ntk, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k.nngp.reshape(3, 3, 6, 6).numpy(), ref_nngp, rtol=1e-12, atol=1e-14)
    # Conv only: the spatial-diagonal layout (no pooling anywhere).
    conv_only = spec[:2]
    ref_nngp, _ = reference_kernel(conv_only, x.numpy())
    k = ntkit_arch(conv_only).kernel(x)
    assert k.nngp.shape == (3, 3, 4, 3)
    np.testing.assert_allclose(
        k.nngp.reshape(3, 3, 12).numpy(), np.diagonal(ref_nngp, axis1=2, axis2=3), rtol=1e-12
    )


@pytest.mark.parametrize("readout", ["flatten", "gap"])
@pytest.mark.parametrize("window,padding,act", [(1, "same", nk.Erf), (3, "circular", nk.Erf),
                                                (1, "valid", lambda: nk.Tanh(degree=6))])
def test_one_by_one_images_equal_fully_connected(readout, window, padding, act):
    """On 1×1 images a conv with a 1×1 window (or a wrapping one) is a dense layer."""
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    head = Flatten() if readout == "flatten" else GlobalAvgPool()
    conv = nk.serial(
        Conv(32, window, padding=padding, W_std=1.5, b_std=0.3), nk.ReLU(),
        Conv(32, window, padding=padding, W_std=1.2, b_std=0.1), act(),
        head, nk.Dense(1, W_std=1.1, b_std=0.2),
    )
    fc = nk.serial(
        nk.Dense(32, W_std=1.5, b_std=0.3), nk.ReLU(),
        nk.Dense(32, W_std=1.2, b_std=0.1), act(), nk.Dense(1, W_std=1.1, b_std=0.2),
    )
    kc = conv.kernel(x[:, :, None, None])
    kf = fc.kernel(x)
    torch.testing.assert_close(kc.ntk, kf.ntk, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(kc.nngp, kf.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(kc.var1, kf.var1, rtol=1e-12, atol=1e-14)


def test_zero_padded_window_on_one_by_one_image_sees_only_its_centre():
    """The other route: a 3×3 'same' window on a 1×1 image averages 8 zeros in."""
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    conv = nk.serial(Conv(8, 3, padding="same"), Flatten())
    fc = nk.serial(nk.Dense(8, W_std=1 / 3))
    torch.testing.assert_close(conv.kernel(x[:, :, None, None]).ntk, fc.kernel(x).ntk, rtol=1e-12, atol=0)


@pytest.mark.parametrize("readout", [Flatten, GlobalAvgPool])
def test_circular_padding_is_invariant_to_a_common_translation(readout):
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(3, 2, 5, 6, dtype=torch.float64, generator=g)
    x2 = torch.randn(4, 2, 5, 6, dtype=torch.float64, generator=g)

    def arch(padding):
        return nk.serial(
            Conv(16, 3, padding=padding, b_std=0.1), nk.ReLU(),
            Conv(16, (2, 3), padding=padding), nk.ReLU(), readout(), nk.Dense(1),
        )

    k = arch("circular").kernel(x1, x2)
    shifted = arch("circular").kernel(torch.roll(x1, (2, -1), (2, 3)), torch.roll(x2, (2, -1), (2, 3)))
    torch.testing.assert_close(shifted.ntk, k.ntk, rtol=1e-12, atol=0)
    torch.testing.assert_close(shifted.nngp, k.nngp, rtol=1e-12, atol=0)
    # Zero padding breaks the invariance: the test above can fail.
    k0 = arch("same").kernel(x1, x2)
    s0 = arch("same").kernel(torch.roll(x1, (2, -1), (2, 3)), torch.roll(x2, (2, -1), (2, 3)))
    assert (s0.ntk - k0.ntk).abs().max() > 1e-3 * k0.ntk.abs().max()


def test_circular_kernel_matches_circular_finite_module_geometry():
    """NTKConv with circular padding equals an explicit wrap-around convolution."""
    arch = Conv(3, (3, 2), padding="circular", b_std=0.5)
    module = arch.build((2, 4, 5), seed=0)
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    wrapped = torch.cat([x[:, :, -1:], x, x[:, :, :1]], dim=2)  # rows: left 1, right 1
    wrapped = torch.cat([wrapped, wrapped[:, :, :, :1]], dim=3)  # cols: left 0, right 1
    expected = torch.nn.functional.conv2d(wrapped, module.weight) / (2 * 6) ** 0.5
    expected = expected + 0.5 * module.bias[:, None, None]
    torch.testing.assert_close(module(x), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_numpy_input_and_tolerance(dtype):
    shape, spec = CASES["2d-circular-stride-gap"]
    x = np.random.default_rng(0).standard_normal((4, *shape))
    k = ntkit_arch(spec).kernel(x, dtype=dtype)
    assert k.ntk.dtype == dtype and k.nngp.dtype == dtype
    _, ref_ntk = reference_kernel(spec, x)
    np.testing.assert_allclose(k.ntk.double().numpy(), ref_ntk, rtol=RTOL[dtype] * 10, atol=RTOL[dtype])


def test_standard_parameterization_has_the_same_nngp_and_a_fan_in_scaled_ntk():
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def arch(p):
        return nk.serial(Conv(7, 3, b_std=0.2, parameterization=p), nk.ReLU(),
                         Conv(5, 2, padding="valid", parameterization=p), Flatten())

    standard, ntk = arch("standard").kernel(x), arch("ntk").kernel(x)
    torch.testing.assert_close(standard.nngp, ntk.nngp, rtol=1e-12, atol=0)
    # One layer: the weight gradient gives C_in·Σ_o nngp_in = fan_in·(nngp − b²), the bias 1.
    one = nk.serial(Conv(7, 3, b_std=0.2, parameterization="standard"), Flatten()).kernel(x)
    torch.testing.assert_close(one.ntk, 2 * 9 * (one.nngp - 0.04) + 1.0, rtol=1e-12, atol=0)


def test_w_std_as_tensor_is_differentiable():
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)

    def f(w_std):
        arch = nk.serial(Conv(4, 3, W_std=w_std, b_std=0.1), nk.ReLU(), Conv(4, 3, W_std=w_std),
                         nk.ReLU(), GlobalAvgPool(), nk.Dense(1))
        return arch.kernel(x, get="ntk").sum()

    (grad,) = torch.autograd.grad(f(w), w)
    eps = 1e-6
    plus, minus = (torch.tensor(1.3 + d, dtype=torch.float64) for d in (eps, -eps))
    numeric = (f(plus) - f(minus)) / (2 * eps)
    assert abs(float(grad) - float(numeric)) < 1e-6 * abs(float(numeric))


# --------------------------------------------------------------------------- errors
def test_wrong_image_rank_is_a_clear_error():
    conv2d = nk.serial(Conv(4, (3, 3)), Flatten(), nk.Dense(1))
    with pytest.raises(ShapeError, match=r"2-D window.*1 spatial axes"):
        conv2d.kernel(torch.randn(2, 3, 8))
    with pytest.raises(ShapeError, match="flat inputs"):
        conv2d.kernel(torch.randn(2, 8))
    with pytest.raises(ShapeError, match="flat inputs"):
        nk.serial(Conv(4, 3), Flatten()).kernel(torch.randn(2, 8))
    with pytest.raises(ShapeError, match="2-D window"):
        conv2d.build((3, 8))
    module = nk.serial(Conv(4, 3), Flatten()).build((3, 5, 5), seed=0)
    with pytest.raises(ShapeError, match=r"\(n, 3, <2 spatial axes>\)"):
        module(torch.randn(2, 3, 5, dtype=torch.float64))
    # Dense on images acts on the channels at every position (a 1x1 convolution, issue 16).
    assert nk.serial(Conv(4, 3), nk.Dense(1)).kernel(torch.randn(2, 1, 4, 4), get="ntk").shape == (2, 2, 4, 4)


def test_valid_window_larger_than_the_image_is_a_clear_error():
    arch = nk.serial(Conv(4, (3, 5), padding="valid"), Flatten())
    with pytest.raises(ShapeError, match=r"window \(3, 5\) is larger than the image \(4, 4\)"):
        arch.kernel(torch.randn(2, 1, 4, 4))
    with pytest.raises(ShapeError, match="larger than the image"):
        arch.build((1, 4, 4))
    with pytest.raises(ShapeError, match="larger than the image"):
        nk.serial(AvgPool(5), Flatten()).kernel(torch.randn(2, 1, 4, 4))
    # 'same' and 'circular' accept any window.
    wide = nk.serial(Conv(4, 5, padding="same"), Flatten())
    assert wide.kernel(torch.randn(2, 1, 4, 4), get="ntk").shape == (2, 2)


def test_channel_mismatch_is_a_clear_error():
    # A residual sum of a 3-channel input with a 8-channel conv branch.
    block = nk.serial(nk.FanOut(2), nk.parallel(Conv(8, 3), nk.Identity()), nk.FanInSum(), Flatten())
    with pytest.raises(ShapeError, match="FanInSum branches differ"):
        block.kernel(torch.randn(2, 3, 4, 4))
    with pytest.raises(ShapeError, match="FanInSum branches differ"):
        block.build((3, 4, 4))
    # A built network fed images with other channels.
    module = nk.serial(Conv(4, 3), Flatten()).build((3, 5, 5), seed=0)
    with pytest.raises(ShapeError, match="expects inputs of shape"):
        module(torch.randn(2, 2, 5, 5, dtype=torch.float64))
    # x1 and x2 with different channels.
    with pytest.raises(ShapeError, match="same example shape"):
        nk.serial(Conv(4, 3), Flatten()).kernel(torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"channels": 0, "kernel_size": 3}, "channels"),
        ({"channels": 4, "kernel_size": 0}, "kernel_size"),
        ({"channels": 4, "kernel_size": (3, 3), "stride": (1, 0)}, "stride"),
        ({"channels": 4, "kernel_size": 3, "padding": "SAME"}, "padding"),
        ({"channels": 4, "kernel_size": 3, "W_std": -1.0}, "W_std"),
        ({"channels": 4, "kernel_size": 3, "parameterization": "mup"}, "parameterization"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        Conv(**kwargs)


def test_errors_are_ntkit_errors():
    assert issubclass(ShapeError, NtkitError) and issubclass(ShapeError, ValueError)
