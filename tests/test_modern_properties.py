"""Structural properties of the LayerNorm, Dropout, FanInProd, Dense-on-channels and
GlobalSelfAttention kernels (issue 16): symmetry, PSD, ``kernel(x) == kernel(x, x)``, the
diagonal mode, tiled == untiled, float32 against float64, masks."""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from ntkit.infinite import engine


def _x(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _attention(mech="softmax", **kw):
    return nk.GlobalSelfAttention(8, 6, 4, 2, attention_mechanism=mech, W_key_std=1.2, b_std=0.2, **kw)


def _block(att):
    return nk.serial(
        nk.Dense(8, 1.0, 0.3), nk.LayerNorm(axis=1), nk.FanOut(2), nk.parallel(att, nk.Identity()),
        nk.FanInSum(), nk.LayerNorm(axis=1), nk.Dense(8, 1.4, 0.1), nk.ReLU(), nk.Dense(8),
        nk.GlobalAvgPool(), nk.Dense(1),
    )


# Each: (architecture, input shape of one example). Every new layer appears in one.
ARCHS = {
    "layernorm_flat": (nk.serial(nk.Dense(8, 1.2, 0.5), nk.LayerNorm(), nk.Erf(), nk.Dense(1)), (5,)),
    "layernorm_channels": (nk.serial(nk.Dense(8, 1.0, 0.4), nk.LayerNorm(axis=1), nk.ReLU(),
                                     nk.Flatten(), nk.Dense(1)), (3, 4)),
    "layernorm_images": (nk.serial(nk.Conv(8, 3, b_std=0.3), nk.LayerNorm(axis=(1, 2, 3)), nk.ReLU(),
                                   nk.Conv(8, 2), nk.LayerNorm(axis=1), nk.GlobalAvgPool(), nk.Dense(1)),
                         (2, 3, 3)),
    "dropout_flat": (nk.serial(nk.Dense(8, 1.5, 0.1), nk.ReLU(), nk.Dropout(0.7), nk.Dense(1)), (5,)),
    "dropout_spatial": (nk.serial(nk.Dense(8, 1.5, 0.1), nk.ReLU(), nk.Dropout(0.6), nk.Dense(4),
                                  nk.ReLU(), nk.Flatten(), nk.Dense(1)), (3, 4)),
    "dropout_full": (nk.serial(nk.Conv(8, 2), nk.ReLU(), nk.Dropout(0.5), nk.Conv(8, 2), nk.ReLU(),
                               nk.GlobalAvgPool(), nk.Dense(1)), (2, 3, 3)),
    "fan_in_prod": (nk.serial(nk.Dense(8, 1.0, 0.2), nk.ReLU(), nk.FanOut(3),
                              nk.parallel(nk.Dense(8, 1.3), nk.Dense(8, 0.9, 0.4), nk.Identity()),
                              nk.FanInProd(), nk.Dense(1)), (5,)),
    "dense_channels": (nk.serial(nk.Dense(8, 1.3, 0.2), nk.ReLU(), nk.Dense(8), nk.Erf(),
                                 nk.GlobalAvgPool(), nk.Dense(1)), (3, 4)),
    "attention_softmax": (_block(_attention()), (3, 4)),
    "attention_identity": (_block(_attention("identity")), (3, 4)),
    "attention_relu_sum": (_block(_attention("relu", pos_emb_type="sum")), (3, 4)),
    "attention_abs_concat": (_block(_attention("abs", pos_emb_type="concat", val_pos_emb=True)), (3, 4)),
    "attention_decay_images": (
        _block(_attention(pos_emb_type="sum", pos_emb_decay_fn=lambda d: torch.exp(-d), val_pos_emb=True)),
        (3, 2, 3)),
}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_symmetry_psd_self_consistency_and_diagonal(name):
    arch, shape = ARCHS[name]
    x1, x2 = _x(7, *shape), _x(3, *shape, seed=1)
    k = arch.kernel(x1)
    k_xx = arch.kernel(x1, x1.clone())
    k_diag = arch.kernel(x1, diagonal=True)
    for field in ("nngp", "ntk"):
        mat = k.get(field)
        assert mat.shape == (7, 7) and mat.dtype == torch.float64
        torch.testing.assert_close(mat, mat.T, rtol=0, atol=0)
        torch.testing.assert_close(k_xx.get(field), mat, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(k_diag.get(field), mat.diagonal(), rtol=1e-12, atol=1e-14)
        eig = torch.linalg.eigvalsh(mat)
        assert eig.min() >= -1e-10 * eig.max()
    torch.testing.assert_close(k.var1, k.nngp.diagonal(), rtol=1e-12, atol=1e-14)
    # Cross kernels between distinct examples are blocks of the kernel of the union (Dropout
    # included: two examples never share a mask).
    k_cross = arch.kernel(x1, x2)
    k_all = arch.kernel(torch.cat([x1, x2]))
    torch.testing.assert_close(k_cross.ntk, k_all.ntk[:7, 7:], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(k_cross.nngp, k_all.nngp[:7, 7:], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_tiled_equals_untiled(name):
    arch, shape = ARCHS[name]
    x1, x2 = _x(9, *shape), _x(5, *shape, seed=1)
    small = 3 * engine.pair_bytes(arch, x1, True)
    for args in ((x1,), (x1, x2)):
        for diagonal in (False, True):
            if diagonal and len(args) == 2:
                args = (x1[:5], x2)
            tiled = arch.kernel(*args, diagonal=diagonal, memory_budget=small)
            whole = arch.kernel(*args, diagonal=diagonal, memory_budget=2**34)
            for field in ("nngp", "ntk", "var1", "var2"):
                torch.testing.assert_close(getattr(tiled, field), getattr(whole, field),
                                           rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_float32_within_1e4_of_float64(name):
    arch, shape = ARCHS[name]
    x = _x(6, *shape)
    k64 = arch.kernel(x)
    k32 = arch.kernel(x, dtype=torch.float32)
    assert k32.ntk.dtype == torch.float32
    for field in ("nngp", "ntk"):
        a, b = k32.get(field).double(), k64.get(field)
        assert float((a - b).abs().max() / b.abs().max()) < 1e-4


MASKED = {
    "attention": nk.serial(nk.Dense(8, 1.0, 0.3), nk.LayerNorm(axis=(1, 2)), _attention(), nk.ReLU(),
                           nk.Dense(8), nk.GlobalAvgPool(), nk.Dense(1)),
    "block_dropout": nk.serial(nk.Dense(8), nk.Dropout(0.8), _block(_attention("relu", pos_emb_type="sum"))),
}


@pytest.mark.parametrize("name", sorted(MASKED))
def test_masked_kernels_symmetric_psd_tiled_and_float32(name):
    arch = MASKED[name]
    x1, x2 = _x(7, 3, 5), _x(4, 3, 5, seed=1)
    mask1 = torch.zeros(7, 5, dtype=torch.bool)
    mask1[0, 3:] = True
    mask1[2, :2] = True
    mask1[5, 1] = True
    mask2 = torch.zeros(4, 5, dtype=torch.bool)
    mask2[1, 4] = True
    k = arch.kernel(x1, mask1=mask1)
    mat = k.ntk
    torch.testing.assert_close(mat, mat.T, rtol=0, atol=0)
    assert torch.linalg.eigvalsh(mat).min() >= -1e-10 * torch.linalg.eigvalsh(mat).max()
    torch.testing.assert_close(arch.kernel(x1, x1.clone(), mask1=mask1, mask2=mask1.clone()).ntk, mat,
                               rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(arch.kernel(x1, diagonal=True, mask1=mask1).ntk, mat.diagonal(),
                               rtol=1e-12, atol=1e-14)
    both = arch.kernel(torch.cat([x1, x2]), mask1=torch.cat([mask1, mask2]))
    cross = arch.kernel(x1, x2, mask1=mask1, mask2=mask2)
    torch.testing.assert_close(cross.ntk, both.ntk[:7, 7:], rtol=1e-12, atol=1e-14)
    small = 3 * engine.pair_bytes(arch, x1, True)
    tiled = arch.kernel(x1, x2, mask1=mask1, mask2=mask2, memory_budget=small)
    torch.testing.assert_close(tiled.ntk, cross.ntk, rtol=1e-12, atol=1e-15)
    k32 = arch.kernel(x1, mask1=mask1, dtype=torch.float32)
    assert float((k32.ntk.double() - mat).abs().max() / mat.abs().max()) < 1e-4
    # Changing the inputs at absent positions changes nothing.
    noisy = x1 + 5.0 * mask1[:, None, :] * _x(7, 3, 5, seed=9)
    torch.testing.assert_close(arch.kernel(noisy, mask1=mask1).ntk, mat, rtol=1e-12, atol=1e-14)
    # An all-present mask is no mask.
    none = torch.zeros_like(mask1)
    torch.testing.assert_close(arch.kernel(x1, mask1=none).ntk, arch.kernel(x1).ntk, rtol=1e-12, atol=1e-14)


def test_spatial_outputs_are_zero_at_absent_positions():
    arch = nk.serial(nk.Dense(8, b_std=0.5), _attention())
    x = _x(3, 2, 4)
    mask = torch.tensor([[False, False, True, True], [False] * 4, [True, False, False, False]])
    k = arch.kernel(x, mask1=mask)
    assert k.ntk.shape == (3, 3, 4, 4)
    assert float(k.ntk[0, :, 2:].abs().max()) == 0.0 and float(k.ntk[:, 0, :, 2:].abs().max()) == 0.0
    assert float(k.ntk[2, 1, 0].abs().max()) == 0.0 and float(k.ntk[2, 1, 1].abs().min()) > 0.0
    assert float(k.var1[0, 2:].abs().max()) == 0.0
