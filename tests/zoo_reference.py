"""Naive position-by-position kernels of issue 17's spatial layers (NumPy, no ntkit code).

Extends :func:`conv_reference.reference_kernel` with layer kinds written here with explicit
index arithmetic, on the full ``(n, n, P, P)`` covariance of all pairs (small images only):

- ``("sumpool", kernel, stride, padding)``; ``("avgpool_edges", kernel, stride, padding)``
  (border windows divided by the number of positions they cover);
- ``("convT", kernel, stride, padding, W_std, b_std)``: the input dilated by the stride and
  padded as ``jax.lax.conv_transpose`` does, then a stride-1 window;
- ``("convlocal", kernel, stride, padding, W_std, b_std)``;
- ``("resize", shape, method)``: ``jax.image.resize``'s half-pixel linear (antialiased
  when shrinking) or nearest sampling, weights written out per output position;
- ``("gsp",)``: sum over all position pairs.
"""

from __future__ import annotations

import math

import numpy as np

from conv_reference import _conv, _geometry, _pool, _positions, _relu


def _counts(shape, kernel, stride, padding):
    """Number of in-image positions of each output window (the edge-normalized divisor)."""
    out_shape, left = _geometry(shape, kernel, stride, padding)
    counts = []
    for p in _positions(out_shape):
        total = 0
        for o in _positions(kernel):
            inside = True
            for pi, oi, s, lft, n in zip(p, o, stride, left, shape):
                i = s * pi + oi - lft
                if padding != "circular" and not 0 <= i < n:
                    inside = False
            total += inside
        counts.append(total)
    return np.array(counts, dtype=np.float64)


def _transpose_pads(k, s, padding):
    if padding == "same":
        total = k + s - 2
        before = k - 1 if s > k - 1 else math.ceil(total / 2)
    else:
        total = k + s - 2 + max(k - s, 0)
        before = k - 1
    return before, total - before


def _conv_transpose(K, shape, kernel, stride, padding):
    """``Σ_o K[src(p, o), src(q, o)]`` with ``src = (p + o − before)/s`` when an integer in range."""
    pads = [_transpose_pads(k, s, padding) for k, s in zip(kernel, stride)]
    dilated = [(n - 1) * s + 1 for n, s in zip(shape, stride)]
    out_shape = tuple(m + b + a - k + 1 for m, (b, a), k in zip(dilated, pads, kernel))
    index = {p: i for i, p in enumerate(_positions(shape))}

    def source(p, o):
        src = []
        for pi, oi, s, (before, _), n in zip(p, o, stride, pads, shape):
            j = pi + oi - before
            if j < 0 or j % s or j // s >= n:
                return None
            src.append(j // s)
        return tuple(src)

    pout = _positions(out_shape)
    new = np.zeros((*K.shape[:-2], len(pout), len(pout)))
    for a, p in enumerate(pout):
        for b, q in enumerate(pout):
            for o in _positions(kernel):
                sp, sq = source(p, o), source(q, o)
                if sp is not None and sq is not None:
                    new[..., a, b] += K[..., index[sp], index[sq]]
    return new, out_shape


def _resize_weights(n_in, n_out, method):
    """Row ``i``: the weight of every input position for output ``i``."""
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * n_in / n_out - 0.5
        if method == "nearest":
            w[i, min(math.floor((i + 0.5) * n_in / n_out), n_in - 1)] = 1.0
            continue
        width = min(1.0, n_out / n_in)
        for j in range(n_in):
            w[i, j] = max(0.0, 1.0 - abs(j - centre) * width)
        w[i] /= w[i].sum()
    return w


def _resize(K, shape, new_shape, method):
    new_shape = tuple(n if m == -1 else m for n, m in zip(shape, new_shape))
    weights = [_resize_weights(n, m, method) for n, m in zip(shape, new_shape)]
    pin, pout = _positions(shape), _positions(new_shape)

    def weight(p, a):
        return math.prod(w[pi, ai] for w, pi, ai in zip(weights, p, a))

    new = np.zeros((*K.shape[:-2], len(pout), len(pout)))
    for x, p in enumerate(pout):
        for y, q in enumerate(pout):
            for a, pa in enumerate(pin):
                wa = weight(p, pa)
                if wa == 0:
                    continue
                for b, pb in enumerate(pin):
                    wb = weight(q, pb)
                    if wb:
                        new[..., x, y] += wa * wb * K[..., a, b]
    return new, new_shape


def zoo_kernel(layers, x):
    """NNGP and NTK of ``x (n, C, *S)`` through ``layers`` (conv_reference kinds plus the above)."""
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape[:2]
    shape = x.shape[2:]
    flat = x.reshape(n, c, -1)
    nngp = np.einsum("icp,jcq->ijpq", flat, flat) / c
    ntk = np.zeros_like(nngp)
    spatial = True
    for layer in layers:
        kind = layer[0]
        if kind in ("conv", "convlocal", "convT"):
            _, kernel, stride, padding, w, b = layer
            size = math.prod(kernel)
            step = _conv_transpose if kind == "convT" else _conv
            summed, new_shape = step(nngp, shape, kernel, stride, padding)
            summed_ntk, _ = step(ntk, shape, kernel, stride, padding)
            nngp = w**2 * summed / size + (b or 0.0) ** 2
            ntk = nngp + w**2 * summed_ntk / size
            if kind == "convlocal":
                eye = np.eye(nngp.shape[-1])
                nngp, ntk = nngp * eye, ntk * eye
            shape = new_shape
        elif kind in ("sumpool", "avgpool_edges"):
            _, kernel, stride, padding = layer
            new_nngp, new_shape = _pool(nngp, shape, kernel, stride, padding)
            new_ntk, _ = _pool(ntk, shape, kernel, stride, padding)
            if kind == "avgpool_edges":
                counts = _counts(shape, kernel, stride, padding)
                divisor = np.outer(counts, counts)
                new_nngp, new_ntk = new_nngp / divisor, new_ntk / divisor
            nngp, ntk, shape = new_nngp, new_ntk, new_shape
        elif kind == "resize":
            nngp, new_shape = _resize(nngp, shape, layer[1], layer[2])
            ntk, _ = _resize(ntk, shape, layer[1], layer[2])
            shape = new_shape
        elif kind == "relu":
            nngp, ntk = _relu(nngp, ntk)
        elif kind in ("gap", "gsp"):
            reduce = np.mean if kind == "gap" else np.sum
            nngp, ntk, spatial = reduce(nngp, (-2, -1)), reduce(ntk, (-2, -1)), False
        elif kind == "flatten":
            nngp = np.diagonal(nngp, axis1=-2, axis2=-1).mean(-1)
            ntk = np.diagonal(ntk, axis1=-2, axis2=-1).mean(-1)
            spatial = False
        elif kind == "dense":
            _, w, b = layer
            assert not spatial
            nngp = w**2 * nngp + (b or 0.0) ** 2
            ntk = nngp + w**2 * ntk
        else:  # pragma: no cover
            raise ValueError(kind)
    return nngp, ntk


def zoo_arch(layers, channels: int = 16, readout: int = 1):
    """The ntkit architecture of a :func:`zoo_kernel` spec."""
    import ntkit as nk

    out = []
    for layer in layers:
        kind = layer[0]
        if kind == "conv":
            out.append(nk.Conv(channels, *layer[1:4], W_std=layer[4], b_std=layer[5]))
        elif kind == "convlocal":
            out.append(nk.ConvLocal(channels, *layer[1:4], W_std=layer[4], b_std=layer[5]))
        elif kind == "convT":
            out.append(nk.ConvTranspose(channels, *layer[1:4], W_std=layer[4], b_std=layer[5]))
        elif kind == "sumpool":
            out.append(nk.SumPool(*layer[1:4]))
        elif kind == "avgpool_edges":
            out.append(nk.AvgPool(*layer[1:4], normalize_edges=True))
        elif kind == "resize":
            out.append(nk.ImageResize(layer[1], layer[2]))
        elif kind == "relu":
            out.append(nk.ReLU())
        elif kind == "gap":
            out.append(nk.GlobalAvgPool())
        elif kind == "gsp":
            out.append(nk.GlobalSumPool())
        elif kind == "flatten":
            out.append(nk.Flatten())
        elif kind == "dense":
            out.append(nk.Dense(readout, W_std=layer[1], b_std=layer[2]))
    return nk.serial(*out)


__all__ = ["zoo_arch", "zoo_kernel"]
