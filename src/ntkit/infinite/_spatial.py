"""Spatial bookkeeping shared by the convolution and pooling layers.

Geometry (one spatial axis of size ``n``, window ``k``, stride ``s``): output position ``p``
reads the input positions ``s·p + o − left`` for ``o = 0..k−1``.

- ``"valid"``: no padding, ``out = ⌊(n − k)/s⌋ + 1`` (``k > n`` is an error);
- ``"same"``: ``out = ⌈n/s⌉``, padded by ``max((out − 1)·s + k − n, 0)`` positions in all,
  ``left`` = half of that rounded down (torch's ``padding="same"`` for stride 1, TensorFlow's
  ``SAME`` in general); out-of-range positions hold zeros;
- ``"circular"``: the same geometry as ``"same"`` with positions taken modulo ``n``.

:func:`window_sum` is the covariance map of such a window: it sums
``t[..., s·p + o − left, ...]`` over ``o``, with the *same* offset ``o`` applied to every axis
of a group (a convolution shifts both images of a pair together; Novak et al. 2019,
Arora et al. 2019) and independent offsets for different groups (average pooling of a
full spatial covariance is a box filter over both position axes). Zero-padded positions
contribute 0 and the sum is not renormalized, exactly as a zero-padded finite layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ParameterError, ShapeError

PADDINGS = ("same", "valid", "circular")


def as_tuple(value, name: str) -> tuple[int, ...]:
    """``int`` or tuple of ints >= 1 as a tuple (a 1-tuple is repeated per axis later)."""
    items = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        items = tuple(items)
    except TypeError:
        raise ParameterError(f"{name} must be an int or a tuple of ints >= 1, got {value!r}") from None
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ParameterError(f"{name} must be an int or a tuple of ints >= 1, got {value!r}")
    return tuple(int(v) for v in items)


def expand(values: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Repeat a 1-tuple ``ndim`` times (an int kernel size on ``ndim`` spatial axes)."""
    return values * ndim if len(values) == 1 else values


def geometry(n: int, k: int, s: int, padding: str) -> tuple[int, int, int]:
    """``(out, left, right)`` for one axis; ``right`` may be negative for ``"valid"``.

    The caller has checked ``k <= n`` for ``"valid"``.
    """
    if padding == "valid":
        out = (n - k) // s + 1
        return out, 0, (out - 1) * s + k - n
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def check_window(
    what: str, spatial: tuple[int, ...], kernel: tuple[int, ...], padding: str
) -> None:
    """Raise ShapeError for a ``"valid"`` window larger than the image."""
    if padding == "valid" and any(k > n for k, n in zip(kernel, spatial)):
        raise ShapeError(
            f"{what} window {kernel} is larger than the image {spatial} with padding='valid'; "
            "use padding='same' (or 'circular'), a smaller window, or larger images"
        )


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
