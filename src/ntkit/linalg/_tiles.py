"""Kernel tiles and blocks: the unit of work of the local and the Dask backends (private).

Everything here is a module-level function of plain arguments, so that Dask can ship it
to workers. A *tile* is one call of :func:`ntkit.infinite.engine.kernel_block`; a *block*
is a rectangle of the kernel matrix assembled from tiles of at most ``sub × sub`` pairs
(tiles about cache-sized keep the engine's elementwise passes fast).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ShapeError
from ..infinite.engine import kernel_block


def kernel_tile(arch, a: torch.Tensor, b: torch.Tensor | None, get: str) -> torch.Tensor:
    """``K(a, b)`` for one tile, ``(len(a), len(b))``; ``b=None`` means ``K(a, a)``.

    With ``b=None`` the tile is made exactly symmetric, ``(T + Tᵀ)/2``, as
    :func:`ntkit.infinite.engine.evaluate` does, and each example's pair with itself is
    exact.
    """
    state = kernel_block(arch, a, b, want_ntk=get == "ntk")
    tile = state.ntk if get == "ntk" else state.nngp
    if tile.ndim != 2:
        raise ShapeError(
            f"the architecture's kernel has shape (n1, n2, {', '.join(map(str, tile.shape[2:]))}) "
            "per pair: kernel operators need one number per pair of examples; end the "
            "architecture with a readout (e.g. GlobalAvgPool() or Flatten() and Dense(1))"
        )
    if b is None:
        tile = 0.5 * (tile + tile.T)
    return tile


def compute_block(
    arch,
    a: torch.Tensor,
    b: torch.Tensor | None,
    get: str,
    sub: int,
    pinned: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``K(a, b)`` assembled from tiles of side ``sub``; ``b=None``: the symmetric ``K(a, a)``.

    ``pinned = (rows, cols, values)``: entries of the block overwritten with known exact
    values (an example paired with itself across ``a`` and ``b``; see
    :meth:`ntkit.linalg.KernelOperator.columns`).
    """
    symmetric = b is None
    cols = a if symmetric else b
    ra, rb = a.shape[0], cols.shape[0]
    out = a.new_empty((ra, rb))
    for r0 in range(0, ra, sub):
        r1 = min(ra, r0 + sub)
        for c0 in range(r0 if symmetric else 0, rb, sub):
            c1 = min(rb, c0 + sub)
            if symmetric and c0 == r0:
                out[r0:r1, r0:r1] = kernel_tile(arch, a[r0:r1], None, get)
                continue
            tile = kernel_tile(arch, a[r0:r1], cols[c0:c1], get)
            out[r0:r1, c0:c1] = tile
            if symmetric:
                out[c0:c1, r0:r1] = tile.T
    if pinned is not None and pinned[0].numel():
        out[pinned[0], pinned[1]] = pinned[2].to(out.dtype)
    return out


def pinned_in(
    pinned: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, r0: int, r1: int, c0: int, c1: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The pinned entries inside rows ``[r0, r1)`` and columns ``[c0, c1)``, block-relative."""
    if pinned is None:
        return None
    rows, cols, values = pinned
    keep = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    if not bool(keep.any()):
        return None
    return rows[keep] - r0, cols[keep] - c0, values[keep]


# ------------------------------------------------------------------ Dask task bodies
# NumPy in and out: dask.array chunks are NumPy arrays, and NumPy pickles cheaply.


def _slice(x: np.ndarray, lo: int, hi: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x[lo:hi]))


def block_task(arch, x1, x2, r0, r1, c0, c1, get, sub, pinned) -> np.ndarray:
    """Task: the block ``K[r0:r1, c0:c1]`` as a NumPy array (``x2=None``: symmetric op)."""
    a = _slice(x1, r0, r1)
    if x2 is None and (r0, r1) == (c0, c1):
        b = None
    else:
        b = _slice(x1 if x2 is None else x2, c0, c1)
    pins = None if pinned is None else tuple(torch.from_numpy(p) for p in pinned)
    return compute_block(arch, a, b, get, sub, pinned_in(pins, r0, r1, c0, c1)).numpy()


def identity(value):
    """Task: return its argument (inputs as tasks, so a lost copy is recomputed, not lost)."""
    return value


def transpose_task(block: np.ndarray) -> np.ndarray:
    """Task: a block's transpose (the lower blocks of a symmetric kernel)."""
    return np.ascontiguousarray(block.T)


def block_matvec_task(block: np.ndarray, v: np.ndarray, r0, r1, c0, c1, mode: str):
    """Task: products of one block with ``v``.

    ``mode="forward"``: ``(K_IJ v_J, None)``; ``"both"`` (an upper block of a symmetric
    kernel): ``(K_IJ v_J, K_IJᵀ v_I)``; ``"transpose"``: ``(None, K_IJᵀ v_I)``.
    """
    k = torch.from_numpy(block)
    vt = torch.from_numpy(v)
    forward = (k @ vt[c0:c1]).numpy() if mode != "transpose" else None
    backward = (k.T @ vt[r0:r1]).numpy() if mode != "forward" else None
    return forward, backward


def compute_matvec_task(arch, x1, x2, r0, r1, c0, c1, get, sub, pinned, v, mode: str):
    """Task: compute a block and return its products with ``v`` (nothing else is kept)."""
    block = block_task(arch, x1, x2, r0, r1, c0, c1, get, sub, pinned)
    return block_matvec_task(block, v, r0, r1, c0, c1, mode)


def gram_task(block: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Task: ``K_Iᵀ (K_I v)`` for one full-width row panel ``K_I``."""
    k = torch.from_numpy(block)
    return (k.T @ (k @ torch.from_numpy(v))).numpy()


def compute_gram_task(arch, x1, x2, r0, r1, n2, get, sub, pinned, v) -> np.ndarray:
    """Task: compute a full-width row panel and return ``K_Iᵀ (K_I v)``."""
    return gram_task(block_task(arch, x1, x2, r0, r1, 0, n2, get, sub, pinned), v)


def gram_matrix_task(arch, x1, x2, r0, r1, n2, get, sub, pinned, y):
    """Task: ``(K_Iᵀ K_I, K_Iᵀ y_I)`` in float64 for one full-width row panel."""
    k = torch.from_numpy(block_task(arch, x1, x2, r0, r1, 0, n2, get, sub, pinned)).to(torch.float64)
    g = (k.T @ k).numpy()
    return g, None if y is None else (k.T @ torch.from_numpy(y[r0:r1])).numpy()
