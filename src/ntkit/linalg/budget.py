"""Memory budgets and tile sizes for :mod:`ntkit.linalg`.

A :class:`~ntkit.linalg.KernelOperator` holds at most ``memory_budget`` bytes of working
memory at once: the temporaries of the kernel tile being computed (estimated by
:func:`ntkit.infinite.engine.pair_bytes`, bytes per example pair), the tile cache when it
caches, and the row panel of a Gram product. Inputs, right-hand sides and results are not
counted (they are ``O(n·d)`` and ``O(n·k)``).

Budgets are bytes: an int, or a string such as ``"512MiB"``, ``"4GiB"``, ``"2GB"``
(``KiB``/``MiB``/``GiB``/``TiB`` are powers of 1024, ``KB``/``MB``/``GB``/``TB`` powers of
1000, a bare ``K``/``M``/``G``/``T`` means the binary unit).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MemoryBudgetError, ParameterError
from ..infinite.engine import pair_bytes, tile_side
from ..infinite.pairs import block_side, max_chunk_pairs

#: Default working-memory budget of a KernelOperator: 1 GiB.
DEFAULT_MEMORY_BUDGET = 2**30

_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
    "t": 2**40, "tib": 2**40, "tb": 10**12,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: Any, name: str = "memory_budget") -> int:
    """Return a budget in bytes from an int or a string like ``"4GiB"`` (``None``: default)."""
    if value is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(value, str):
        match = _PATTERN.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ParameterError(
                f"{name} must be a number of bytes or a string such as '512MiB' or '4GiB', "
                f"got {value!r}"
            )
        value = float(match.group(1)) * _UNITS[unit]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ParameterError(f"{name} must be a number of bytes, got {value!r}")
    if not math.isfinite(value) or value < 1:
        raise ParameterError(f"{name} must be a positive number of bytes, got {value!r}")
    return int(value)


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``: human-readable sizes for error messages."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


@dataclass(frozen=True)
class TileCost:
    """Bytes of temporaries needed to compute kernel tiles of one architecture on one input.

    ``per_pair`` is the engine's estimate per example pair; ``full`` is True for
    architectures evaluated on lists of pairs (pooling), whose tiles also hold each of
    their examples paired with itself.
    """

    per_pair: int
    full: bool
    itemsize: int
    entries_per_pair: int

    @classmethod
    def of(cls, arch, x, want_ntk: bool) -> TileCost:
        full = bool(arch.needs_full_spatial()) and x.ndim > 2
        positions = math.prod(x.shape[2:])
        return cls(
            per_pair=int(pair_bytes(arch, x, want_ntk)),
            full=full,
            itemsize=x.element_size(),
            entries_per_pair=positions * positions if full else positions,
        )

    def tile_bytes(self, rows: int, cols: int) -> int:
        """Bytes of temporaries (the tile itself included) of a ``rows × cols`` tile."""
        pairs = rows * cols + (rows + cols if self.full else 0)
        return self.per_pair * pairs

    def check(self, budget: int) -> None:
        """MemoryBudgetError when not even a 1×1 tile fits in ``budget``."""
        need = self.tile_bytes(1, 1)
        if need > budget:
            raise MemoryBudgetError(
                f"memory_budget={budget} bytes ({format_bytes(budget)}) is too small for one "
                f"kernel tile: a single pair of examples needs {need} bytes "
                f"({format_bytes(need)}) of temporaries for this architecture and input size; "
                f"raise memory_budget to at least {need}"
            )

    def side(self, budget: int) -> int:
        """Side of a square tile within ``budget`` and about cache-sized (at least 1)."""
        self.check(budget)
        if self.full:
            side = block_side(max_chunk_pairs(self.per_pair, budget, self.entries_per_pair))
        else:
            side = tile_side(self.per_pair, budget, self.itemsize)
        while side > 1 and self.tile_bytes(side, side) > budget:
            side -= 1
        return side

    def largest_side(self, budget: int, limit: int) -> int:
        """Largest square side ``<= limit`` whose tile fits ``budget`` (ignoring cache size)."""
        self.check(budget)
        side = max(1, min(limit, math.isqrt(max(1, budget // self.per_pair))))
        while side > 1 and self.tile_bytes(side, side) > budget:
            side -= 1
        return side


def symmetric_cache_bytes(n: int, side: int, itemsize: int) -> int:
    """Bytes of the upper row panels ``K[I, I.start:]`` of an ``n × n`` symmetric matrix."""
    total = 0
    for r0 in range(0, n, side):
        total += min(side, n - r0) * (n - r0)
    return total * itemsize
