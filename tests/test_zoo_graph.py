"""The graph NTK (Aggregate; Du et al. 2019) against a naive NumPy GNTK, and its identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from conv_reference import one_thread
from gntk_reference import gntk

LAYERS = [("aggregate",), ("dense", 2**0.5, 0.1), ("relu",), ("dense", 2**0.5, 0.1), ("relu",),
          ("aggregate",), ("dense", 2**0.5, 0.1), ("relu",), ("sum",), ("out", 1.0, None)]


def gnn(width: int = 16):
    """The ntkit architecture of ``LAYERS``: Dense on node channels, sum readout."""
    return nk.serial(
        nk.Aggregate(), nk.Dense(width, 2**0.5, 0.1), nk.ReLU(), nk.Dense(width, 2**0.5, 0.1), nk.ReLU(),
        nk.Aggregate(), nk.Dense(width, 2**0.5, 0.1), nk.ReLU(), nk.GlobalSumPool(), nk.Dense(1),
    )


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def graphs(n, nodes, channels=3, seed=0, self_loops_only=False, directed=False):
    """Random graphs with self-loops: features ``(n, C, N)``, patterns ``(n, N, N)``.

    ``directed``: arcs with random positive weights (``A[i, j]``: arc ``i → j``)."""
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, channels, nodes))
    a = np.zeros((n, nodes, nodes))
    for i in range(n):
        if directed:
            a[i] = (g.random((nodes, nodes)) < 0.4) * g.uniform(0.5, 1.5, (nodes, nodes))
        elif not self_loops_only:
            upper = np.triu(g.random((nodes, nodes)) < 0.4, 1)
            a[i] = upper + upper.T
        a[i] += np.eye(nodes)
    return torch.from_numpy(x), torch.from_numpy(a)


@pytest.mark.parametrize("directed", [False, True])
def test_matches_naive_gntk_on_small_random_graphs(directed):
    x, a = graphs(4, 5, seed=1, directed=directed)
    y, b = graphs(3, 5, seed=2, directed=directed)
    ref_nngp, ref_ntk = gntk(list(x.numpy()), list(a.numpy()), LAYERS)
    k = gnn().kernel(x, pattern1=a)
    np.testing.assert_allclose(k.nngp.numpy(), ref_nngp, rtol=1e-12)
    np.testing.assert_allclose(k.ntk.numpy(), ref_ntk, rtol=1e-12)
    cross_nngp, cross_ntk = gntk(list(x.numpy()), list(a.numpy()), LAYERS, list(y.numpy()), list(b.numpy()))
    kc = gnn().kernel(x, y, pattern1=a, pattern2=b)
    np.testing.assert_allclose(kc.ntk.numpy(), cross_ntk, rtol=1e-12)
    np.testing.assert_allclose(kc.nngp.numpy(), cross_nngp, rtol=1e-12)


def test_invariant_to_relabelling_the_nodes_of_one_graph():
    x, a = graphs(4, 6, seed=3)
    k = gnn().kernel(x, pattern1=a)
    perm = torch.from_numpy(np.random.default_rng(4).permutation(6))
    x2, a2 = x.clone(), a.clone()
    x2[1] = x[1][:, perm]
    a2[1] = a[1][perm][:, perm]
    k2 = gnn().kernel(x2, pattern1=a2)
    torch.testing.assert_close(k2.ntk, k.ntk, rtol=1e-12, atol=0)
    torch.testing.assert_close(k2.nngp, k.nngp, rtol=1e-12, atol=0)


def test_self_loops_only_is_the_per_node_mlp_kernel_summed_over_nodes():
    x, a = graphs(3, 4, seed=5, self_loops_only=True)
    k = nk.serial(nk.Aggregate(), nk.Dense(8, 1.3, 0.2), nk.ReLU(), nk.Dense(8, 1.1, 0.1), nk.ReLU(),
                  nk.GlobalSumPool()).kernel(x, pattern1=a)
    nodes = x.permute(0, 2, 1).reshape(12, 3)  # (graph, node) rows
    mlp = nk.serial(nk.Dense(8, 1.3, 0.2), nk.ReLU(), nk.Dense(8, 1.1, 0.1), nk.ReLU()).kernel(nodes)
    for field in ("nngp", "ntk"):
        summed = mlp.get(field).reshape(3, 4, 3, 4).sum(dim=(1, 3))
        torch.testing.assert_close(k.get(field), summed, rtol=1e-12, atol=1e-14)


def test_structural_properties_and_finite_net():
    x, a = graphs(5, 6, seed=6)
    y, b = graphs(3, 6, seed=7)
    arch = gnn()
    k = arch.kernel(x, pattern1=a)
    for field in ("nngp", "ntk"):
        mat = k.get(field)
        torch.testing.assert_close(mat, mat.T, rtol=0, atol=0)
        eig = torch.linalg.eigvalsh(mat)
        assert eig.min() >= -1e-10 * eig.max()
        torch.testing.assert_close(arch.kernel(x, x.clone(), pattern1=a, pattern2=a.clone()).get(field), mat,
                                   rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(arch.kernel(x, pattern1=a, diagonal=True).get(field), mat.diagonal(),
                                   rtol=1e-12, atol=1e-14)
    cross = arch.kernel(x, y, pattern1=a, pattern2=b)
    tiled = arch.kernel(x, y, pattern1=a, pattern2=b, memory_budget=3 * 12 * 8 * 2 * 36 + 1)
    torch.testing.assert_close(tiled.ntk, cross.ntk, rtol=1e-12, atol=1e-14)
    k32 = arch.kernel(x.float(), y.float(), pattern1=a.float(), pattern2=b.float(), dtype=torch.float32)
    assert (k32.ntk.double() - cross.ntk).abs().max() < 1e-4 * cross.ntk.abs().max()
    net = arch.build((3, 6), seed=0)
    assert net(x, pattern=a).shape == (5, 1)


def test_finite_aggregation_is_the_kernel_s_linear_map():
    """Aggregate then a sum readout is linear: the kernel is exactly the Gram of the outputs/C."""
    x, a = graphs(4, 5, seed=9, directed=True)
    arch = nk.serial(nk.Aggregate(), nk.Aggregate(), nk.GlobalSumPool())
    out = arch.build((3, 5), seed=0)(x, pattern=a)
    gram = out @ out.T / 3
    torch.testing.assert_close(arch.kernel(x, pattern1=a, get="nngp"), gram, rtol=1e-12, atol=1e-14)


def test_bad_patterns_raise_clear_errors():
    x, a = graphs(3, 5, seed=8)
    with pytest.raises(nk.NtkitError, match="pattern"):
        gnn().kernel(x)
    with pytest.raises(nk.NtkitError, match="node"):
        gnn().kernel(x, pattern1=a[:, :4, :4])
    with pytest.raises(nk.NtkitError, match="pattern"):
        gnn().kernel(x, pattern1=a[:2])
