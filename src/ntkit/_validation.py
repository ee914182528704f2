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
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_WORK_DTYPES = (torch.float32, torch.float64)


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
    """
    if isinstance(x, torch.Tensor):
        t = x
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
    if check_finite and not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{name} contains NaN or Inf; remove or impute those entries")
    return t


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
