"""Issue 17's spatial layers against a naive position loop, and their structural properties.

SumPool, AvgPool(normalize_edges=True), GlobalSumPool, ConvTranspose, ConvLocal,
ImageResize and FanInConcat along a spatial axis: the NNGP/NTK equal the NumPy recursion of
``zoo_reference.zoo_kernel`` (explicit index arithmetic, no ntkit code) to 1e-12; identities
(SumPool = AvgPool·|K|², ConvLocal on 1×1 images = Dense); symmetry, PSD, diagonal mode,
``kernel(x) == kernel(x, x)``, tiled == untiled, float32 ≈ float64; errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from conv_reference import one_thread
from zoo_reference import zoo_arch, zoo_kernel

CASES = {
    "sumpool-valid": ((2, 4, 5), [("conv", (3, 3), (1, 1), "same", 1.3, 0.2), ("relu",),
                                  ("sumpool", (2, 2), (2, 1), "valid"), ("relu",), ("flatten",),
                                  ("dense", 1.0, 0.1)]),
    "sumpool-same-gsp": ((1, 5, 4), [("conv", (2, 3), (1, 1), "same", 1.2, None), ("relu",),
                                     ("sumpool", (3, 2), (1, 2), "same"), ("relu",), ("gsp",),
                                     ("dense", 1.0, None)]),
    "avgpool-edges-same": ((2, 5, 5), [("conv", (3, 3), (1, 1), "same", 1.3, 0.2), ("relu",),
                                       ("avgpool_edges", (3, 3), (2, 1), "same"), ("relu",),
                                       ("gap",), ("dense", 1.0, 0.1)]),
    "avgpool-edges-1d-big-window": ((2, 6), [("conv", (3,), (1,), "same", 1.3, 0.2), ("relu",),
                                             ("avgpool_edges", (4,), (1,), "same"), ("flatten",),
                                             ("dense", 1.0, None)]),
    "convT-same-stride2": ((2, 3, 2), [("convT", (3, 3), (2, 2), "same", 1.3, 0.2), ("relu",),
                                       ("conv", (2, 2), (1, 1), "same", 1.0, None), ("relu",),
                                       ("flatten",), ("dense", 1.0, 0.1)]),
    "convT-valid-gap": ((2, 3, 2), [("convT", (2, 3), (2, 1), "valid", 1.1, None), ("relu",),
                                    ("convT", (3, 2), (1, 3), "valid", 1.0, 0.4), ("relu",),
                                    ("gap",), ("dense", 1.0, None)]),
    "convT-1d-kernel-smaller-than-stride": ((2, 4), [("convT", (2,), (3,), "same", 1.2, 0.1), ("relu",),
                                                     ("gap",), ("dense", 1.0, None)]),
    "convlocal-pool": ((2, 4, 4), [("convlocal", (3, 3), (1, 1), "same", 1.3, 0.2), ("relu",),
                                   ("convlocal", (2, 2), (2, 1), "valid", 1.0, None), ("relu",),
                                   ("gap",), ("dense", 1.0, 0.1)]),
    "convlocal-flatten-circular": ((2, 4, 3), [("convlocal", (3, 2), (1, 1), "circular", 1.3, 0.2),
                                               ("relu",), ("flatten",), ("dense", 1.0, None)]),
    "resize-linear-up-down": ((2, 3, 5), [("conv", (3, 3), (1, 1), "same", 1.3, 0.2),
                                          ("resize", (7, 3), "linear"), ("relu",), ("gap",),
                                          ("dense", 1.0, 0.1)]),
    "resize-nearest": ((2, 4, 3), [("conv", (3, 3), (1, 1), "same", 1.3, 0.2),
                                   ("resize", (3, 5), "nearest"), ("relu",), ("sumpool", (2, 2), (1, 1),
                                                                             "valid"), ("gap",),
                                   ("dense", 1.0, None)]),
    "resize-nearest-flatten": ((1, 5, 2), [("conv", (3, 3), (1, 1), "same", 1.3, 0.2),
                                           ("resize", (2, -1), "nearest"), ("relu",), ("flatten",),
                                           ("dense", 1.0, None)]),
}


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def _x(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_naive_position_loop(name):
    shape, spec = CASES[name]
    x = _x(4, *shape, seed=len(name))
    ref_nngp, ref_ntk = zoo_kernel(spec, x.numpy())
    arch = zoo_arch(spec)
    k = arch.kernel(x)
    np.testing.assert_allclose(k.nngp.numpy(), ref_nngp, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k.ntk.numpy(), ref_ntk, rtol=1e-12, atol=1e-14)
    k12 = arch.kernel(x[:2], x[2:])  # disjoint: a point with itself is exact only in kernel(x)
    np.testing.assert_allclose(k12.ntk.numpy(), ref_ntk[:2, 2:], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(CASES))
def test_structural_properties(name):
    """Symmetric, PSD, kernel(x) == kernel(x, x), diagonal, tiled == untiled, float32."""
    shape, spec = CASES[name]
    arch = zoo_arch(spec)
    x, y = _x(5, *shape, seed=1), _x(3, *shape, seed=2)
    k = arch.kernel(x)
    for field in ("nngp", "ntk"):
        mat = k.get(field)
        torch.testing.assert_close(mat, mat.T, rtol=0, atol=0)
        eig = torch.linalg.eigvalsh(mat)
        assert eig.min() >= -1e-10 * eig.max()
        torch.testing.assert_close(arch.kernel(x, x.clone()).get(field), mat, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(arch.kernel(x, diagonal=True).get(field), mat.diagonal(),
                                   rtol=1e-12, atol=1e-14)
    cross = arch.kernel(x, y)
    torch.testing.assert_close(arch.kernel(x[:3], y, diagonal=True).ntk, cross.ntk.diagonal(),
                               rtol=1e-12, atol=1e-14)
    per_pair = 12 * 8 * 2 * (int(np.prod(shape[1:])) ** 2)
    tiled = arch.kernel(x, y, memory_budget=3 * per_pair + 1)
    torch.testing.assert_close(tiled.ntk, cross.ntk, rtol=1e-12, atol=1e-14)
    tiled_sym = arch.kernel(x, memory_budget=3 * per_pair + 1)
    torch.testing.assert_close(tiled_sym.ntk, k.ntk, rtol=1e-12, atol=1e-14)
    k32 = arch.kernel(x.float(), y.float(), dtype=torch.float32)
    assert k32.ntk.dtype == torch.float32
    scale = cross.ntk.abs().max()
    assert (k32.ntk.double() - cross.ntk).abs().max() < 1e-4 * scale


def test_sumpool_is_avgpool_times_window_size_squared():
    x = _x(4, 2, 6, 5, seed=3)
    body = [nk.Conv(8, 3, b_std=0.2), nk.Erf()]
    for window, stride, padding in (((2, 3), (1, 2), "valid"), (3, 2, "same"), ((2, 2), None, "circular")):
        sp = nk.serial(*body, nk.SumPool(window, stride, padding)).kernel(x, get="nngp")
        ap = nk.serial(*body, nk.AvgPool(window, stride, padding)).kernel(x, get="nngp")
        size = np.prod(window if isinstance(window, tuple) else (window, window))
        torch.testing.assert_close(sp, ap * float(size) ** 2, rtol=1e-12, atol=0)


def test_normalize_edges_changes_only_same_padding_borders():
    x = _x(3, 2, 5, 5, seed=4)
    body = [nk.Conv(8, 3, b_std=0.2), nk.ReLU()]
    for padding in ("valid", "circular"):
        a = nk.serial(*body, nk.AvgPool(3, 1, padding), nk.Flatten(), nk.Dense(1)).kernel(x)
        edges = nk.AvgPool(3, 1, padding, normalize_edges=True)
        b = nk.serial(*body, edges, nk.Flatten(), nk.Dense(1)).kernel(x)
        torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-13, atol=0)
    a = nk.serial(*body, nk.AvgPool(3, 1, "same"), nk.Flatten(), nk.Dense(1)).kernel(x)
    b = nk.serial(*body, nk.AvgPool(3, 1, "same", normalize_edges=True), nk.Flatten(), nk.Dense(1)).kernel(x)
    assert (b.ntk - a.ntk).abs().max() > 1e-3 * a.ntk.abs().max()


def test_global_sum_pool_is_global_avg_pool_times_positions_squared():
    x = _x(4, 2, 3, 5, seed=5)
    body = [nk.Conv(8, 3, b_std=0.2), nk.ReLU()]
    s = nk.serial(*body, nk.GlobalSumPool()).kernel(x)
    a = nk.serial(*body, nk.GlobalAvgPool()).kernel(x)
    torch.testing.assert_close(s.nngp, a.nngp * 15.0**2, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.ntk, a.ntk * 15.0**2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("b_std", [None, 0.3])
def test_conv_local_on_1x1_images_equals_dense(b_std):
    x = _x(6, 5, seed=6)
    images = x.reshape(6, 5, 1, 1)
    local = nk.serial(nk.ConvLocal(16, 1, W_std=1.4, b_std=b_std), nk.ReLU(),
                      nk.ConvLocal(16, 1, W_std=1.2, b_std=b_std), nk.ReLU(), nk.Flatten(),
                      nk.Dense(1, 1.1, b_std)).kernel(images)
    dense = nk.serial(nk.Dense(16, 1.4, b_std), nk.ReLU(), nk.Dense(16, 1.2, b_std), nk.ReLU(),
                      nk.Dense(1, 1.1, b_std)).kernel(x)
    torch.testing.assert_close(local.nngp, dense.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(local.ntk, dense.ntk, rtol=1e-12, atol=1e-14)


def test_conv_local_keeps_only_the_spatial_diagonal_of_conv():
    x = _x(3, 2, 4, 4, seed=7)
    conv = nk.serial(nk.Conv(8, 3, b_std=0.1), nk.ReLU(), nk.Conv(8, 3, b_std=0.1), nk.ReLU(), nk.Flatten(),
                     nk.Dense(1)).kernel(x)
    local = nk.serial(nk.Conv(8, 3, b_std=0.1), nk.ReLU(), nk.ConvLocal(8, 3, b_std=0.1), nk.ReLU(),
                      nk.Flatten(), nk.Dense(1)).kernel(x)
    torch.testing.assert_close(local.ntk, conv.ntk, rtol=1e-12, atol=1e-14)  # Flatten: diagonal only
    gap_c = nk.serial(nk.Conv(8, 3), nk.ReLU(), nk.Conv(8, 3), nk.GlobalAvgPool()).kernel(x)
    gap_l = nk.serial(nk.Conv(8, 3), nk.ReLU(), nk.ConvLocal(8, 3), nk.GlobalAvgPool()).kernel(x)
    assert (gap_c.nngp - gap_l.nngp).abs().max() > 1e-3 * gap_c.nngp.abs().max()


def test_concat_along_a_spatial_axis_matches_block_covariance():
    """FanInConcat(axis=2): each branch keeps its covariance, cross-branch blocks are 0."""
    x = _x(4, 2, 3, 4, seed=8)
    trunk = [nk.Conv(8, 3, b_std=0.2), nk.ReLU()]
    b1 = [nk.Conv(8, 2, W_std=1.3)]
    b2 = [nk.Conv(8, 3, W_std=0.7, b_std=0.5)]
    cat = nk.serial(*trunk, nk.FanOut(2), nk.parallel(nk.serial(*b1), nk.serial(*b2)),
                    nk.FanInConcat(axis=2), nk.ReLU(), nk.GlobalSumPool())
    k = cat.kernel(x)
    # Independent route: GlobalSumPool(ReLU(concat)) = Σ over each branch's positions, the
    # cross-branch ReLU covariances being those of independent Gaussians: E[relu]E[relu].
    parts = [nk.serial(*trunk, *b, nk.ReLU(), nk.GlobalSumPool()).kernel(x) for b in (b1, b2)]
    means = [nk.serial(*trunk, *b).kernel(x, diagonal=True).var1 for b in (b1, b2)]
    mean_relu = [(v.clamp(min=0) / (2 * np.pi)).sqrt().sum(dim=(1, 2)) for v in means]  # Σ_p E[relu]
    cross = mean_relu[0][:, None] * mean_relu[1][None, :]
    expected = parts[0].nngp + parts[1].nngp + cross + cross.T
    torch.testing.assert_close(k.nngp, expected, rtol=1e-12, atol=1e-13)
    # The finite module concatenates along the same axis.
    out = cat.build((2, 3, 4), seed=0)(x)
    assert out.shape == (4, 8)
    last = nk.FanInConcat(axis=-1)
    arch = nk.serial(nk.FanOut(2), nk.parallel(nk.Conv(4, 3), nk.Conv(4, 3)), last, nk.Flatten(), nk.Dense(1))
    assert arch.build((2, 3, 4), seed=0)(x).shape == (4, 1)
    with pytest.raises(nk.NtkitError, match="do not end in a"):
        nk.serial(nk.FanOut(2), nk.parallel(nk.ReLU(), nk.Identity()), nk.FanInConcat(axis=2),
                  nk.GlobalAvgPool()).kernel(x)


def test_bad_parameters_raise_clear_errors():
    x = _x(2, 2, 4, 4)
    with pytest.raises(nk.NtkitError, match="padding"):
        nk.ConvTranspose(4, 3, padding="circular")
    with pytest.raises(nk.NtkitError, match="method"):
        nk.ImageResize((4, 4), method="cubic")
    with pytest.raises(nk.NtkitError, match="shape"):
        nk.ImageResize((0, 4))
    with pytest.raises(nk.NtkitError, match="2 spatial axes"):
        nk.serial(nk.ImageResize((4, 4, 4)), nk.GlobalAvgPool()).kernel(x)
    with pytest.raises(nk.NtkitError, match="out of range"):
        nk.serial(nk.FanOut(2), nk.FanInConcat(axis=4)).kernel(x)
    with pytest.raises(nk.NtkitError, match="axis"):
        nk.FanInConcat(axis=1.5)
