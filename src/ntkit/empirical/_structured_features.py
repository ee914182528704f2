"""Per-block features of the structured path and the kernel block of two feature blocks.

Each term of a model (:mod:`._structured_plan`) becomes, for a block of examples, either its
input patches and cotangents (the Gram form) or its per-example Jacobian; :func:`add_gram` adds
``Σ_{p,q} <ã_p, ã'_q> Σ_c g[o, c, p] g'[o', c, q]`` (:mod:`ntkit.empirical.structured`) to a
kernel block.
"""

from __future__ import annotations

import torch

from .._fast_matmul import matmul
from ._layer_adapters import NotApplicableError, cotangents, patches
from .jacobian import Accumulator


def term_features(geometries, term, inputs, grads, form, keep=None):
    """Features of one term from captured inputs and cotangents ``(o, b, *z)`` per call."""
    a_parts, g_parts = [], []
    bias_only = term.kind in ("bias", "scale")
    for m, c in term.uses:
        geo = geometries[m]
        g = cotangents(grads[m][c] if keep is None else grads[m][c][:, keep : keep + 1], geo)
        if term.kind == "scale":  # Σ_p g[o, c, p] x̂[c, p]
            x = inputs[m][c] if keep is None else inputs[m][c][keep : keep + 1]
            xhat = geo.normalize(x)
            g_parts.append(torch.einsum("iogcp,icp->iogc", g, xhat))
            continue
        if bias_only:
            g_parts.append(g.sum(-1) * geo.b_scale)
            continue
        x = inputs[m][c] if keep is None else inputs[m][c][keep : keep + 1]
        a = patches(x, geo)
        if term.kind == "affine":
            ones = a.new_full((*a.shape[:3], 1), geo.b_scale)
            a = torch.cat([a, ones], dim=3)
        a_parts.append(a)
        g_parts.append(g)
    if bias_only:
        g = sum(g_parts[1:], g_parts[0])
        term.shape.update(G=g.shape[2], C=g.shape[3], K=1, P=1)
        return g.reshape(g.shape[0], g.shape[1], -1)
    if len({a.shape[1:2] + a.shape[3:] for a in a_parts}) > 1:
        raise NotApplicableError(f"the uses of {term.names[0]!r} have different shapes")
    a = torch.cat(a_parts, dim=2) if len(a_parts) > 1 else a_parts[0]
    g = torch.cat(g_parts, dim=4) if len(g_parts) > 1 else g_parts[0]
    b, o, G, C, P = g.shape
    term.shape.update(G=G, C=C, K=a.shape[3], P=P)
    if form == "gram":
        return a, g
    K = a.shape[3]
    j = torch.bmm(g.transpose(1, 2).reshape(b * G, o * C, P), a.reshape(b * G, P, K))
    return j.view(b, G, o, C, K).transpose(1, 2).reshape(b, o, G * C * K)


def slice_features(f: tuple, start: int, stop: int) -> tuple:
    """The features of examples ``start:stop`` of a block (every tensor is batch-first)."""
    _, terms = f
    return stop - start, [(form, d[start:stop] if form == "jac" else tuple(t[start:stop] for t in d))
                          for form, d in terms]


def add_gram(acc: Accumulator, a1, g1, a2, g2) -> None:
    """Add ``Σ_{p,q} <a1_p, a2_q> Σ_c g1[o, c, p] g2[o', c, q]`` (module docstring) to ``acc``.

    ``a (b, G, P, K)``, ``g (b, o, G, C, P)``.
    """
    b1, o, G, C, P = g1.shape
    b2, Q = g2.shape[0], g2.shape[4]
    K = a1.shape[3]
    if G == 1 and P == 1 and Q == 1:  # dense layer: elementwise product of two Grams
        gram_a = matmul(a1.reshape(b1, K), a2.reshape(b2, K).T)
        h1, h2 = g1.reshape(b1, o, C), g2.reshape(b2, o, C)
        if acc.output == "trace":
            acc.data.addcmul_(gram_a, matmul(h1.reshape(b1, -1), h2.reshape(b2, -1).T))
        elif acc.output == "full":
            gram_g = matmul(h1.reshape(b1 * o, C), h2.reshape(b2 * o, C).T).view(b1, o, b2, o)
            acc.data.addcmul_(gram_g, gram_a[:, None, :, None])
        else:
            acc.data.addcmul_(torch.bmm(h1.transpose(0, 1), h2.permute(1, 2, 0)), gram_a[None])
        return
    gram_a = torch.bmm(a1.transpose(0, 1).reshape(G, b1 * P, K),
                       a2.transpose(0, 1).reshape(G, b2 * Q, K).transpose(1, 2)).view(G, b1, P, b2, Q)
    if acc.output == "trace":
        h1 = g1.permute(2, 0, 4, 1, 3).reshape(G, b1 * P, o * C)
        h2 = g2.permute(2, 0, 4, 1, 3).reshape(G, b2 * Q, o * C)
        gram_g = torch.bmm(h1, h2.transpose(1, 2)).view(G, b1, P, b2, Q)
        acc.data += torch.einsum("gipjq,gipjq->ij", gram_g, gram_a)
    elif acc.output == "full":
        h1 = g1.permute(2, 0, 1, 4, 3).reshape(G, b1 * o * P, C)
        h2 = g2.permute(2, 0, 1, 4, 3).reshape(G, b2 * o * Q, C)
        gram_g = torch.bmm(h1, h2.transpose(1, 2)).view(G, b1, o, P, b2, o, Q)
        acc.data += torch.einsum("giopjrq,gipjq->iojr", gram_g, gram_a)
    else:
        h1 = g1.permute(1, 2, 0, 4, 3).reshape(o * G, b1 * P, C)
        h2 = g2.permute(1, 2, 0, 4, 3).reshape(o * G, b2 * Q, C)
        gram_g = torch.bmm(h1, h2.transpose(1, 2)).view(o, G, b1, P, b2, Q)
        acc.data += torch.einsum("ogipjq,gipjq->oij", gram_g, gram_a)
