"""A naive graph neural tangent kernel (Du et al. 2019, Sec. 4), NumPy loops over node pairs.

For two graphs ``G, G'`` with node features ``h (C, N)``, ``h' (C, N')`` and patterns ``A, A'``
(``A[i, j]``: weight of the arc ``i → j``), the recursion keeps the node-by-node covariances
``Σ(G, G')``, ``Σ(G, G)``, ``Σ(G', G')`` and the NTK ``Θ(G, G')``:

- input: ``Σ[u, u'] = <h_u, h'_u'>/C``, ``Θ = 0``;
- AGGREGATE: ``Σ[u, u'] ← Σ_{v, v'} A[v, u]·Σ[v, v']·A'[v', u']`` (the same for ``Θ``);
- a fully-connected layer on each node (``c_σ = W_std²``): ``Σ ← W²Σ + b²``, ``Θ ← Σ + W²Θ``;
- ReLU: ``θ = arccos(Σ[u, u']/√(Σ_G[u, u]·Σ_G'[u', u']))``,
  ``Σ ← √(Σ_G[u, u] Σ_G'[u', u'])·(sin θ + (π − θ) cos θ)/(2π)``, ``Θ ← Θ·(π − θ)/(2π)``;
- READOUT (sum): ``Σ_{u, u'}``.
"""

from __future__ import annotations

import math

import numpy as np


def _relu(s12, s11, s22, t12):
    out_s, out_t = np.zeros_like(s12), np.zeros_like(t12)
    for u in range(s12.shape[0]):
        for v in range(s12.shape[1]):
            norm = math.sqrt(s11[u, u] * s22[v, v])
            rho = min(1.0, max(-1.0, s12[u, v] / norm))
            theta = math.acos(rho)
            out_s[u, v] = norm * (math.sin(theta) + (math.pi - theta) * math.cos(theta)) / (2 * math.pi)
            out_t[u, v] = t12[u, v] * (math.pi - theta) / (2 * math.pi)
    return out_s, out_t


def _aggregate(k, a, b):
    out = np.zeros((a.shape[1], b.shape[1]))
    for u in range(a.shape[1]):
        for w in range(b.shape[1]):
            out[u, w] = sum(a[v, u] * k[v, x] * b[x, w] for v in range(a.shape[0]) for x in range(b.shape[0]))
    return out


def gntk_pair(h1, a1, h2, a2, layers):
    """``(nngp, ntk)`` of one pair of graphs through ``layers``.

    ``layers``: ``("aggregate",)``, ``("dense", W_std, b_std)``, ``("relu",)``, ``("sum",)``,
    ``("out", W_std, b_std)`` (a Dense on the pooled features).
    """
    c = h1.shape[0]
    s12, s11, s22 = h1.T @ h2 / c, h1.T @ h1 / c, h2.T @ h2 / c
    t12 = np.zeros_like(s12)
    t11, t22 = np.zeros_like(s11), np.zeros_like(s22)
    for layer in layers:
        kind = layer[0]
        if kind == "aggregate":
            s12, t12 = _aggregate(s12, a1, a2), _aggregate(t12, a1, a2)
            s11, s22 = _aggregate(s11, a1, a1), _aggregate(s22, a2, a2)
        elif kind in ("dense", "out"):
            w, b = layer[1], layer[2] or 0.0
            s12, s11, s22 = w * w * s12 + b * b, w * w * s11 + b * b, w * w * s22 + b * b
            t12 = s12 + w * w * t12
        elif kind == "relu":
            new12, t12 = _relu(s12, s11, s22, t12)
            s11, _ = _relu(s11, s11, s11, t11)
            s22, _ = _relu(s22, s22, s22, t22)
            s12 = new12
        elif kind == "sum":
            s12, t12 = np.array([[s12.sum()]]), np.array([[t12.sum()]])
            s11, s22 = np.array([[s11.sum()]]), np.array([[s22.sum()]])
        else:  # pragma: no cover
            raise ValueError(kind)
    return float(s12.sum()), float(t12.sum())


def gntk(features, patterns, layers, features2=None, patterns2=None):
    """``(n1, n2)`` NNGP and NTK matrices over lists of graphs."""
    f2 = features if features2 is None else features2
    p2 = patterns if patterns2 is None else patterns2
    nngp = np.zeros((len(features), len(f2)))
    ntk = np.zeros_like(nngp)
    for i, (h1, a1) in enumerate(zip(features, patterns)):
        for j, (h2, a2) in enumerate(zip(f2, p2)):
            pair = (np.asarray(h1), np.asarray(a1), np.asarray(h2), np.asarray(a2))
            nngp[i, j], ntk[i, j] = gntk_pair(*pair, layers)
    return nngp, ntk
