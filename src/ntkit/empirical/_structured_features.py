"""Per-block features of the structured path and the kernel block of two feature blocks.

Each term of a model (:mod:`._structured_plan`) keeps, for a block of examples, either its
per-example Jacobian ``J (b, o, G·C·K)`` (stored form ``"jac"``: when that is smaller than
the layer's input and cotangents) or the layer's input and cotangents (stored form ``"ag"``:
the raw input of a single-use layer, unfolded into patches only when used, or the patches
of a shared one; cotangents ``(b, o, G, C, P)``). A stored ``"ag"`` term is contracted either
as Grams (:func:`add_gram`: ``Σ_{p,q} <ã_p, ã'_q> Σ_c g[o, c, p] g'[o', c, q]``) or through
its per-layer Jacobian, formed a few output channels at a time when the pair is computed
(:func:`jacobian_chunks`), so that neither ``b × o × |W|`` nor the patches of a whole block
are held at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .._fast_matmul import matmul
from ._layer_adapters import Geometry, NotApplicableError, cotangents, patches
from .jacobian import Accumulator


def term_features(geometries, term, inputs, grads, form, keep=None):
    """Features of one term from captured inputs and cotangents ``(o, b, *z)`` per call.

    ``form="gram"``: ``(patches (b, G, P, K), g (b, o, G, C, P))``; ``"jac"``: ``(b, o, G·C·K)``
    (biases and normalization scales: ``(b, o, G·C)``). ``keep``: one example only.
    """
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
        a_parts.append(with_bias(patches(x, geo), term, geo))
        g_parts.append(g)
    if bias_only:
        g = sum(g_parts[1:], g_parts[0])
        term.shape.update(G=g.shape[2], C=g.shape[3], K=1, P=1)
        return g.reshape(g.shape[0], g.shape[1], -1)
    if len({a.shape[1:2] + a.shape[3:] for a in a_parts}) > 1:
        raise NotApplicableError(f"the uses of {term.names[0]!r} have different shapes")
    a = torch.cat(a_parts, dim=2) if len(a_parts) > 1 else a_parts[0]
    g = torch.cat(g_parts, dim=4) if len(g_parts) > 1 else g_parts[0]
    G, C, P = g.shape[2:]
    term.shape.update(G=G, C=C, K=a.shape[3], P=P)
    if form == "gram":
        return a, g
    return form_jacobian(a, g)


def with_bias(a: torch.Tensor, term, geo: Geometry) -> torch.Tensor:
    """Patches with the constant bias column ``s_b`` appended for an affine term."""
    if term.kind != "affine":
        return a
    return torch.cat([a, a.new_full((*a.shape[:3], 1), geo.b_scale)], dim=3)


def form_jacobian(a: torch.Tensor, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``J[i, o, (G, C, K)] = Σ_p g[i, o, G, C, p] a[i, G, p, K]``: ``(b, o, G·C·K)``.

    ``out``: a contiguous ``(b, o, G·C·K)`` tensor to write it into (reused memory: a fresh
    Jacobian of tens of MB is page-faulted in at every call).
    """
    b, o, G, C, P = g.shape
    K = a.shape[3]
    lhs, rhs = g.transpose(1, 2).reshape(b * G, o * C, P), a.reshape(b * G, P, K)
    if out is not None and G == 1:
        torch.bmm(lhs, rhs, out=out.view(b, o * C, K))
        return out
    j = torch.bmm(lhs, rhs).view(b, G, o, C, K).transpose(1, 2).reshape(b, o, G * C * K)
    return j if out is None else out.copy_(j)


class Stored:
    """One ``"ag"`` term of a feature block: the layer input (raw, or patches) and cotangents.

    Attributes:
        a: the raw input ``(b, ...)`` of the term's one use (``geo`` set) or its patches
            ``(b, G, P, K)`` (``geo`` is ``None``; a layer used several times).
        g: cotangents ``(b, o, G, C, P)``.
        geo, term: the layer geometry and the term (for unfolding raw inputs).
    """

    __slots__ = ("a", "g", "geo", "term")

    def __init__(self, a: torch.Tensor, g: torch.Tensor, geo: Geometry | None, term) -> None:
        self.a, self.g, self.geo, self.term = a, g, geo, term

    def __len__(self) -> int:
        return self.g.shape[0]

    def slice(self, start: int, stop: int) -> Stored:
        return Stored(self.a[start:stop], self.g[start:stop], self.geo, self.term)

    def patches(self, start: int = 0, stop: int | None = None, bias: bool = True) -> torch.Tensor:
        """Scaled patches ``(stop - start, G, P, K)`` (the bias column included unless
        ``bias=False``, for a term with its raw input: ``geo`` set)."""
        a = self.a[start:stop]
        if self.geo is None:
            return a
        a = patches(a, self.geo)
        return with_bias(a, self.term, self.geo) if bias else a


def store_features(geometries, term, inputs, grads, store: str):
    """A term's stored features for a block: ``("jac", J)`` or ``("ag", Stored)``."""
    if store == "jac" or term.kind in ("bias", "scale"):
        return "jac", term_features(geometries, term, inputs, grads, "jac")
    if len(term.uses) == 1:
        m, c = term.uses[0]
        g = cotangents(grads[m][c], geometries[m])
        return "ag", Stored(inputs[m][c], g, geometries[m], term)
    a, g = term_features(geometries, term, inputs, grads, "gram")
    return "ag", Stored(a.contiguous(), g, None, term)


def slice_features(f: tuple, start: int, stop: int) -> tuple:
    """The features of examples ``start:stop`` of a block (every tensor is batch-first)."""
    _, terms = f
    return stop - start, [(store, d[start:stop] if store == "jac" else d.slice(start, stop))
                          for store, d in terms]


def jacobian_chunks(s: Stored, limit: int, scratch: list | None = None,
                    rows: int | None = None, flat: bool = False) -> Iterator[torch.Tensor]:
    """The per-example Jacobian of an ``"ag"`` term, a few output channels at a time:
    ``(b, o, G·c·K)`` pieces whose entries, over all pieces, are those of the whole Jacobian.

    Each piece holds at most about ``limit`` bytes; patches are unfolded for groups of
    examples of at most ``limit / 4`` bytes. ``scratch``: a list holding one flat tensor
    that the pieces are written into (grown when too small; shared by the terms of a pair,
    so each piece is valid until the next one is made). ``rows``: the examples the channel
    count is sized for (default ``b``; the larger of two blocks whose pieces are paired, so
    that both are cut at the same channels).

    ``flat=True`` (for sums over outputs: ``trace`` kernels, diagonals): pieces ``(b, F)``
    whose entries, over all pieces, are those of the Jacobian in some order that depends on
    the term only (so pieces of two blocks pair up); a dense-like layer's cotangents kept
    channels last (:func:`channels_last`) then give ``Jᵀ = ãᵀ g`` as one product per
    example, ``(K, o·C)``, with no transposed copy of the cotangents.
    """
    b, o, G, C, P = s.g.shape
    K = s.term.shape["K"]
    item = s.g.element_size()
    if flat and G == 1 and s.geo is not None and channels_last(s.geo) and s.geo.kind != "embedding":
        yield from _transposed_chunks(s, limit, [] if scratch is None else scratch, rows)
        return
    per_channel = max(b, rows or 0) * o * G * K * item
    channels = max(1, min(C, limit // max(per_channel, 1)))
    group = max(1, min(b, (limit // 4) // max(G * P * K * item, 1)))
    whole = group >= b
    lookup = s.geo is not None and s.geo.kind == "embedding"
    cached = s.patches() if whole and channels < C and not lookup else None
    scratch = [] if scratch is None else scratch
    for c0 in range(0, C, channels):
        c1 = min(C, c0 + channels)
        need = b * o * G * (c1 - c0) * K
        if not scratch or scratch[0].numel() < need:
            scratch[:] = [s.g.new_empty(need)]
        piece = scratch[0][:need].view(b, o, G * (c1 - c0) * K)
        if lookup:  # one-hot patches: the Jacobian is a scatter of cotangents, not a product
            lookup_jacobian(s.a, s.g[:, :, :, c0:c1], s.geo, out=piece)
            yield piece
            continue
        for e0 in range(0, b, group):
            e1 = min(b, e0 + group)
            a = cached if cached is not None else s.patches(e0, e1)
            form_jacobian(a, s.g[e0:e1, :, :, c0:c1], out=piece[e0:e1])
        yield piece


def channels_last(geo: Geometry) -> bool:
    """Whether a layer's cotangents come channels last, ``(o, b, P, C)`` (dense layers,
    embeddings, LayerNorm): a block keeps them in that memory order (:func:`block_cotangents`)."""
    return geo.kind in ("linear", "embedding") or bool(geo.channels_last)


def block_cotangents(buffer: torch.Tensor, shape: tuple[int, ...], geo: Geometry | None) -> torch.Tensor:
    """A block's cotangents ``(b, o, G, C, P)`` viewed on a flat ``buffer``: stored as
    ``(b, P, o, G, C)`` for :func:`channels_last` layers (filled from micro-batches by
    copies of contiguous channel rows, and read by :func:`_transposed_chunks` as one
    ``(P, o·C)`` matrix per example), else as laid out."""
    if geo is None or not channels_last(geo):
        return buffer.view(shape)
    b, o, G, C, P = shape
    return buffer.view(b, P, o, G, C).permute(0, 2, 3, 4, 1)


def _transposed_chunks(s: Stored, limit: int, scratch: list, rows: int | None) -> Iterator[torch.Tensor]:
    """:func:`jacobian_chunks` with ``flat=True`` for a dense-like layer: pieces
    ``Jᵀ[i, k0:k1, (o, C)] = Σ_p ã[i, p, k] g[i, o, C, p]`` over rows ``k`` of the patches
    (the bias column included), sized for ``max(b, rows)`` examples like the channel pieces."""
    b, o, _, C, P = s.g.shape
    K = s.term.shape["K"]
    item = s.g.element_size()
    per_row = max(b, rows or 0) * o * C * item
    ks = max(1, min(K, limit // max(per_row, 1)))
    group = max(1, min(b, (limit // 4) // max(P * K * item, 1)))
    g = s.g.permute(0, 4, 1, 2, 3).reshape(b, P, o * C)  # a view for block_cotangents' layout
    k_w = K - 1 if s.term.kind == "affine" else K  # rows of the weight; then the bias row
    for k0 in range(0, K, ks):
        k1 = min(K, k0 + ks)
        need = b * (k1 - k0) * o * C
        if not scratch or scratch[0].numel() < need:
            scratch[:] = [s.g.new_empty(need)]
        piece = scratch[0][:need].view(b, k1 - k0, o * C)
        for e0 in range(0, b, group):
            e1 = min(b, e0 + group)
            if k0 < k_w:  # the weight rows: a product with the raw patches (no bias column)
                a = s.patches(e0, e1, bias=False)[:, 0, :, k0 : min(k1, k_w)]  # (e, P, k)
                torch.bmm(a.transpose(1, 2), g[e0:e1], out=piece[e0:e1, : min(k1, k_w) - k0])
            if k1 > k_w:  # the bias row: s_b Σ_p g[i, p, (o, C)]
                row = piece[e0:e1, k_w - k0]
                torch.sum(g[e0:e1], dim=1, out=row)
                if s.geo.b_scale != 1.0:
                    row *= s.geo.b_scale
        yield piece.view(b, -1)


def lookup_jacobian(ids: torch.Tensor, g: torch.Tensor, geo: Geometry, out: torch.Tensor) -> torch.Tensor:
    """An embedding's ``J[i, o, (c, v)] = Σ_p g[i, o, c, p] [ids[i, p] = v]`` (what
    :func:`form_jacobian` computes from one-hot patches) by ``scatter_add``, into ``out``
    ``(b, o, c·V)``; the padding row gets no gradient."""
    b, o, _, c, P = g.shape
    j = out.view(b, o, c, geo.vocab).zero_()
    index = ids.reshape(b, 1, 1, P).long().expand(b, o, c, P)
    j.scatter_add_(3, index, g.reshape(b, o, c, P))
    if geo.padding_idx is not None:
        j[..., geo.padding_idx] = 0
    return out


def gram_rows(s1: Stored, s2: Stored, output: str, n_out: int, limit: int) -> int:
    """Examples per side of a Gram sub-block whose temporaries stay under ``limit`` bytes."""
    t = s1.term.shape
    G, P, K, C = t["G"], t["P"], t["K"], t["C"]
    extra = {"trace": 1, "diagonal": n_out, "full": n_out * n_out}[output]
    per_pair = G * P * P * (3 + extra) * s1.g.element_size()
    per_example = G * P * (K + n_out * C) * s1.g.element_size()
    rows = max(1, math.isqrt(max(limit // max(per_pair, 1), 1)))
    return max(1, min(rows, limit // max(4 * per_example, 1)))


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


def self_gram_diagonal(s: Stored) -> torch.Tensor:
    """``(b,)``: ``Σ_{p,q} <ã_p, ã_q> Σ_{o,c} g[o,c,p] g[o,c,q]`` per example."""
    a, g = s.patches(), s.g
    b, G, P = a.shape[0], a.shape[1], a.shape[2]
    gram_a = torch.bmm(a.reshape(b * G, P, -1), a.reshape(b * G, P, -1).transpose(1, 2))
    h = g.transpose(1, 2).reshape(b * G, -1, P)
    gram_g = torch.bmm(h.transpose(1, 2), h)
    return (gram_a * gram_g).reshape(b, -1).sum(1)
