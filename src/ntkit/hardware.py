"""This CPU: facts read from the OS, and the choices that depend on it, timed once per process.

The fastest float32 product library, tile size and number of tile workers differ from one
x86 CPU to the next (caches, vector width, hyper-threads, how well MKL serves the vendor), so
ntkit measures them on the machine it runs on instead of fixing them from one vendor's
numbers. Everything timed here is timed at most once per process (cached) and only when a
computation large enough to repay it asks (docs/DESIGN.md, "CPU-dependent choices").

**Facts** (no timing): :func:`cpu_info` — model name, usable logical CPUs, physical cores,
L2/L3 sizes, torch's vector ISA.

**Rates** (timed when called; for benchmarks and reports): :func:`gemm_rate` (GFLOP/s of a
float32/float64 matrix product through a given route) and :func:`bandwidth` (bytes/s of a
large copy or add, far out of cache).

**Decisions** (each timed on first use, then cached):

- :func:`matmul_route` — float32 CPU products through oneDNN or torch's own ``mm`` (MKL):
  oneDNN when it agrees with ``mm`` on test products and is at least 20% faster on a timed
  384×512×384 product (``ntkit._fast_matmul``; ~10 ms).
- :func:`tile_entries` — kernel entries per tile of large walks: a stand-in for a tile of
  the arc-cosine kernel (the Gram product of 40-feature inputs, then two layers' elementwise
  passes: products, determinant, square root, ``atan2``) is timed in CPU seconds per entry
  at sides 256, 362, 512, 724 and 1024 (best of 3 rounds, interleaved, one torch thread,
  ~0.2–0.4 s in all); the cheapest side wins if it is at least 10% cheaper per entry than the
  default 512² (:data:`DEFAULT_TILE_ENTRIES`), else the default stays (no flapping between
  runs on one machine). Only walks of at least ``ntkit.tiling.TUNE_MIN_PAIRS`` pairs use
  it; smaller ones (every ordinary ``arch.kernel`` call) take the default without timing.
- :func:`tile_threads` — worker threads of a tile pool: ``torch.get_num_threads()``, except
  on hyper-threaded CPUs where torch counts only the physical cores: there the stand-in
  tile is timed on ``physical`` and on ``logical`` workers and the logical count is used if
  its throughput is at least 10% higher.
- freed memory kept for reuse: not timed. A tile's elementwise passes allocate and free
  tile-sized temporaries (1 MiB at 512² float32) hundreds of times a second; glibc returns
  such blocks to the OS (``mmap``/trim) and every reuse then page-faults the memory in again
  (measured on the 2-core AMD EPYC: ~1,400 faults and 20–30% of a tile's CPU time).
  :func:`keep_freed_memory`, called when a kernel evaluation (``ntkit.infinite.engine``) or
  a large walk starts, raises glibc's mmap and trim
  thresholds (``mallopt``, as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` would)
  so that freed temporaries are reused without faults; the process then keeps up to
  :data:`TRIM_BYTES` of freed heap instead of returning it at once. Nothing happens off
  glibc or with ``NTKIT_TUNE=0``.
- compiled fully-connected tiles (:mod:`ntkit.infinite.fused_fc`): a float32 walk of a
  plain ReLU-family MLP of at least ``fused_fc.MIN_ENTRIES`` entries computes its first
  off-diagonal tile with the engine and with a ``torch.compile``'d one-loop version, both
  timed in CPU seconds; the compiled one is kept for the process if it agrees to float32
  round-off and is at least 10% cheaper (``NTKIT_FUSED=0|1`` forces it off / on).
- float32 vs float64 accumulation: not timed. A float32 operator's product accumulates
  each tile's ``K_IJ v_J`` (a float32 product over at most a tile side) in float64 across
  tiles (``ntkit.linalg.local_backend``); the float64 sum costs ``O(n·k)`` per tile row against
  the tile's ``O(side²)`` kernel entries, so it is free on every CPU, and the result's error
  stays that of one tile rather than growing with the number of tiles.

Environment: ``NTKIT_TUNE=0`` skips every timing probe (default tile size, torch's thread
count, torch's own ``mm`` unless ``NTKIT_FAST_MATMUL=1``): results are then reproducible to the
bit from run to run on one machine. ``NTKIT_TILE_ENTRIES=N`` fixes the tile size.
``NTKIT_FAST_MATMUL=0|1`` forces the product route.

Tile size and product route change only the rounding of float32 results (the same entries
summed in a different grouping, or a product by another library), which
``tests/test_cpu_choices.py`` pins: every forced route and tile size agrees to float32
round-off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from . import _fast_matmul

__all__ = [
    "DEFAULT_TILE_ENTRIES",
    "TILE_SIDES",
    "CPUInfo",
    "bandwidth",
    "cpu_info",
    "gemm_rate",
    "keep_freed_memory",
    "matmul_route",
    "tile_entries",
    "tile_threads",
    "tuning_enabled",
]

#: Kernel entries of a tile when nothing is measured (512²: the fastest side on the 2-core AMD
#: EPYC the defaults were first tuned on; benchmarks/RESULTS.md).
DEFAULT_TILE_ENTRIES = 512 * 512
#: Tile sides the tile probe compares (entries = side²; 362² ≈ 2¹⁷, 724² ≈ 2¹⁹).
TILE_SIDES = (256, 362, 512, 724, 1024)
#: A measured choice replaces the default only when at least this much cheaper.
MARGIN = 0.10
#: glibc's largest mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``): blocks up to this
#: come from the heap and are reused after ``free`` (:func:`keep_freed_memory`).
MMAP_THRESHOLD_BYTES = 32 * 1024**2
#: Free memory at the top of a heap that glibc keeps instead of returning it to the OS.
TRIM_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class CPUInfo:
    """What the OS says about this CPU (no timing).

    Attributes:
        model: the model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere).
        logical: logical CPUs this process may run on (its affinity mask).
        physical: physical cores among them (``None``: unknown, e.g. not Linux).
        l2_bytes: L2 cache of one core (``None``: unknown).
        l3_bytes: L3 cache of one core's cluster (``None``: unknown or none).
        capability: the vector instruction set torch's kernels use (``"AVX2"``, ``"AVX512"``, ...).
        torch_threads: ``torch.get_num_threads()`` when first asked.
    """

    model: str
    logical: int
    physical: int | None
    l2_bytes: int | None
    l3_bytes: int | None
    capability: str
    torch_threads: int

    def describe(self) -> str:
        """One line: ``model, N logical CPUs (M cores), L2 …, L3 …, ISA``."""
        cores = "" if self.physical is None else f" ({self.physical} cores)"
        caches = ", ".join(f"{name} {size // 1024} KiB" for name, size in
                           (("L2", self.l2_bytes), ("L3", self.l3_bytes)) if size)
        return (f"{self.model}, {self.logical} logical CPUs{cores}"
                f"{', ' + caches if caches else ''}, {self.capability}, torch threads {self.torch_threads}")


def tuning_enabled() -> bool:
    """False when ``NTKIT_TUNE=0`` (no timing probes: fixed defaults)."""
    return os.environ.get("NTKIT_TUNE", "").strip() != "0"


# --------------------------------------------------------------------------- facts
def _cpuinfo_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _physical_cores(cpus: list[int]) -> int | None:
    cores = set()
    for cpu in cpus:
        top = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        core, package = _read(top / "core_id"), _read(top / "physical_package_id")
        if core is None:
            return None
        cores.add((package, core))
    return len(cores) or None


def _size(text: str | None) -> int | None:
    if not text:
        return None
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1].upper(), 1)
    digits = text[:-1] if text[-1].isalpha() else text
    return int(digits) * scale if digits.isdigit() else None


def _caches(cpu: int) -> dict[int, int]:
    """``{level: bytes}`` of the data/unified caches of ``cpu`` (sysfs)."""
    out = {}
    for index in sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*")):
        if _read(index / "type") in ("Data", "Unified"):
            level, size = _read(index / "level"), _size(_read(index / "size"))
            if level and level.isdigit() and size:
                out[int(level)] = size
    return out


@functools.cache
def cpu_info() -> CPUInfo:
    """The CPU this process runs on (read once; see :class:`CPUInfo`)."""
    cpus = _usable_cpus()
    caches = _caches(cpus[0]) if cpus else {}
    return CPUInfo(
        model=_cpuinfo_model(),
        logical=len(cpus),
        physical=_physical_cores(cpus),
        l2_bytes=caches.get(2),
        l3_bytes=caches.get(3),
        capability=torch.backends.cpu.get_cpu_capability(),
        torch_threads=torch.get_num_threads(),
    )


# --------------------------------------------------------------------------- rates
def _best_wall(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_rate(dtype: torch.dtype = torch.float32, route: str = "auto",
              shape: tuple[int, int, int] = (1024, 1024, 1024), repeats: int = 5) -> float:
    """GFLOP/s (``2·m·k·n`` flops) of one ``(m, k) @ (k, n)`` CPU product, best of ``repeats``.

    Args:
        dtype: ``torch.float32`` or ``torch.float64``.
        route: ``"mm"`` (torch's own, MKL on x86 builds), ``"onednn"`` (float32 only) or
            ``"auto"`` (the route :func:`matmul_route` chose).
        shape: ``(m, k, n)``.

    Uses torch's current intra-op thread count; wall-clock time. Raises ValueError for an
    unknown route or ``"onednn"`` with another dtype.
    """
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen, dtype=dtype)
    b = torch.randn(k, n, generator=gen, dtype=dtype)
    if route == "auto":
        route = matmul_route(dtype)
    if route == "mm":
        fn = functools.partial(torch.mm, a, b)
    elif route == "onednn" and dtype == torch.float32:
        fn = functools.partial(_fast_matmul.onednn, a, b)
    else:
        raise ValueError(f"route must be 'mm', 'onednn' (float32) or 'auto', got {route!r} for {dtype}")
    reps = max(1, int(2e8 // (m * k * n)))  # at least ~0.2 GFLOP per timed call
    return 2.0 * m * k * n * reps / _best_wall(lambda: [fn() for _ in range(reps)], repeats) / 1e9


def bandwidth(kind: str = "copy", nbytes: int = 1 << 28, repeats: int = 3) -> float:
    """Bytes/s moved by ``kind`` over float32 arrays of ``nbytes`` each (far out of cache).

    ``"copy"`` (``b ← a``: reads and writes ``nbytes``, counted ``2·nbytes``) or ``"add"``
    (``c ← a + b``: ``3·nbytes``). Torch's current intra-op threads; best of ``repeats``.
    """
    n = max(1, nbytes // 4)
    a = torch.ones(n)
    b = torch.empty(n)
    if kind == "copy":
        moved, fn = 2 * n * 4, functools.partial(b.copy_, a)
    elif kind == "add":
        c = torch.ones(n)
        moved, fn = 3 * n * 4, functools.partial(torch.add, a, c, out=b)
    else:
        raise ValueError(f"kind must be 'copy' or 'add', got {kind!r}")
    return moved / _best_wall(fn, repeats)


# --------------------------------------------------------------------------- decisions
def matmul_route(dtype: torch.dtype = torch.float32) -> str:
    """``"onednn"`` or ``"mm"``: the library of large ``dtype`` CPU products in this process.

    Decided once (module docstring); float64 is always ``"mm"`` (oneDNN has no float64
    matmul). With ``NTKIT_TUNE=0`` and no ``NTKIT_FAST_MATMUL``, ``"mm"`` without timing.
    """
    return "onednn" if _fast_matmul.route(dtype) is not None else "mm"


@functools.cache
def _mallopt() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES)) and bool(
            libc.mallopt(m_trim_threshold, TRIM_BYTES))
    except (OSError, AttributeError):  # pragma: no cover - no usable libc
        return False


def keep_freed_memory() -> bool:
    """Make glibc reuse freed tile temporaries instead of returning them to the OS (module
    docstring); once per process. True when the thresholds are set (glibc, tuning on)."""
    return tuning_enabled() and _mallopt()


def _stand_in_inputs(side: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(side)
    x = torch.randn(2 * side, 40, generator=gen, dtype=dtype)
    x = x / x.norm(dim=1, keepdim=True)
    var = (x * x).sum(1) / 40
    return x[:side], x[side:], var


def _stand_in_tile(a: torch.Tensor, b: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """A tile of a two-hidden-layer ReLU NTK's work, in the engine's pattern: the Gram
    product, per layer a dozen passes over the tile (new tensors, as the engine allocates
    them) and the per-tile checks on the variance vectors (reductions, host syncs), which
    small tiles pay relatively more often."""
    c = 1.0 / (2.0 * math.pi)
    side = a.shape[0]
    q = _fast_matmul.matmul(a, b.T) / 40.0
    ntk = torch.zeros_like(q)
    v1, v2 = var[:side], var[side:]
    for _ in range(2):
        q = 2.0 * q + 0.01
        ntk = q + 2.0 * ntk
        v1, v2 = 2.0 * v1 + 0.01, 2.0 * v2 + 0.01
        for _ in range(3):  # variance spans and finiteness checks, as the activations do
            both = torch.cat([v1.reshape(-1), v2.reshape(-1)])
            torch.stack(list(torch.aminmax(both))).tolist()
            bool(torch.isfinite(both).all())
        q1, q2 = v1[:, None], v2[None, :]
        det = (q1 * q2).sub_(q * q).clamp_(min=0).sqrt_()
        theta = torch.atan2(det, q)
        float(theta.max())
        dot = theta.mul_(-c).add_(0.5)
        q = (q * dot).add_(det, alpha=c)
        ntk = ntk * dot
        v1, v2 = torch.sqrt(v1 * v1) * 0.5, torch.sqrt(v2 * v2) * 0.5
    return ntk


def _cpu_seconds_per_entry(sides, dtype: torch.dtype, rounds: int = 3) -> dict[int, float]:
    """CPU seconds per kernel entry of the stand-in tile at each side (best of ``rounds``,
    interleaved so that a slow moment of a shared machine hits every side alike)."""
    inputs = {s: _stand_in_inputs(s, dtype) for s in sides}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for s in sides:  # warm-up: first-touch pages, op dispatch caches
            _stand_in_tile(*inputs[s])
        best = dict.fromkeys(sides, math.inf)
        for _ in range(rounds):
            for s in sides:
                t0 = time.thread_time()
                _stand_in_tile(*inputs[s])
                best[s] = min(best[s], (time.thread_time() - t0) / (s * s))
    finally:
        torch.set_num_threads(before)
    return best


@functools.cache
def _measured_tile_entries(dtype: torch.dtype) -> int:
    cost = _cpu_seconds_per_entry(TILE_SIDES, dtype)
    default = math.isqrt(DEFAULT_TILE_ENTRIES)
    best = min(cost, key=cost.get)
    if default in cost and cost[best] > (1 - MARGIN) * cost[default]:
        best = default
    return best * best


def tile_entries(dtype: torch.dtype = torch.float32) -> int:
    """Kernel entries per tile of large CPU walks (decided once per dtype; module docstring).

    ``NTKIT_TILE_ENTRIES=N`` fixes it; ``NTKIT_TUNE=0`` gives :data:`DEFAULT_TILE_ENTRIES`.
    Raises ValueError for a non-positive ``NTKIT_TILE_ENTRIES``.
    """
    forced = os.environ.get("NTKIT_TILE_ENTRIES", "").strip()
    if forced:
        if not forced.isdigit() or int(forced) < 1:
            raise ValueError(f"NTKIT_TILE_ENTRIES must be a positive integer, got {forced!r}")
        return int(forced)
    if not tuning_enabled():
        return DEFAULT_TILE_ENTRIES
    return _measured_tile_entries(dtype)


def _throughput(workers: int, side: int, tiles_each: int = 3) -> float:
    """Stand-in tiles per second on ``workers`` threads, torch single-threaded in each."""
    inputs = _stand_in_inputs(side, torch.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            list(pool.map(lambda _: _stand_in_tile(*inputs), range(workers)))  # warm-up
            t0 = time.perf_counter()
            list(pool.map(lambda _: _stand_in_tile(*inputs), range(workers * tiles_each)))
            return workers * tiles_each / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


@functools.cache
def _hyperthread_workers(physical: int, logical: int) -> int:
    side = math.isqrt(DEFAULT_TILE_ENTRIES)
    faster = _throughput(logical, side) >= (1 + MARGIN) * _throughput(physical, side)
    return logical if faster else physical


def tile_threads() -> int:
    """Worker threads of a tile pool (module docstring): ``torch.get_num_threads()``, or the
    logical CPU count where torch counts physical cores of a hyper-threaded CPU and the extra
    threads measurably help (timed once, ~0.1 s; never with ``NTKIT_TUNE=0``)."""
    threads = torch.get_num_threads()
    info = cpu_info()
    if (not tuning_enabled() or info.physical is None or info.logical <= info.physical
            or threads != info.physical):
        return threads
    return _hyperthread_workers(info.physical, info.logical)
