"""Bad input to the issue-16 layers gets a clear ntkit error that names the fix."""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from ntkit.errors import NtkitError, ParameterError, ShapeError


def _x(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _att(**kw):
    return nk.GlobalSelfAttention(8, 4, 4, 2, **kw)


def test_layernorm_over_a_single_entry():
    with pytest.raises(ShapeError, match=r"single entry.*width > 1"):
        nk.serial(nk.Dense(1), nk.LayerNorm()).kernel(_x(3, 4))
    with pytest.raises(ShapeError, match="single entry"):
        nk.LayerNorm(axis=1).build((1, 1))
    # A spatial axis of size 1 with many channels is fine.
    assert nk.serial(nk.Dense(8), nk.LayerNorm(axis=(1, 2))).kernel(_x(3, 2, 1), get="ntk").shape == (3, 3, 1)


def test_layernorm_axes():
    seq = _x(3, 2, 5)
    with pytest.raises(ShapeError, match=r"channel axis 1.*LayerNorm\(axis=1\)"):
        nk.serial(nk.Dense(8), nk.LayerNorm()).kernel(seq)  # axis=-1 is the positions here
    with pytest.raises(ShapeError, match="batch axis 0"):
        nk.serial(nk.Dense(8), nk.LayerNorm(axis=(0, 1))).kernel(seq)
    with pytest.raises(ShapeError, match="out of range"):
        nk.serial(nk.Dense(8), nk.LayerNorm(axis=3)).kernel(seq)
    with pytest.raises(ShapeError, match="channel axis 1"):
        nk.LayerNorm(axis=2).build((2, 5))
    for bad in ("x", (), 1.5, True):
        with pytest.raises(ParameterError, match="axis"):
            nk.LayerNorm(axis=bad)
    with pytest.raises(ParameterError, match="eps"):
        nk.LayerNorm(eps=-1.0)


def test_dropout_parameters():
    for rate in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ParameterError, match=r"keep probability.*rate=1 - p"):
            nk.Dropout(rate)
    with pytest.raises(ParameterError, match="mode"):
        nk.Dropout(0.5, mode="eval")


def test_fan_in_prod_misuse():
    x = _x(3, 4)
    with pytest.raises(ShapeError, match="needs branches"):
        nk.serial(nk.Dense(4), nk.FanInProd()).kernel(x)
    with pytest.raises(ShapeError, match="do not factorize"):
        nk.serial(nk.FanOut(2), nk.parallel(nk.ReLU(), nk.Identity()), nk.FanInProd()).kernel(x)
    with pytest.raises(ShapeError, match="differ in shape"):
        nk.serial(nk.FanOut(2), nk.parallel(nk.Dense(4), nk.Dense(3)), nk.FanInProd()).kernel(x)
    with pytest.raises(ShapeError, match="differ in shape"):
        nk.serial(nk.FanOut(2), nk.parallel(nk.Dense(4), nk.Dense(3)), nk.FanInProd()).build((4,))


def test_attention_on_flat_inputs_and_no_closed_form():
    with pytest.raises(ShapeError, match=r"no positions.*\(n, C, T\)"):
        nk.serial(nk.Dense(8), _att()).kernel(_x(3, 4))
    with pytest.raises(ShapeError, match="no positions"):
        _att().build((4,))
    with pytest.raises(ParameterError, match="linear_scaling=True"):
        nk.serial(nk.Dense(8), _att(linear_scaling=False)).kernel(_x(3, 2, 4))  # softmax
    with pytest.raises(ParameterError, match="pos_emb_type='none'"):
        nk.serial(nk.Dense(8), _att(linear_scaling=False, attention_mechanism="identity",
                                    pos_emb_type="sum")).kernel(_x(3, 2, 4))
    with pytest.raises(ShapeError, match="cannot honour masks"):
        nk.serial(nk.Dense(8), _att(linear_scaling=False, attention_mechanism="identity")).kernel(
            _x(3, 2, 4), mask1=torch.zeros(3, 4, dtype=torch.bool))
    # The finite module of the 1/sqrt(d) variant exists.
    net = _att(linear_scaling=False).build((2, 4), seed=0)
    assert net(_x(3, 2, 4)).shape == (3, 8, 4)
    for kwargs, match in (({"attention_mechanism": "tanh"}, "attention_mechanism"),
                          ({"pos_emb_type": "learned"}, "pos_emb_type"),
                          ({"W_key_std": -1.0}, "W_key_std"), ({"pos_emb_decay_fn": 3}, "pos_emb_decay_fn")):
        with pytest.raises(ParameterError, match=match):
            _att(**kwargs)
    with pytest.raises(ParameterError, match="n_heads"):
        nk.GlobalSelfAttention(8, 4, 4, 0)


def test_key_channels_need_not_divide_by_heads():
    """``n_chan_key``/``n_chan_val`` are per head (neural-tangents' meaning): any count works."""
    att = nk.GlobalSelfAttention(7, 5, 3, 3)
    net = att.build((2, 4), seed=0)
    assert tuple(net.key.shape) == (3, 2, 5) and tuple(net.value.shape) == (3, 2, 3)
    assert tuple(net.out.shape) == (9, 7)
    x = _x(3, 2, 4)
    torch.testing.assert_close(nk.serial(nk.Dense(8), att).kernel(x).ntk,
                               nk.serial(nk.Dense(8), nk.GlobalSelfAttention(4, 8, 8, 2)).kernel(x).ntk,
                               rtol=1e-13, atol=0)


def test_bad_masks():
    arch = nk.serial(nk.Dense(8), _att(), nk.GlobalAvgPool(), nk.Dense(1))
    x = _x(3, 2, 4)
    ok = torch.zeros(3, 4, dtype=torch.bool)
    with pytest.raises(ShapeError, match=r"shape \(n, \*spatial\) = \(3, 4\)"):
        arch.kernel(x, mask1=torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"shape \(n, \*spatial\)"):
        arch.kernel(x, mask1=torch.zeros(2, 4, dtype=torch.bool))
    full = ok.clone()
    full[1] = True
    with pytest.raises(ShapeError, match="every position of example 1 absent"):
        arch.kernel(x, mask1=full)
    with pytest.raises(ShapeError, match="boolean"):
        arch.kernel(x, mask1=torch.full((3, 4), 0.5))
    with pytest.raises(ShapeError, match="mask2 was given without x2"):
        arch.kernel(x, mask2=ok)
    with pytest.raises(ShapeError, match="flat"):
        nk.serial(nk.Dense(8), nk.Dense(1)).kernel(_x(3, 4), mask1=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"Conv cannot honour masks"):
        nk.serial(nk.Conv(8, 3), nk.GlobalAvgPool(), nk.Dense(1)).kernel(x, mask1=ok)
    with pytest.raises(ShapeError, match=r"Flatten cannot honour masks"):
        nk.serial(nk.Dense(8), nk.Flatten(), nk.Dense(1)).kernel(x, mask1=ok)
    # 0/1 integers and NumPy arrays are accepted.
    torch.testing.assert_close(arch.kernel(x, mask1=ok.int().numpy()).ntk, arch.kernel(x).ntk,
                               rtol=1e-12, atol=0)


def test_errors_are_ntkit_errors():
    assert issubclass(ShapeError, NtkitError) and issubclass(ParameterError, ValueError)
