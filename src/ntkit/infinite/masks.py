"""Masks of absent positions (variable-length sequences, padded images).

``arch.kernel(x1, x2, mask1=..., mask2=...)`` takes boolean ``(n, *S)`` masks (``(n, T)`` for
sequences ``(n, C, T)``, ``(n, H, W)`` for images), ``True`` = the position is absent. As with
neural-tangents' ``mask_constant`` mechanism, absent positions are excluded from attention
(as keys), from pooling and from normalization over positions; position-wise layers (Dense,
activations, LayerNorm over channels, Dropout, FanIn*) pass them through, and the entries
of a spatial output at absent positions are zero. Layers that cannot honour a mask
(``Conv``, ``AvgPool``, ``Flatten``, ...) raise. Masks travel with the examples as the
``"mask"`` entry of the kernel state's per-example side information.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ShapeError
from ..kernel import Kernel


def as_mask(mask: Any, x: torch.Tensor, name: str) -> torch.Tensor:
    """``mask`` as a bool tensor of shape ``(n, *S)`` on ``x``'s device, checked.

    Raises ShapeError for flat inputs, a wrong shape or dtype, or an example with every
    position absent.
    """
    spatial = tuple(x.shape[2:])
    if not spatial:
        raise ShapeError(
            f"{name} marks absent positions, but the inputs {tuple(x.shape)} are flat (n, d) with no "
            "positions; masks need sequences (n, C, T) or images (n, C, H, W)"
        )
    if isinstance(mask, torch.Tensor):
        t = mask.to(x.device)
    else:
        t = torch.as_tensor(np.asarray(mask), device=x.device)
    if t.dtype != torch.bool:
        if t.is_floating_point() or t.is_complex() or not bool(((t == 0) | (t == 1)).all()):
            raise ShapeError(f"{name} must be boolean (True = position absent), got dtype {t.dtype}")
        t = t.bool()
    want = (x.shape[0], *spatial)
    if tuple(t.shape) != want:
        raise ShapeError(
            f"{name} must have shape (n, *spatial) = {want} for inputs {tuple(x.shape)} "
            f"(one flag per example and position, True = absent), got {tuple(t.shape)}"
        )
    full = t.reshape(t.shape[0], -1).all(1)
    if bool(full.any()):
        i = int(full.nonzero()[0])
        raise ShapeError(
            f"{name} marks every position of example {i} absent; leave at least one position "
            "present (or drop that example)"
        )
    return t


def unsupported_layer(layer):
    """The first layer of ``layer`` (walking serial/parallel) that cannot honour masks, or None."""
    children = getattr(layer, "layers", None)
    if isinstance(children, tuple):
        for child in children:
            bad = unsupported_layer(child)
            if bad is not None:
                return bad
        return None
    return None if getattr(layer, "handles_masks", False) else layer


def remask(kernel: Kernel, mask1: torch.Tensor, mask2: torch.Tensor) -> Kernel:
    """Zero the entries of a spatial output kernel at absent positions.

    Shapes: ``nngp``/``ntk`` ``(n1, n2, *S)``, ``(n1, n2, *S, *S)``, or with ``diagonal``
    ``(n, *S)``/``(n, *S, *S)``; masks ``(n, *S)``. Flat outputs are returned unchanged.
    """
    spatial = tuple(mask1.shape[1:])
    k = len(spatial)
    present1, present2 = ~mask1, ~mask2
    batch = 1 if kernel.diagonal else 2
    ref = kernel.ntk if kernel.ntk is not None else kernel.nngp
    rest = ref.ndim - batch
    if rest == 0 or tuple(ref.shape[batch:batch + k]) != spatial:
        return kernel
    if kernel.diagonal:
        a = present1.reshape(*present1.shape, *(1,) * (rest - k))
        if rest == k:
            keep = a & present2
        else:
            keep = a & present2.reshape(present2.shape[0], *(1,) * k, *spatial)
    else:
        a = present1.reshape(present1.shape[0], 1, *spatial, *(1,) * (rest - k))
        if rest == k:
            keep = a & present2.reshape(1, *present2.shape)
        else:
            keep = a & present2.reshape(1, present2.shape[0], *(1,) * k, *spatial)

    def zero(t):
        return None if t is None else torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device))

    var1 = torch.where(present1, kernel.var1, 0.0) if kernel.var1.shape == mask1.shape else kernel.var1
    var2 = torch.where(present2, kernel.var2, 0.0) if kernel.var2.shape == mask2.shape else kernel.var2
    return Kernel(nngp=zero(kernel.nngp), ntk=zero(kernel.ntk), var1=var1, var2=var2,
                  diagonal=kernel.diagonal)
