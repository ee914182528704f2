"""Window sums of covariances for the convolution and pooling layers.

The geometry (paddings, output sizes) is :mod:`ntkit.spatial`, shared with the finite modules.
:func:`window_sum` is the covariance map of a window: it sums
``t[..., s·p + o − left, ...]`` over ``o``, with the *same* offset ``o`` applied to every axis
of a group (a convolution shifts both images of a pair together; Novak et al. 2019,
Arora et al. 2019) and independent offsets for different groups (average pooling of a
full spatial covariance is a box filter over both position axes). Zero-padded positions
contribute 0 and the sum is not renormalized, exactly as a zero-padded finite layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# the shared geometry, re-exported for the layers of this package
from ..spatial import PADDINGS, as_tuple, check_window, expand, geometry

__all__ = ["PADDINGS", "as_tuple", "check_window", "expand", "geometry", "window_sum"]


def window_sum(
    t: torch.Tensor,
    groups: Sequence[Sequence[int]],
    n: int,
    k: int,
    s: int,
    padding: str,
) -> torch.Tensor:
    """``Σ_o t[.., s·p + o − left (each axis of one group) ..]`` for each group in ``groups``.

    All axes named in ``groups`` have size ``n`` and become size ``out`` (see
    :func:`geometry`); each group gets its own offset ``o``, summed independently (the
    window sum is separable across groups). Returns a new tensor (never a view of ``t``).
    """
    out, left, _ = geometry(n, k, s, padding)
    for axes in groups:
        t = _window_sum_group(t, tuple(axes), n, k, s, out, left, padding == "circular")
    return t


def _window_sum_group(t, axes, n, k, s, out, left, circular) -> torch.Tensor:
    if circular:
        result = None
        base = torch.arange(out, device=t.device) * s - left
        for o in range(k):
            idx = (base + o) % n
            term = t
            for a in axes:
                term = term.index_select(a, idx)
            result = term if result is None else result.add_(term)
        return result
    full_cover = None
    partial = []
    for o in range(k):
        p0 = max(0, -((o - left) // s))  # first p with s·p + o − left >= 0
        p1 = min(out - 1, (n - 1 + left - o) // s)  # last p with s·p + o − left <= n − 1
        if p1 < p0:
            continue
        start = s * p0 + o - left
        src = slice(start, start + s * (p1 - p0) + 1, s)
        dst = slice(p0, p1 + 1)
        if full_cover is None and p0 == 0 and p1 == out - 1:
            full_cover = src
        else:
            partial.append((dst, src))
    index = [slice(None)] * t.ndim
    if full_cover is not None:
        for a in axes:
            index[a] = full_cover
        result = t[tuple(index)].clone(memory_format=torch.contiguous_format)
    else:
        shape = list(t.shape)
        for a in axes:
            shape[a] = out
        result = t.new_zeros(shape)
    for dst, src in partial:
        dst_index = [slice(None)] * t.ndim
        src_index = [slice(None)] * t.ndim
        for a in axes:
            dst_index[a], src_index[a] = dst, src
        result[tuple(dst_index)] += t[tuple(src_index)]
    return result
