"""Input conversion and checks shared by every public entry point.

One validation step per entry point: functions here turn NumPy arrays (or anything
``torch.as_tensor`` accepts) into tensors of the requested floating dtype and raise
ntkit errors that say what to change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import DeviceError, NonFiniteError, ParameterError, ShapeError

DEFAULT_DTYPE = torch.float64
_WORK_DTYPES = (torch.float32, torch.float64)
_FLOAT_DTYPES = (torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)
#: What to change when a kernel or prediction overflows (the message of :func:`check_finite_result`).
OVERFLOW_HINT = (
    "lower W_std / b_std or the depth, rescale the inputs (e.g. standardize them), or compute "
    "in float64"
)


def resolve_dtype(dtype: Any) -> torch.dtype:
    """Map ``None``/strings/NumPy dtypes to a torch floating dtype (default float64)."""
    if dtype is None:
        return DEFAULT_DTYPE
    if isinstance(dtype, str):
        named = getattr(torch, dtype, None)
        if not isinstance(named, torch.dtype):
            raise ParameterError(f"unknown dtype {dtype!r}; use 'float64' or 'float32'")
        dtype = named
    elif not isinstance(dtype, torch.dtype):
        try:
            dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
        except TypeError as err:
            raise ParameterError(f"unknown dtype {dtype!r}; use torch.float64 or torch.float32") from err
    if dtype in _HALF_DTYPES:
        raise ParameterError(
            f"dtype {dtype} is not supported: its range (max ≈ {torch.finfo(dtype).max:.3g}) and "
            "precision are too small for kernels, which overflow or lose all digits; use "
            "torch.float64 or torch.float32 (convert a model with model.double() / model.float())"
        )
    if dtype not in _FLOAT_DTYPES:
        raise ParameterError(f"dtype must be a floating type, got {dtype}; use torch.float64")
    return dtype


def as_tensor(
    x: Any,
    name: str,
    *,
    dtype: Any = None,
    device: torch.device | str | None = None,
    min_ndim: int = 1,
    max_ndim: int | None = None,
    allow_empty: bool = False,
    check_finite: bool = True,
) -> torch.Tensor:
    """Convert ``x`` to a floating tensor and check it.

    ``dtype=None`` means float64 (ntkit's default: the solves need it).
    Tensors stay on their device; ``device`` (if given) must match, else DeviceError.
    Complex inputs raise ParameterError (kernels here are real: a cast would silently drop
    the imaginary part); tensors on the ``meta`` device (no data) raise DeviceError.
    """
    if isinstance(x, torch.Tensor):
        t = x
        if t.is_complex():
            raise ParameterError(_complex_message(name, t.dtype))
        if t.device.type == "meta":
            raise DeviceError(
                f"{name} is on the 'meta' device, which holds shapes but no data; create it on a "
                "real device (e.g. device='cpu') before computing with it"
            )
        if device is not None and t.device != torch.device(device):
            raise DeviceError(
                f"{name} is on {t.device} but the other inputs are on {torch.device(device)}; "
                "move them to one device first (ntkit never copies silently)"
            )
    else:
        try:
            arr = np.asarray(x)
        except Exception as err:  # pragma: no cover - exotic inputs
            raise ShapeError(f"{name} could not be read as an array: {err}") from err
        if np.iscomplexobj(arr):
            raise ParameterError(_complex_message(name, arr.dtype))
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
        ):
            raise ShapeError(f"{name} must be numeric, got an array of dtype {arr.dtype}")
        if not arr.flags.writeable:  # torch warns on read-only buffers; copy those
            arr = arr.copy()
        t = torch.as_tensor(arr, device=device)
    t = t.to(dtype=resolve_dtype(dtype))
    if t.ndim < min_ndim or (max_ndim is not None and t.ndim > max_ndim):
        want = f"{min_ndim}" if max_ndim == min_ndim else f"{min_ndim}..{max_ndim or 'any'}"
        raise ShapeError(
            f"{name} must have rank {want} (a batch of examples first), got shape "
            f"{tuple(t.shape)}; add a batch axis with x[None] or reshape"
        )
    if not allow_empty and t.numel() == 0:
        raise ShapeError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one example")
    if check_finite and not all_finite(t):
        raise NonFiniteError(f"{name} contains NaN or Inf; remove or impute those entries")
    return t


def _complex_message(name: str, dtype: Any) -> str:
    return (
        f"{name} is complex ({dtype}); ntkit's kernels take real inputs and will not drop the "
        "imaginary part silently. Pass x.real, or stack real and imaginary parts as features "
        "(e.g. torch.cat([x.real, x.imag], dim=1))"
    )


def check_finite_result(result: Any, what: str, hint: str = OVERFLOW_HINT) -> None:
    """Raise NonFiniteError if a computed ``result`` (a tensor, or a tuple/list of tensors
    and ``None``) holds NaN or Inf; the message names ``what`` was computed and ``hint``,
    what to change. Every public function that returns numbers calls this before returning,
    so that overflow never comes back as silent NaN/Inf."""
    items = result if isinstance(result, (tuple, list)) else (result,)
    for t in items:
        if t is None or not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        if not all_finite(t):
            finite = torch.isfinite(t)
            bad = int((~finite).sum())
            kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            raise NonFiniteError(
                f"{what} overflowed: {bad} of {t.numel()} entries are {kind} ({t.dtype}, largest "
                f"finite value {torch.finfo(t.dtype).max:.3g}); {hint}"
            )


def check_std(value: Any, name: str, *, allow_none: bool = False) -> None:
    """A weight or bias standard deviation: a finite number >= 0 whose square is finite
    (the kernel recursions use ``W_std²``); ParameterError otherwise."""
    check_nonnegative(value, name, allow_none=allow_none)
    if value is None:
        return
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not np.isfinite(v * v):
        raise ParameterError(
            f"{name}={v:.3g} is too large: {name}² overflows a float (max ≈ 1.8e308) and every "
            f"kernel would be Inf/NaN; use a {name} of order 1 (the kernels scale as {name}² "
            "per layer)"
        )


def as_candidates(values: Any, name: str) -> list:
    """One value or an iterable of values (a search grid's candidates) as a non-empty list;
    ParameterError naming ``name`` when it is empty."""
    try:
        out = list(values)
    except TypeError:
        out = [values]
    if not out:
        raise ParameterError(f"{name} must hold at least one value")
    return out


def all_finite(t: torch.Tensor, chunk: int = 1 << 20) -> bool:
    """Whether ``t`` holds no NaN/Inf.

    First one sum (a single pass, no temporaries): IEEE arithmetic propagates NaN and ±Inf
    into a sum (``Inf − Inf`` is NaN), so a finite sum proves every entry finite. Only when
    the sum is not finite (a NaN/Inf entry, or finite entries whose sum overflows) are the
    entries checked, in chunks of ``chunk`` (``torch.isfinite`` of a whole kernel matrix
    would allocate temporaries larger than the matrix, and costs ~10 sums).
    """
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    if t.numel() <= chunk:
        return bool(torch.isfinite(t).all())
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def as_input_pair(
    x1: Any, x2: Any, *, dtype: Any = None, device: torch.device | str | None = None,
    min_ndim: int = 2,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x1 (n1, *shape)`` and ``x2 (n2, *shape)`` (or ``None``) as tensors (see
    :func:`as_tensor`), ``x2`` on ``x1``'s device; ShapeError if the example shapes differ."""
    x1 = as_tensor(x1, "x1", dtype=dtype, min_ndim=min_ndim, device=device)
    if x2 is None:
        return x1, None
    x2 = as_tensor(x2, "x2", dtype=dtype, min_ndim=min_ndim, device=x1.device)
    if x2.shape[1:] != x1.shape[1:]:
        raise ShapeError(
            f"x1 and x2 must have the same example shape, got {tuple(x1.shape[1:])} and "
            f"{tuple(x2.shape[1:])}; reshape one of them"
        )
    return x1, x2


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """Return the common device of the given tensors, or raise DeviceError."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    unique = set(devices.values())
    if len(unique) > 1:
        listing = ", ".join(f"{k} on {v}" for k, v in devices.items())
        raise DeviceError(f"inputs on different devices ({listing}); move them to one device")
    return unique.pop() if unique else torch.device("cpu")


def check_nonnegative(value: float | None, name: str, *, allow_none: bool = False) -> None:
    """Raise ParameterError unless ``value`` is a finite number >= 0 (or None if allowed)."""
    if value is None:
        if allow_none:
            return
        raise ParameterError(f"{name} must be a number >= 0, got None")
    if isinstance(value, torch.Tensor) and value.ndim == 0 and value.is_floating_point():
        value = float(value.detach())
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ParameterError(f"{name} must be a number >= 0, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ParameterError(f"{name} must be a finite number >= 0, got {value}")


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int after checking it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ParameterError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Raise ParameterError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ParameterError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def work_dtype(dtype: Any) -> torch.dtype:
    """Resolve ``dtype`` (``None`` means float64) and reject dtypes the solvers cannot use."""
    dt = resolve_dtype(dtype)
    if dt not in _WORK_DTYPES:
        raise ParameterError(
            f"dtype {dt} is not supported for kernel solves and spectra; use torch.float64 "
            "(the default) or torch.float32"
        )
    return dt


def check_scalar(value: Any, name: str, *, positive: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite number >= 0 (or > 0)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ParameterError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise NonFiniteError(f"{name} is NaN; pass a finite number")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ParameterError(f"{name} must be a finite number {bound}, got {value}")
    return value
