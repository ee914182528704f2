"""Independent routes for the issue-16 layers: closed forms written here in NumPy by explicit
sums over positions, identities with existing layers, and masks against shorter inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit as nk


def _x(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- LayerNorm
def _dense_input_kernel(x, w, b):
    """NNGP of Dense(W_std=w, b_std=b) on ``x (n, C, *S)``: ``(n, n, P, P)`` by loops."""
    x = np.asarray(x)
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    p = flat.shape[2]
    k = np.zeros((n, n, p, p))
    for i in range(n):
        for j in range(n):
            for a in range(p):
                for bb in range(p):
                    k[i, j, a, bb] = w**2 * np.dot(flat[i, :, a], flat[j, :, bb]) / c + b**2
    return k


@pytest.mark.parametrize("axis", [1, (1, 2)])
def test_layernorm_on_sequences_is_the_normalized_input_covariance(axis):
    x = _x(4, 3, 5)
    w, b = 1.3, 0.4
    k = _dense_input_kernel(x, w, b)  # (n, n, T, T); the Dense NTK is its NNGP
    var = np.stack([np.diag(k[i, i]) for i in range(4)])  # (n, T)
    m = var if axis == 1 else np.repeat(var.mean(1, keepdims=True), 5, axis=1)
    expected = k / np.sqrt(m[:, None, :, None] * m[None, :, None, :])
    # Full spatial output (through a layer that needs it) and the GAP readout.
    arch = nk.serial(nk.Dense(16, w, b), nk.LayerNorm(axis=axis, eps=0.0), nk.GlobalAvgPool())
    got = arch.kernel(x)
    np.testing.assert_allclose(got.nngp.numpy(), expected.mean((2, 3)), rtol=1e-12)
    np.testing.assert_allclose(got.ntk.numpy(), expected.mean((2, 3)), rtol=1e-12)
    # Spatial-diagonal output: position t with position t.
    diag = nk.serial(nk.Dense(16, w, b), nk.LayerNorm(axis=axis, eps=0.0)).kernel(x, get="nngp")
    np.testing.assert_allclose(diag.numpy(), np.diagonal(expected, axis1=2, axis2=3), rtol=1e-12)


def test_layernorm_on_images_and_flat_inputs_and_eps():
    x = _x(3, 2, 2, 3)
    k = _dense_input_kernel(x, 1.0, 0.5)
    var = np.stack([np.diag(k[i, i]) for i in range(3)])
    eps = 0.3
    for axis, m in (((1,), var), ((1, 2, 3), np.repeat(var.mean(1, keepdims=True), 6, 1)),
                    ((1, -1), np.repeat(var.reshape(3, 2, 3).mean(2), 3, 1))):
        m = m + eps
        expected = (k / np.sqrt(m[:, None, :, None] * m[None, :, None, :])).mean((2, 3))
        arch = nk.serial(nk.Dense(8, 1.0, 0.5), nk.LayerNorm(axis=axis, eps=eps), nk.GlobalAvgPool())
        np.testing.assert_allclose(arch.kernel(x, get="nngp").numpy(), expected, rtol=1e-12)
    xf = _x(5, 4)
    kf = 1.2**2 * (xf @ xf.T).numpy() / 4 + 0.1**2
    d = np.diag(kf)
    got = nk.serial(nk.Dense(8, 1.2, 0.1), nk.LayerNorm(eps=0.0)).kernel(xf, get="ntk")
    np.testing.assert_allclose(got.numpy(), kf / np.sqrt(np.outer(d, d)), rtol=1e-12)


def test_layernorm_finite_module_normalizes_like_torch():
    x = _x(4, 6, 5)
    net = nk.LayerNorm(axis=1, eps=1e-5).build((6, 5))
    ref = torch.nn.functional.layer_norm(x.transpose(1, 2), (6,), eps=1e-5).transpose(1, 2)
    torch.testing.assert_close(net(x), ref, rtol=1e-12, atol=1e-12)
    whole = nk.LayerNorm(axis=(1, 2), eps=1e-5).build((6, 5))
    torch.testing.assert_close(whole(x), torch.nn.functional.layer_norm(x, (6, 5), eps=1e-5),
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- attention
def _mech(z, name, present):
    """``mech`` over the keys (last axis) with absent keys excluded, by explicit loops."""
    out = np.zeros_like(z)
    for a in range(z.shape[0]):
        keys = [bb for bb in range(z.shape[1]) if present[bb]]
        if name == "softmax":
            top = max(z[a, bb] for bb in keys)
            total = sum(math.exp(z[a, bb] - top) for bb in keys)
            for bb in keys:
                out[a, bb] = math.exp(z[a, bb] - top) / total
        else:
            for bb in keys:
                out[a, bb] = {"identity": z[a, bb], "abs": abs(z[a, bb]), "relu": max(z[a, bb], 0.0)}[name]
    return out


def _attention_reference(k_in, ntk_in, present, mech, qk, ov, b):
    """``nngp' = OV²·Σ_{p',q'} G_i[p,p'] K[p',q'] G_j[q,q'] + b²`` and the NTK, explicit sums."""
    n, _, p, _ = k_in.shape
    g = [_mech(qk * k_in[i, i], mech, present[i]) for i in range(n)]
    nngp = np.zeros_like(k_in)
    ntk = np.zeros_like(k_in)
    for i in range(n):
        for j in range(n):
            for a in range(p):
                for c in range(p):
                    s_k = s_t = 0.0
                    for a2 in range(p):
                        for c2 in range(p):
                            weight = g[i][a, a2] * g[j][c, c2]
                            s_k += weight * k_in[i, j, a2, c2]
                            s_t += weight * ntk_in[i, j, a2, c2]
                    nngp[i, j, a, c] = ov**2 * s_k + b**2
                    ntk[i, j, a, c] = ov**2 * s_t + 2 * ov**2 * s_k + b**2
    return nngp, ntk


@pytest.mark.parametrize("mech", ["identity", "softmax", "relu", "abs"])
def test_attention_equals_explicit_sums_over_positions(mech):
    x = _x(3, 2, 4)
    w, b = 1.1, 0.3
    k_in = _dense_input_kernel(x, w, b)
    present = np.ones((3, 4), dtype=bool)
    qk, ov, b_att = 0.9 * 1.4, 1.2 * 0.8, 0.25
    nngp, ntk = _attention_reference(k_in, k_in, present, mech, qk, ov, b_att)
    att = nk.GlobalSelfAttention(8, 4, 4, 2, W_query_std=0.9, W_key_std=1.4, W_out_std=1.2,
                                 W_value_std=0.8, b_std=b_att, attention_mechanism=mech)
    got = nk.serial(nk.Dense(8, w, b), att).kernel(x)
    np.testing.assert_allclose(got.nngp.numpy(), nngp, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(got.ntk.numpy(), ntk, rtol=1e-11, atol=1e-13)


def test_square_root_scaled_identity_attention_equals_explicit_sums():
    """``1/√d_k``, independent queries: ``nngp' = std²·D·K + b²`` with ``D = Σ_{p,p'} K[p,p']²``,
    ``ntk' = std²·(2E·K + D·(Θ + 4K)) + b²`` with ``E = Σ K·Θ`` (Hron et al. 2020)."""
    x = _x(3, 2, 4)
    k_in = _dense_input_kernel(x, 1.1, 0.3)
    std2, b = (0.9 * 1.4 * 1.2 * 0.8) ** 2, 0.25
    nngp = np.zeros_like(k_in)
    ntk = np.zeros_like(k_in)
    for i in range(3):
        for j in range(3):
            d = sum(k_in[i, j, a, c] ** 2 for a in range(4) for c in range(4))
            nngp[i, j] = std2 * d * k_in[i, j] + b**2
            ntk[i, j] = std2 * (2 * d * k_in[i, j] + d * (k_in[i, j] + 4 * k_in[i, j])) + b**2
    att = nk.GlobalSelfAttention(8, 4, 4, 2, linear_scaling=False, W_query_std=0.9, W_key_std=1.4,
                                 W_out_std=1.2, W_value_std=0.8, b_std=b, attention_mechanism="identity")
    got = nk.serial(nk.Dense(8, 1.1, 0.3), att).kernel(x)
    np.testing.assert_allclose(got.nngp.numpy(), nngp, rtol=1e-11)
    np.testing.assert_allclose(got.ntk.numpy(), ntk, rtol=1e-11)


@pytest.mark.parametrize("mech", ["identity", "softmax"])
def test_masked_attention_equals_explicit_sums_over_present_keys(mech):
    x = _x(3, 2, 4)
    present = np.array([[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 0]], dtype=bool)
    k_in = _dense_input_kernel(x, 1.0, 0.2)
    _, ntk = _attention_reference(k_in, k_in, present, mech, 1.0, 1.0, 0.0)
    readout = nk.serial(nk.Dense(8, 1.0, 0.2), nk.GlobalSelfAttention(8, 4, 4, 2, attention_mechanism=mech),
                        nk.GlobalAvgPool())
    got = readout.kernel(x, mask1=torch.from_numpy(~present))
    weights = present / present.sum(1, keepdims=True)
    want = np.einsum("ip,ijpq,jq->ij", weights, ntk, weights)
    np.testing.assert_allclose(got.ntk.numpy(), want, rtol=1e-11)


def test_positional_embeddings_enter_as_the_position_covariance():
    """``"sum"`` with ``R = I``: keys see ``Σ + I``; values see ``Σ (+ R if val_pos_emb)``."""
    x = _x(2, 3, 3)
    k_in = _dense_input_kernel(x, 1.0, 0.0)
    n, p = 2, 3
    eye = np.eye(p)
    for kind, (wx, we) in (("sum", (1.0, 1.0)), ("concat", (0.5, 0.5))):
        for val in (False, True):
            g = [_mech(wx * k_in[i, i] + we * eye, "softmax", np.ones(p, bool)) for i in range(n)]
            v = wx * k_in + we * eye if val else k_in
            nngp = np.einsum("iab,ijbd,jcd->ijac", np.stack(g), v, np.stack(g))
            ntk = 2 * nngp + (np.einsum("iab,ijbd,jcd->ijac", np.stack(g), we * np.broadcast_to(eye, v.shape),
                                        np.stack(g)) if val else 0.0) + np.einsum(
                "iab,ijbd,jcd->ijac", np.stack(g), (wx if val else 1.0) * k_in, np.stack(g))
            att = nk.GlobalSelfAttention(6, 4, 4, 1, pos_emb_type=kind, val_pos_emb=val)
            got = nk.serial(nk.Dense(6), att).kernel(x)
            np.testing.assert_allclose(got.nngp.numpy(), nngp, rtol=1e-11)
            np.testing.assert_allclose(got.ntk.numpy(), ntk, rtol=1e-11)


# --------------------------------------------------------------------------- masks
def _sequence_model(pos_emb="none"):
    att = nk.GlobalSelfAttention(8, 4, 4, 2, W_key_std=1.3, b_std=0.1, pos_emb_type=pos_emb)
    return nk.serial(
        nk.Dense(8, 1.0, 0.3), nk.LayerNorm(axis=(1, 2)), nk.FanOut(2), nk.parallel(att, nk.Identity()),
        nk.FanInSum(), nk.LayerNorm(axis=1), nk.Dense(8), nk.ReLU(), nk.Dropout(0.8), nk.Dense(8),
        nk.GlobalAvgPool(), nk.Dense(1),
    )


@pytest.mark.parametrize("pos_emb", ["none", "sum"])
def test_masked_inputs_give_the_kernel_of_the_shorter_inputs(pos_emb):
    arch = _sequence_model(pos_emb)
    x = _x(5, 3, 6)
    # The same positions absent everywhere: the kernel of the cropped inputs, all pairs.
    keep = [0, 2, 3, 5]
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[:, keep] = False
    torch.testing.assert_close(arch.kernel(x, mask1=mask).ntk, arch.kernel(x[:, :, keep]).ntk,
                               rtol=1e-12, atol=1e-14)
    # Different lengths per example: each pair equals the pair of the cropped examples.
    lengths = [6, 4, 4, 2, 5]
    mask = torch.arange(6)[None, :] >= torch.tensor(lengths)[:, None]
    k = arch.kernel(x, mask1=mask)
    for i in range(5):
        alone = arch.kernel(x[[i], :, : lengths[i]])
        torch.testing.assert_close(k.ntk[i, i], alone.ntk[0, 0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(k.var1[i], alone.var1[0], rtol=1e-12, atol=1e-14)
        for j in range(i + 1, 5):
            if lengths[i] == lengths[j]:
                crop = x[[i, j]][:, :, : lengths[i]]
                torch.testing.assert_close(k.ntk[[i, j]][:, [i, j]], arch.kernel(crop).ntk,
                                           rtol=1e-12, atol=1e-14)
    x2 = _x(2, 3, 6, seed=4)
    cross = arch.kernel(x[:3], x2, mask1=mask[:3], mask2=torch.zeros(2, 6, dtype=torch.bool))
    torch.testing.assert_close(cross.ntk[0], arch.kernel(x[:1], x2).ntk[0], rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- Dense, products, dropout
def test_dense_on_channels_equals_a_one_by_one_convolution():
    x = _x(4, 3, 5)
    dense = nk.serial(nk.Dense(8, 1.3, 0.2), nk.ReLU(), nk.Dense(8, 0.9), nk.Erf())
    conv = nk.serial(nk.Conv(8, 1, W_std=1.3, b_std=0.2), nk.ReLU(), nk.Conv(8, 1, W_std=0.9), nk.Erf())
    for head in ([], [nk.GlobalAvgPool(), nk.Dense(1)], [nk.Flatten(), nk.Dense(1)]):
        a = nk.serial(dense, *head).kernel(x)
        b = nk.serial(conv, *head).kernel(x)
        torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-12, atol=1e-14)
    standard = nk.Dense(8, 1.3, 0.2, parameterization="standard")
    torch.testing.assert_close(
        standard.kernel(x, get="ntk"),
        nk.Conv(8, 1, W_std=1.3, b_std=0.2, parameterization="standard").kernel(x, get="ntk"),
        rtol=1e-12, atol=0)
    # The finite module is a 1x1 convolution with the same weights.
    net = nk.Dense(7, 1.3, 0.2).build((3, 5), seed=0)
    w = net.weight.detach()
    conv1 = torch.nn.functional.conv1d(x, w[:, :, None]) * (1.3 / 3**0.5) + 0.2 * net.bias.detach()[:, None]
    torch.testing.assert_close(net(x), conv1, rtol=1e-12, atol=1e-12)
    assert net(x).shape == (4, 7, 5)


def test_fan_in_prod_multiplies_nngps_and_applies_the_product_rule():
    x = _x(5, 4)
    k = (x @ x.T).numpy() / 4
    ka, kb = 1.3**2 * k, 0.9**2 * k + 0.4**2
    arch = nk.serial(nk.FanOut(2), nk.parallel(nk.Dense(8, 1.3), nk.Dense(8, 0.9, 0.4)), nk.FanInProd())
    got = arch.kernel(x)
    np.testing.assert_allclose(got.nngp.numpy(), ka * kb, rtol=1e-12)
    np.testing.assert_allclose(got.ntk.numpy(), ka * kb + ka * kb, rtol=1e-12)  # ntk_a = nngp_a here
    deeper = nk.serial(arch, nk.Dense(1, 1.1)).kernel(x)
    np.testing.assert_allclose(deeper.ntk.numpy(), 1.1**2 * ka * kb + 1.1**2 * 2 * ka * kb, rtol=1e-12)


def test_dropout_scales_each_example_with_itself_by_one_over_rate():
    x = _x(5, 4)
    k = 1.5**2 * (x @ x.T).numpy() / 4 + 0.1**2
    rate = 0.6
    arch = nk.serial(nk.Dense(8, 1.5, 0.1), nk.Dropout(rate), nk.Dense(1, 1.2, 0.3))
    got = arch.kernel(x)
    scaled = k + np.diag(np.diag(k)) * (1 / rate - 1)
    nngp = 1.2**2 * scaled + 0.3**2
    np.testing.assert_allclose(got.nngp.numpy(), nngp, rtol=1e-12)
    np.testing.assert_allclose(got.ntk.numpy(), nngp + 1.2**2 * scaled, rtol=1e-12)
    # Test mode and rate=1 are the identity; build translates the keep rate to torch's p.
    plain = nk.serial(nk.Dense(8, 1.5, 0.1), nk.Dense(1, 1.2, 0.3)).kernel(x)
    for layer in (nk.Dropout(rate, mode="test"), nk.Dropout(1.0)):
        with_layer = nk.serial(nk.Dense(8, 1.5, 0.1), layer, nk.Dense(1, 1.2, 0.3))
        torch.testing.assert_close(with_layer.kernel(x).ntk, plain.ntk, rtol=0, atol=0)
    module = nk.Dropout(0.8).build((4,))
    assert isinstance(module, torch.nn.Dropout) and abs(module.p - 0.2) < 1e-15
    assert isinstance(nk.Dropout(0.8, mode="test").build((4,)), torch.nn.Identity)
