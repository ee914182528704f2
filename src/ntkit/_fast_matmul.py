"""Float32 CPU matrix products through oneDNN when that is the faster library.

torch multiplies float32 CPU matrices with MKL's ``sgemm``. On CPUs where MKL does not take
its fastest code path (some AMD CPUs; measurements in benchmarks/RESULTS.md), the same product
through oneDNN's matmul, ``torch.ops.mkldnn._linear_pointwise``, which torch also ships, can
take half the time. ntkit's
structured empirical NTK spends most of its time in such products, so it routes them here:

- :func:`matmul` for products it calls itself;
- :class:`fast_matmuls`, a dispatch mode that reroutes the ``mm``/``addmm`` of code it does
  not own (the autograd backward of ``nn.Linear`` layers, run under the structured path's
  hooks).

Only float32 CPU products of at least ``MIN_FLOPS`` multiply-adds are rerouted; everything
else (float64: oneDNN has no float64 matmul, and NumPy's BLAS was not faster here; other
devices; small products) is torch's own ``mm``. The route is decided once per process: it must
agree with ``mm`` on test products and be at least 20% faster on a timed one (about 10 ms);
``NTKIT_FAST_MATMUL=0`` turns it off, ``=1`` turns it on whenever it works, and ``NTKIT_TUNE=0``
(no timing probes, :mod:`ntkit.hardware`) keeps ``mm`` unless ``NTKIT_FAST_MATMUL=1``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Products below this many multiply-adds stay on ``mm`` (call overhead dominates).
MIN_FLOPS = 1 << 20

_aten = torch.ops.aten


def _onednn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), None, "none", [], "")


#: The oneDNN product ``a @ b`` of 2-D float32 CPU tensors (:func:`ntkit.hardware.gemm_rate`).
onednn = _onednn

_ROUTES = {torch.float32: _onednn}


@functools.cache
def route(dtype: torch.dtype):
    """The product used for ``dtype`` CPU matrices in this process (decided once), or None."""
    fn = _ROUTES.get(dtype)
    if fn is None or not _works(fn, dtype):
        return None
    forced = os.environ.get("NTKIT_FAST_MATMUL", "").strip()
    if forced in ("0", "1"):
        return fn if forced == "1" else None
    if os.environ.get("NTKIT_TUNE", "").strip() == "0":
        return None
    return fn if _faster(fn, dtype) else None


def _works(fn, dtype: torch.dtype) -> bool:
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(37, 53, generator=gen, dtype=dtype)
        b = torch.randn(53, 29, generator=gen, dtype=dtype)
        return all(
            torch.allclose(fn(x, y), x @ y, rtol=1e-4, atol=1e-4)
            for x, y in ((a, b), (a, b[:, :1]), (b.T, a.T))
        )
    except Exception:  # op missing in this build, or refusing these inputs
        return False


def _faster(fn, dtype: torch.dtype) -> bool:
    """Time both on a 384×512×384 product (best of 5)."""
    a, b = torch.randn(384, 512, dtype=dtype), torch.randn(512, 384, dtype=dtype)

    def best(f) -> float:
        f()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(lambda: fn(a, b)) < 0.8 * best(lambda: a @ b)


def _fast(a: torch.Tensor, b: torch.Tensor):
    """The faster product for these operands, or None (use ``mm``)."""
    if (a.device.type != "cpu" or b.device.type != "cpu" or a.dtype != b.dtype or a.ndim != 2
            or b.ndim != 2 or a.shape[0] * a.shape[1] * b.shape[1] < MIN_FLOPS):
        return None
    return route(a.dtype)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D ``a (m, k)``, ``b (k, n)``, by the faster route (module docstring).

    Inputs that need gradients always take ``a @ b`` (the routes have no autograd formula).
    """
    fn = None if a.requires_grad or b.requires_grad else _fast(a, b)
    return a @ b if fn is None else fn(a, b)


class fast_matmuls(TorchDispatchMode):  # noqa: N801 (used like a function: ``with fast_matmuls():``)
    """Reroute large CPU ``mm``/``addmm`` calls inside the ``with`` block to the faster route.

    It acts below autograd (the dispatcher's Python key), so gradients are recorded as for
    ``mm`` and only the kernel that computes the product changes.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _aten.mm.default and not kwargs:
            fn = _fast(*args)
            if fn is not None:
                return fn(*args)
        if func is _aten.addmm.default and not kwargs and len(args) == 3:
            bias, a, b = args
            fn = _fast(a, b)
            if fn is not None and bias.dtype == a.dtype:
                return fn(a, b).add_(bias)
        return func(*args, **kwargs)


def fast_matmuls_for(tensors: Iterable[torch.Tensor]) -> contextlib.AbstractContextManager:
    """:class:`fast_matmuls` where products of these tensors' dtypes can be rerouted, else a
    no-op context: entering any dispatch mode imports ``torch._dynamo`` once per process
    (seconds), wasted where the mode would only pass every product on (float64, no route)."""
    if any(t.device.type == "cpu" and route(t.dtype) is not None for t in tensors):
        return fast_matmuls()
    return contextlib.nullcontext()
