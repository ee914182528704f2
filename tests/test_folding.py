"""The folded linear prefix (ntkit.infinite.folding) against the layers run pair by pair.

``ABReLU(1, 1)`` is the identity function with a closed-form kernel that is exactly the
identity map (``c = 0``, ``E[φ'φ'] = 1``), but it is an activation, which ends a folded
prefix: ``serial(ABReLU(1, 1), arch)`` is therefore ``arch`` evaluated without folding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from conv_reference import one_thread
from ntkit.infinite.folding import fold_prefix


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def unfolded(arch):
    return nk.serial(nk.ABReLU(1.0, 1.0), arch)


def transformer(pos_emb="none", mechanism="softmax"):
    att = nk.GlobalSelfAttention(16, 16, 16, 2, b_std=0.2, W_out_std=1.3, attention_mechanism=mechanism,
                                 pos_emb_type=pos_emb, pos_emb_decay_fn=None if pos_emb == "none" else
                                 (lambda d: torch.exp(-d / 4)))
    return nk.serial(nk.Dense(16, 1.2, 0.1), nk.LayerNorm(axis=1), nk.FanOut(2),
                     nk.parallel(att, nk.Identity()), nk.FanInSum(), nk.LayerNorm(axis=1),
                     nk.Dense(16, 1.1, 0.3), nk.ReLU(), nk.Dense(16), nk.GlobalAvgPool(), nk.Dense(1))


def check(arch, x, y=None, **kw):
    for args in ((x,), (x, y)) if y is not None else ((x,),):
        for diagonal in (False, True):
            if diagonal and len(args) == 2 and args[1].shape[0] != x.shape[0]:
                continue
            k = arch.kernel(*args, diagonal=diagonal, **kw)
            ref = unfolded(arch).kernel(*args, diagonal=diagonal, **kw)
            for field in ("nngp", "ntk"):
                torch.testing.assert_close(k.get(field), ref.get(field), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("pos_emb,mechanism", [("none", "softmax"), ("sum", "relu"), ("concat", "identity")])
def test_transformer_block_folded_equals_pair_by_pair(pos_emb, mechanism):
    g = np.random.default_rng(0)
    x = torch.from_numpy(g.standard_normal((4, 3, 5)))
    y = torch.from_numpy(g.standard_normal((3, 3, 5)))
    arch = transformer(pos_emb, mechanism)
    check(arch, x, y)
    f, rest = fold_prefix(arch, x, None)
    assert f is not None and len(rest.layers) == 4  # folded up to the ReLU


def test_graph_network_folded_equals_pair_by_pair():
    g = np.random.default_rng(1)
    x = torch.from_numpy(g.standard_normal((4, 3, 6)))
    a = torch.from_numpy((g.random((4, 6, 6)) < 0.4) + np.eye(6))
    arch = nk.serial(nk.Dense(8, 1.3, 0.2), nk.Aggregate(), nk.Dense(8, 1.1, 0.1), nk.ReLU(), nk.Aggregate(),
                     nk.GlobalSumPool(), nk.Dense(1))
    for field in ("nngp", "ntk"):
        torch.testing.assert_close(arch.kernel(x, pattern1=a).get(field),
                                   unfolded(arch).kernel(x, pattern1=a).get(field), rtol=1e-12, atol=1e-14)
        cross = arch.kernel(x, x[:3] * 0.5, pattern1=a, pattern2=a[:3])
        ref = unfolded(arch).kernel(x, x[:3] * 0.5, pattern1=a, pattern2=a[:3])
        torch.testing.assert_close(cross.get(field), ref.get(field), rtol=1e-12, atol=1e-14)


def test_an_architecture_that_folds_whole():
    g = np.random.default_rng(2)
    x = torch.from_numpy(g.standard_normal((3, 2, 4)))
    a = torch.from_numpy((g.random((3, 4, 4)) < 0.5) + np.eye(4))
    arch = nk.serial(nk.Dense(4, 0.9, 0.4), nk.Aggregate(), nk.Dense(4, 1.5))
    f, rest = fold_prefix(arch, x, {"pattern": a})
    assert f is not None and rest is None
    k = arch.kernel(x, pattern1=a)
    ref = unfolded(arch).kernel(x, pattern1=a)
    assert k.ntk.shape == (3, 3, 4, 4)
    for field in ("nngp", "ntk"):
        torch.testing.assert_close(k.get(field), ref.get(field), rtol=1e-12, atol=1e-14)


def test_masks_and_tensor_hyperparameters_are_not_folded():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    arch = transformer()
    assert fold_prefix(arch, x, {"mask": torch.zeros(2, 4, dtype=torch.bool)})[0] is None
    w = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    arch = nk.serial(nk.Dense(4, w), nk.LayerNorm(axis=1), nk.GlobalAvgPool())
    assert fold_prefix(arch, x, None)[0] is None


def padded_graphs(n, nodes, seed):
    """Graphs of 2..nodes nodes zero-padded to ``nodes`` (features ``(n, 3, N)``)."""
    g = np.random.default_rng(seed)
    x = np.zeros((n, 3, nodes))
    a = np.zeros((n, nodes, nodes))
    for i in range(n):
        m = int(g.integers(2, nodes + 1))
        x[i, :, :m] = g.standard_normal((3, m))
        upper = np.triu(g.random((m, m)) < 0.5, 1)
        a[i, :m, :m] = upper + upper.T + np.eye(m)
    return torch.from_numpy(x), torch.from_numpy(a)


def test_padded_graphs_at_their_own_sizes_equal_the_padded_evaluation():
    from ntkit.infinite.graph_trim import trims_blank_nodes

    x, a = padded_graphs(7, 12, seed=3)
    y, b = padded_graphs(5, 12, seed=4)
    block = [nk.Aggregate(), nk.Dense(8, 2**0.5), nk.ReLU(), nk.Dense(8, 2**0.5), nk.ReLU()]
    arch = nk.serial(*block, *block, nk.GlobalSumPool(), nk.Dense(1))
    # GlobalAvgPool (a mean over all 12 positions) then Dense(W_std = 12) is the same kernel,
    # but its mean counts the padding, so it is evaluated on the padded graphs as given.
    padded = nk.serial(*block, *block, nk.GlobalAvgPool(), nk.Dense(1, W_std=12.0))
    assert trims_blank_nodes(arch) and not trims_blank_nodes(padded)
    with_bias = nk.serial(nk.Aggregate(), nk.Dense(8, 1.0, 0.1), nk.ReLU(), nk.GlobalSumPool())
    assert not trims_blank_nodes(with_bias)
    for args, kw in (((x,), {"pattern1": a}), ((x, y), {"pattern1": a, "pattern2": b})):
        k, ref = arch.kernel(*args, **kw), padded.kernel(*args, **kw)
        for field in ("nngp", "ntk"):
            torch.testing.assert_close(k.get(field), ref.get(field), rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(k.var1, ref.var1, rtol=1e-12, atol=1e-13)
    for args, kw in (((x,), {"pattern1": a}), ((x[:5], y), {"pattern1": a[:5], "pattern2": b})):
        d, ref = arch.kernel(*args, diagonal=True, **kw), padded.kernel(*args, diagonal=True, **kw)
        torch.testing.assert_close(d.ntk, ref.ntk, rtol=1e-12, atol=1e-13)


def test_dense_before_global_avg_pool_is_applied_after_it():
    """serial's reordering of Dense → GlobalAvgPool (the mean of an affine map of every entry)
    against the same net with an Identity in between (evaluated in the given order)."""
    g = np.random.default_rng(5)
    x = torch.from_numpy(g.standard_normal((4, 3, 5)))
    head = [nk.Conv(6, 3, W_std=1.3, b_std=0.2), nk.ReLU()]
    for dense in (nk.Dense(6, 1.7, 0.4), nk.Dense(6, 1.2, 0.3, parameterization="standard")):
        arch = nk.serial(*head, dense, nk.GlobalAvgPool(), nk.Dense(1))
        ref = nk.serial(*head, dense, nk.Identity(), nk.GlobalAvgPool(), nk.Dense(1))
        for field in ("nngp", "ntk"):
            for diagonal in (False, True):
                torch.testing.assert_close(arch.kernel(x, get=field, diagonal=diagonal),
                                           ref.kernel(x, get=field, diagonal=diagonal),
                                           rtol=1e-12, atol=1e-14)
