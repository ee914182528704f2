"""``LayerSource``: an architecture's infinite-width kernel on given inputs, tile by tile.

The kernel source (:mod:`ntkit.sources`) of ``arch.kernel_source(x1, x2, get)``: tiles are
:func:`ntkit.infinite.engine.kernel_block` calls, their temporaries estimated by
:func:`~ntkit.infinite.engine.pair_bytes`. Architectures that pool full spatial
covariances are evaluated on lists of pairs (:mod:`ntkit.infinite.pairs`), whose tiles also
hold each of their examples paired with itself.

Self pairs stay exact under restriction: ``restrict(cols=idx)`` of a symmetric source is
``K[:, idx]`` whose entries ``(idx[j], j)`` pair an example with itself; they are *pinned*
to the exact self-pair values of :meth:`LayerSource.diagonal` (a cross evaluation of a
self pair is only ``√ε``-accurate for arc-cosine kernels, which are not Lipschitz at
correlation 1).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validation import as_input_pair, check_choice, resolve_dtype
from ..errors import ParameterError, ShapeError
from ..sources import KernelSource, as_index
from ..tiling import square_side, tile_cap
from .engine import kernel_block, pair_bytes
from .fused_fc import FusedTiles, fc_steps, wanted
from .fused_fc import tile_entries as fused_tile_entries
from .pairs import block_side, max_chunk_pairs

_GETS = ("ntk", "nngp")
Pins = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class LayerSource(KernelSource):
    """The ``(n1, n2)`` NTK or NNGP of ``arch`` on ``x1`` and ``x2`` (``None``: ``x1``).

    Args:
        arch: an architecture (:class:`~ntkit.Layer`) whose kernel is one number per pair
            (spatial nets end with a readout).
        x1: ``(n1, *in_shape)``; x2: ``(n2, *in_shape)`` or ``None`` (symmetric; an ``x2``
            equal to ``x1`` counts as ``None``, as in ``arch.kernel``).
        get: ``"ntk"`` or ``"nngp"``.
        dtype: ``torch.float64`` (default) or ``torch.float32``.

    Raises:
        ParameterError, ShapeError: bad arguments, or a kernel with more than one number per
        pair (checked on one example at construction).
    """

    def __init__(self, arch: Any, x1: Any, x2: Any = None, get: str = "ntk", *, dtype: Any = None,
                 _pins: Pins | None = None) -> None:
        from .layers import Layer

        if not isinstance(arch, Layer):
            raise ParameterError(
                f"arch must be an ntkit architecture (a Layer such as nk.serial(...)), got "
                f"{type(arch).__name__}"
            )
        self.arch = arch
        self.get = check_choice(get, "get", _GETS)
        dt = resolve_dtype(dtype)
        if dt not in (torch.float32, torch.float64):
            raise ParameterError(f"dtype must be torch.float64 or torch.float32, got {dt}")
        x1, x2 = as_input_pair(x1, x2, dtype=dt)
        if x2 is not None and _pins is None and x2.shape == x1.shape and torch.equal(x1, x2):
            x2 = None  # k(x, x): symmetric, as arch.kernel does
        self.x1 = x1.contiguous()
        self._x2 = None if x2 is None else x2.contiguous()
        self.symmetric = self._x2 is None
        self._pins = _pins
        self.full = bool(arch.needs_full_spatial()) and self.x1.ndim > 2
        positions = math.prod(self.x1.shape[2:])
        self.entries_per_pair = positions * positions if self.full else positions
        self._per_pair = int(pair_bytes(arch, self.x1, self.get == "ntk"))
        # Large float32 walks of plain ReLU-family MLPs: one compiled loop per tile (issue 21).
        steps = fc_steps(arch) if dt == torch.float32 and wanted(self.shape[0] * self.shape[1]) else None
        self._fused = None if steps is None else FusedTiles(steps, self.get == "ntk", self.x1, self.x2)
        self._self: torch.Tensor | None = None
        self._tile(self.x1[:1], None)  # fails early on a bad arch/input

    # ------------------------------------------------------------------ protocol
    @property
    def x2(self) -> torch.Tensor:
        """The column inputs (``x1`` itself for a symmetric source)."""
        return self.x1 if self._x2 is None else self._x2

    @property
    def shape(self) -> tuple[int, int]:
        return (self.x1.shape[0], self.x2.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.x1.dtype

    @property
    def device(self) -> torch.device:
        return self.x1.device

    @property
    def bytes_per_pair(self) -> int:
        return self._per_pair

    def _tile(self, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        state = kernel_block(self.arch, a, b, want_ntk=self.get == "ntk")
        tile = state.ntk if self.get == "ntk" else state.nngp
        if tile.ndim != 2:
            raise ShapeError(
                f"the architecture's kernel has shape (n1, n2, {', '.join(map(str, tile.shape[2:]))}) "
                "per pair: kernel operators need one number per pair of examples; end the "
                "architecture with a readout (e.g. GlobalAvgPool() or Flatten() and Dense(1))"
            )
        if b is None:
            tile = 0.5 * (tile + tile.T)
        return tile

    def block(self, rows: slice, cols: slice) -> torch.Tensor:
        """``K[rows, cols]``; on a symmetric source ``block(s, s)`` is exactly symmetric."""
        if self.symmetric and rows == cols:
            if self._fused is None or self._fused.choice() != "fused":  # decided on other tiles
                return self._tile(self.x1[rows], None)
            tile = self._fused.tile(rows, rows, lambda: self._tile(self.x1[rows], None))
            tile = 0.5 * (tile + tile.T)  # exactly symmetric, as the engine's diagonal tiles
            tile.diagonal().copy_(self._self_values()[rows])  # self pairs exact (module docstring)
            return tile
        if self._fused is not None:
            tile = self._fused.tile(rows, cols, lambda: self._tile(self.x1[rows], self.x2[cols]))
        else:
            tile = self._tile(self.x1[rows], self.x2[cols])
        pins = pinned_in(self._pins, rows.start, rows.stop, cols.start, cols.stop)
        if pins is not None:
            tile[pins[0], pins[1]] = pins[2].to(tile.dtype)
        return tile

    @property
    def serial_tiles(self) -> bool:
        """Whether tiles should run one at a time (compiled tiles, parallel inside: they hold
        the GIL, so a pool of tile threads would serialize on it)."""
        return self._fused is not None and self._fused.active

    def _self_values(self) -> torch.Tensor:
        """:meth:`diagonal` of a symmetric source, computed once (the diagonal tiles' pins)."""
        if self._self is None:
            self._self = self.diagonal()
        return self._self

    def diagonal(self, memory_budget: Any = None) -> torch.Tensor:
        """``k(x1_i, x2_i)`` ``(min(n1, n2),)``, via ``arch.kernel(diagonal=True)``."""
        if self.symmetric:
            return self.arch.kernel(self.x1, get=self.get, diagonal=True, dtype=self.dtype,
                                    memory_budget=memory_budget)
        m = min(self.shape)
        d = self.arch.kernel(self.x1[:m], self.x2[:m], get=self.get, diagonal=True, dtype=self.dtype,
                             memory_budget=memory_budget)
        pins = pinned_in(self._pins, 0, m, 0, m)
        if pins is not None:
            on_diag = pins[0] == pins[1]
            d[pins[0][on_diag]] = pins[2][on_diag]
        return d

    def tile_bytes(self, rows: int, cols: int) -> int:
        pairs = rows * cols + (rows + cols if self.full else 0)
        return self._per_pair * pairs

    def side(self, budget: int) -> int:
        self.check(budget)
        if self.full:
            side = block_side(max_chunk_pairs(self._per_pair, budget, self.entries_per_pair))
        else:
            entries = tile_cap(self.shape[0] * self.shape[1], self.dtype, self.device)
            if self._fused is not None:  # compiled tiles have their own best side
                entries = fused_tile_entries()
            cap = entries // max(1, self.entries_per_pair)
            side = square_side(self._per_pair, budget, cap)
        while side > 1 and self.tile_bytes(side, side) > budget:
            side -= 1
        return side

    def restrict(self, rows: Any = None, cols: Any = None) -> LayerSource:
        """``K[rows][:, cols]`` (index tensors; ``None`` keeps all), self pairs pinned exact."""
        n1, n2 = self.shape
        ri = as_index(rows, n1, "rows", self.device)
        ci = as_index(cols, n2, "cols", self.device)
        if self.symmetric and (ri is None) == (ci is None) and (ri is None or torch.equal(ri, ci)):
            x = self.x1 if ri is None else self.x1[ri]
            return LayerSource(self.arch, x, None, self.get, dtype=self.dtype)
        row_ids = torch.arange(n1, device=self.device) if ri is None else ri
        col_ids = torch.arange(n2, device=self.device) if ci is None else ci
        x1 = self.x1[row_ids]
        x2 = self.x2[col_ids]
        if self.symmetric:  # pairs of one example with itself: pin them to the diagonal
            where = _positions(row_ids, n1)
            cols_at = torch.arange(col_ids.numel(), device=self.device)
            row_at = where[col_ids]
            keep = row_at >= 0
            if bool(keep.any()):
                diag = self.arch.kernel(self.x1[col_ids[keep]], get=self.get, diagonal=True,
                                        dtype=self.dtype)
                pins = (row_at[keep], cols_at[keep], diag)
            else:
                pins = _no_pins(self.device, self.dtype)
        elif self._pins is None:
            pins = None
        else:
            r_at, c_at = _positions(row_ids, n1), _positions(col_ids, n2)
            pr, pc = r_at[self._pins[0]], c_at[self._pins[1]]
            keep = (pr >= 0) & (pc >= 0)
            pins = (pr[keep], pc[keep], self._pins[2][keep])
        return LayerSource(self.arch, x1, x2, self.get, dtype=self.dtype, _pins=pins)

    def with_inputs(self, x1: Any, x2: Any = None) -> LayerSource:
        return LayerSource(self.arch, x1, x2, self.get, dtype=self.dtype)

    def __repr__(self) -> str:
        n1, n2 = self.shape
        return f"LayerSource({n1}×{n2}, get={self.get!r}, dtype={self.dtype}, symmetric={self.symmetric})"


def _positions(ids: torch.Tensor, n: int) -> torch.Tensor:
    """``where[i]`` = position of example ``i`` in ``ids`` (``-1`` if absent); ids distinct."""
    where = torch.full((n,), -1, dtype=torch.long, device=ids.device)
    where[ids] = torch.arange(ids.numel(), device=ids.device)
    return where


def _no_pins(device, dtype) -> Pins:
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return empty, empty, torch.zeros(0, dtype=dtype, device=device)


def pinned_in(pinned: Pins | None, r0: int, r1: int, c0: int, c1: int) -> Pins | None:
    """The pinned entries inside rows ``[r0, r1)`` and columns ``[c0, c1)``, block-relative."""
    if pinned is None or pinned[0].numel() == 0:
        return None
    rows, cols, values = pinned
    keep = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    if not bool(keep.any()):
        return None
    return rows[keep] - r0, cols[keep] - c0, values[keep]
