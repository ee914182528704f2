"""Kernel sources: what a :class:`~ntkit.linalg.KernelOperator` is built on.

A *kernel source* is an ``(n1, n2)`` kernel matrix that can be computed tile by tile. It
knows its shape, dtype and device, whether it is symmetric, how many bytes of temporaries
a tile costs, and computes any tile, its diagonal, and sub-sources:

==========================  ==========================================================
``shape``, ``dtype``,        ``(n1, n2)``; the dtype and device of its tiles
``device``
``symmetric``                ``k(x_i, x_j)`` on one set of inputs (``x2=None``)
``block(rows, cols)``        the tile ``K[rows, cols]`` for slices; on a symmetric
                             source ``block(s, s)`` is exactly symmetric
``diagonal(memory_budget)``  ``k(x1_i, x2_i)``, ``(min(n1, n2),)``
``bytes_per_pair``           bytes of temporaries per pair of examples (estimate)
``tile_bytes(r, c)``         bytes of temporaries of an ``r × c`` tile, itself included
``side(budget)``             a good square tile side within ``budget`` (at least 1)
``restrict(rows, cols)``     the sub-source ``K[rows][:, cols]`` (index tensors, ``None``
                             keeps all); restricting the rows and columns of a symmetric
                             source to the same indices keeps it symmetric
``with_inputs(x1, x2)``      the same kernel on other inputs (optional)
``thread_safe``              whether tiles may be computed on several threads at once
``serial_tiles``             whether tiles should *now* run one at a time because each is
                             parallel inside (read at every walk; default ``False``)
==========================  ==========================================================

Implementations: :class:`TensorSource` (a precomputed matrix, here),
``ntkit.infinite.LayerSource`` (``arch.kernel_source(x1, x2)``, the infinite-width
kernels), ``ntkit.empirical.EmpiricalNTKSource`` (the empirical NTK of a fixed model).
This module, like :mod:`ntkit.tiling`, imports neither of those packages: ``ntkit.linalg``
works with any source.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._validation import OVERFLOW_HINT
from .budget import describe
from .errors import MemoryBudgetError, ParameterError, ShapeError
from .tiling import square_side, tile_cap


class KernelSource:
    """Base class of kernel sources (see the module docstring for the protocol)."""

    symmetric: bool = False
    thread_safe: bool = True
    serial_tiles: bool = False
    #: what to change when a tile or product is NaN/Inf (the operator's NonFiniteError)
    overflow_hint: str = OVERFLOW_HINT

    # -- to implement ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def device(self) -> torch.device:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def bytes_per_pair(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def block(self, rows: slice, cols: slice) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def diagonal(self, memory_budget: Any = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def restrict(self, rows: Any = None, cols: Any = None) -> KernelSource:  # pragma: no cover
        raise NotImplementedError

    def with_inputs(self, x1: Any, x2: Any = None) -> KernelSource:
        """The same kernel on other inputs; ParameterError if the source has no inputs."""
        raise ParameterError(
            f"{type(self).__name__} is a fixed matrix: it cannot be evaluated on other inputs"
        )

    # -- sizes, shared ----------------------------------------------------------------
    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def tile_bytes(self, rows: int, cols: int) -> int:
        """Bytes of temporaries (the tile itself included) of a ``rows × cols`` tile."""
        return int(self.bytes_per_pair) * rows * cols

    def check(self, budget: int) -> None:
        """MemoryBudgetError when not even a 1×1 tile fits in ``budget``."""
        need = self.tile_bytes(1, 1)
        if need > budget:
            raise MemoryBudgetError(
                f"memory_budget is {describe(budget)}, too small for one kernel tile: a single "
                f"pair of examples needs {describe(need)} of temporaries for this kernel and "
                f"input size; raise memory_budget to at least {need}"
            )

    def side(self, budget: int) -> int:
        """Side of a square tile within ``budget`` and about cache-sized (at least 1)."""
        self.check(budget)
        cap = tile_cap(math.prod(self.shape), self.dtype, self.device)
        side = square_side(self.bytes_per_pair, budget, cap)
        while side > 1 and self.tile_bytes(side, side) > budget:
            side -= 1
        return side

    def largest_side(self, budget: int, limit: int) -> int:
        """Largest square side ``<= limit`` whose tile fits ``budget`` (ignoring cache size)."""
        self.check(budget)
        side = max(1, min(limit, math.isqrt(max(1, budget // max(1, self.bytes_per_pair)))))
        while side > 1 and self.tile_bytes(side, side) > budget:
            side -= 1
        return side

    def dense_block(self, r0: int, r1: int, c0: int, c1: int, sub: int) -> torch.Tensor:
        """``K[r0:r1, c0:c1]`` assembled from tiles of side ``sub`` (one task's block)."""
        from .tiling import assemble, grid

        same = self.symmetric and (r0, r1) == (c0, c1)
        ra, rb = r1 - r0, c1 - c0

        def compute(t):
            return (self.block(slice(r0 + t.r0, r0 + t.r1), slice(c0 + t.c0, c0 + t.c1)),)

        def outputs(parts):
            return [parts[0].new_empty((ra, rb))]

        (out,) = assemble(grid(ra, rb, sub, symmetric=same), compute, outputs, symmetric=same,
                          symmetrize_diagonal=False)
        return out


def as_index(index: Any, n: int, name: str, device: torch.device) -> torch.Tensor | None:
    """A 1-D long tensor of row numbers in ``[0, n)`` (``None`` stays ``None``)."""
    if index is None:
        return None
    if isinstance(index, slice):
        return torch.arange(n, device=device)[index]
    idx = torch.as_tensor(index)
    if idx.ndim != 1 or idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ShapeError(f"{name} must be a 1-D integer array, got {tuple(idx.shape)} {idx.dtype}")
    idx = idx.long().to(device)
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= n:
        raise ShapeError(f"{name} must hold between 1 and {n} row numbers in [0, {n}), got {idx.numel()}")
    return idx


class TensorSource(KernelSource):
    """A precomputed ``(n1, n2)`` kernel matrix as a source (tiles are slices: no work).

    Args:
        matrix: the kernel matrix (tensor or NumPy array), float32 or float64.
        symmetric: whether it is ``k(x, x)``; ``None`` checks ``matrix == matrix.T``.
    """

    def __init__(self, matrix: Any, symmetric: bool | None = None) -> None:
        K = torch.as_tensor(matrix)
        if K.ndim != 2:
            raise ShapeError(f"a kernel matrix must be 2-D, got shape {tuple(K.shape)}")
        if K.dtype not in (torch.float32, torch.float64):
            raise ParameterError(f"a kernel matrix must be float32 or float64, got {K.dtype}")
        if symmetric is None:
            symmetric = K.shape[0] == K.shape[1] and bool(torch.equal(K, K.T))
        if symmetric and K.shape[0] != K.shape[1]:
            raise ShapeError(f"a symmetric kernel matrix must be square, got {tuple(K.shape)}")
        self.matrix = K
        self.symmetric = bool(symmetric)

    overflow_hint = (
        "the precomputed kernel matrix holds NaN/Inf entries (or its products overflow): "
        "compute it again in float64, with smaller W_std / b_std or rescaled inputs"
    )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.matrix.shape[0], self.matrix.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    @property
    def bytes_per_pair(self) -> int:
        return self.matrix.element_size()  # the tile's copy

    def block(self, rows: slice, cols: slice) -> torch.Tensor:
        return self.matrix[rows, cols].clone()

    def diagonal(self, memory_budget: Any = None) -> torch.Tensor:
        return self.matrix.diagonal().clone()

    def restrict(self, rows: Any = None, cols: Any = None) -> TensorSource:
        n1, n2 = self.shape
        ri = as_index(rows, n1, "rows", self.device)
        ci = as_index(cols, n2, "cols", self.device)
        K = self.matrix if ri is None else self.matrix[ri]
        K = K if ci is None else K[:, ci]
        keep_sym = self.symmetric and (
            (ri is None and ci is None) or (ri is not None and ci is not None and torch.equal(ri, ci))
        )
        return TensorSource(K.contiguous(), symmetric=keep_sym)

    def __repr__(self) -> str:
        return f"TensorSource({self.shape[0]}×{self.shape[1]}, {self.dtype}, symmetric={self.symmetric})"
