"""Keep freed tile-sized memory in the C heap (glibc), instead of page-faulting it back each time.

Infinite-width kernels are evaluated tile by tile: every layer of every tile allocates a few
fresh tensors of the tile's size (0.5–32 MiB) and frees them moments later. glibc's
``malloc`` serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB at start) with ``mmap`` and
returns them with ``munmap``, and trims a free heap top above ``M_TRIM_THRESHOLD``; every
such block then costs one page fault (and zeroing by the kernel) per 4 KiB page when it is
written again — ~25% of the CPU time of a graph or transformer-block kernel
(``benchmarks/RESULTS.md``). glibc raises both limits by itself after the first large free
(up to 32 MiB / 64 MiB: ``mallopt(3)``, "dynamic mmap threshold"), but the elementwise
passes of a tile free several blocks at once and the heap top is trimmed again.

:func:`retain_freed_memory` sets the two limits to the values glibc's dynamic scheme tends
to (32 MiB and 64 MiB), once per process, on glibc only (a no-op elsewhere, and when
``NTKIT_MALLOPT=0``). Effect: freed blocks below 32 MiB are reused from the heap; up to 64
MiB of free heap top is kept. Results are unchanged (memory reuse only).
"""

from __future__ import annotations

import ctypes
import os
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit platforms, and twice it (the trim limit the
#: dynamic scheme sets alongside).
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20

_lock = threading.Lock()
_state: dict[str, bool] = {}


def retain_freed_memory() -> bool:
    """Set glibc's mmap/trim thresholds once (module docstring); ``True`` if they are set.

    Idempotent and thread-safe; returns ``False`` (and does nothing) on a C library other
    than glibc, where ``mallopt`` is missing or fails, or when ``NTKIT_MALLOPT=0``.
    """
    if "done" in _state:
        return _state["done"]
    with _lock:
        if "done" not in _state:
            _state["done"] = _apply()
    return _state["done"]


def _apply() -> bool:
    if os.environ.get("NTKIT_MALLOPT", "").strip() == "0":
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
    except (AttributeError, ValueError, OSError):  # not a GNU C library (macOS, Windows, musl)
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - glibc always has it
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_set = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return mmap_set and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
