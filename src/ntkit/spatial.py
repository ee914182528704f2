"""Padding geometry of windowed layers, shared by finite and infinite-width layers.

One spatial axis of size ``n``, window ``k``, stride ``s``: output position ``p`` reads the
input positions ``s·p + o − left`` for ``o = 0..k−1``.

- ``"valid"``: no padding, ``out = ⌊(n − k)/s⌋ + 1`` (``k > n`` is an error);
- ``"same"``: ``out = ⌈n/s⌉``, padded by ``max((out − 1)·s + k − n, 0)`` positions in all,
  ``left`` = half of that rounded down (torch's ``padding="same"`` for stride 1, TensorFlow's
  ``SAME`` in general); out-of-range positions hold zeros;
- ``"circular"``: the same geometry as ``"same"`` with positions taken modulo ``n``.

The finite modules (:mod:`ntkit.finite.conv`, :mod:`ntkit.finite.pooling`) pad their inputs
with this geometry and the infinite-width layers (:mod:`ntkit.infinite.conv`,
:mod:`ntkit.infinite.pooling`) sum covariances over the same windows, so that both describe
one network.
"""

from __future__ import annotations

from .errors import ParameterError, ShapeError

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


def transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """``(before, after)`` zero padding of the stride-dilated input of a transposed convolution.

    The geometry of ``jax.lax.conv_transpose`` (used by neural-tangents): ``"same"`` gives
    ``n·s`` outputs, ``"valid"`` gives ``n·s + max(k − s, 0)``.
    """
    if padding == "same":
        total = k + s - 2
        before = k - 1 if s > k - 1 else -(-total // 2)
    else:
        total = k + s - 2 + max(k - s, 0)
        before = k - 1
    return before, total - before
