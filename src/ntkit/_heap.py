"""Keep freed tile-sized memory in the C heap (glibc) while a kernel is evaluated.

Infinite-width kernels are evaluated tile by tile: every layer of every tile allocates a few
fresh tensors of the tile's size (0.5–32 MiB) and frees them moments later. glibc's
``malloc`` serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB at start) with ``mmap`` and
returns them with ``munmap``, and gives a free heap top above ``M_TRIM_THRESHOLD`` back to
the system; either way the next tile's tensors are fresh pages, which cost one page fault
(and zeroing by the kernel) per 4 KiB when written — 25–30% of the CPU time of a graph or
transformer-block kernel (``benchmarks/RESULTS.md``). glibc raises both limits by itself
after the first large free (up to 32 MiB / 64 MiB: ``mallopt(3)``, "dynamic mmap
threshold"), but a tile frees several such blocks at once and the heap top is trimmed again.

:func:`tile_heap` (a context manager around one kernel evaluation, nestable, thread-safe):

- sets ``M_MMAP_THRESHOLD`` to 32 MiB once per process (the value glibc's own dynamic scheme
  tends to), so tile temporaries come from the heap;
- for the outermost evaluation in progress, raises ``M_TRIM_THRESHOLD`` to 2 GiB (no
  trimming between tiles), and when it ends sets it back to 64 MiB (what the dynamic scheme
  sets), so glibc gives a free heap top above 64 MiB back to the system at the next
  ``free`` as it would by itself (an explicit ``malloc_trim`` here would also drop what the
  next evaluation reuses: more page faults than glibc's default on repeated small kernels).

glibc only (a no-op with another C library, and when ``NTKIT_MALLOPT=0``). Results are
unchanged (memory reuse only); the peak resident size is not raised (freed blocks are
reused, not added to).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit platforms, and twice it (the trim limit the
#: dynamic scheme sets alongside).
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
#: The trim limit while an evaluation is in progress (the largest ``int``).
TRIM_DURING = 2**31 - 1

_lock = threading.Lock()
_state: dict = {"depth": 0}


def _libc():
    """glibc's ``mallopt``, or ``None`` (other C library, or opted out)."""
    if "libc" not in _state:
        _state["libc"] = None
        if os.environ.get("NTKIT_MALLOPT", "").strip() != "0":
            try:
                if os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
                    lib = ctypes.CDLL(None)
                    lib.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                    lib.mallopt.restype = ctypes.c_int
                    if lib.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD):
                        _state["libc"] = lib.mallopt
            except (AttributeError, ValueError, OSError):  # not glibc (macOS, Windows, musl)
                pass
    return _state["libc"]


def active() -> bool:
    """Whether :func:`tile_heap` changes glibc's limits in this process."""
    with _lock:
        return _libc() is not None


@contextmanager
def tile_heap() -> Iterator[None]:
    """Around one kernel evaluation: no page faults for reused tile memory (module docstring)."""
    with _lock:
        libc = _libc()
        _state["depth"] += 1
        if libc is not None and _state["depth"] == 1:
            libc(_M_TRIM_THRESHOLD, TRIM_DURING)
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if libc is not None and _state["depth"] == 0:
                libc(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)  # glibc trims at the next free
