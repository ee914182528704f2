"""Memory budgets of :mod:`ntkit.linalg`.

A :class:`~ntkit.linalg.KernelOperator` holds at most ``memory_budget`` bytes of working
memory at once: the temporaries of the kernel tiles being computed (estimated by its
kernel source, :mod:`ntkit.sources`), the tile cache when it caches, and the row panel of
a Gram product. Inputs, right-hand sides and results are not
counted (they are ``O(n·d)`` and ``O(n·k)``).

Budgets are parsed by :func:`ntkit.budget.parse_budget` (one spelling and one default for
the whole library); ``parse_bytes``/``DEFAULT_MEMORY_BUDGET`` are re-exported from there.
"""

from __future__ import annotations

from ..budget import DEFAULT_MEMORY_BUDGET, format_bytes, parse_budget, parse_bytes

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "format_bytes",
    "parse_budget",
    "parse_bytes",
    "symmetric_cache_bytes",
]


def symmetric_cache_bytes(n: int, side: int, itemsize: int) -> int:
    """Bytes of the upper row panels ``K[I, I.start:]`` of an ``n × n`` symmetric matrix."""
    total = 0
    for r0 in range(0, n, side):
        total += min(side, n - r0) * (n - r0)
    return total * itemsize
