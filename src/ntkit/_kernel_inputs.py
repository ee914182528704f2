"""Validation and reshaping of dense kernel inputs, shared by :mod:`ntkit.predict` and
:mod:`ntkit.bounds` (private to ntkit).

Internally every problem is a matrix problem: a kernel ``K`` of shape ``(N, N)`` acting on
targets ``Y`` of shape ``(N, c)``.

* A 2-D kernel ``(n, n)`` (one kernel shared by all outputs) with targets ``(n,)`` or
  ``(n, o)`` gives ``N = n`` and ``c = 1`` or ``o`` (each output column is independent).
* A 4-D multi-output kernel ``(n, n, o, o)`` (the untraced empirical NTK,
  ``K[i, j, a, b] = <∇f_a(x_i), ∇f_b(x_j)>``) with targets ``(n, o)`` is flattened to
  ``N = n·o`` rows (index ``i·o + a``) and ``c = 1``.

Results are reshaped back to the caller's layout: ``(m,) + y_train.shape[1:]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._validation import as_tensor
from .errors import NonFiniteError, ParameterError, ShapeError


def source_eps(x: Any) -> float:
    """Machine epsilon of the floating dtype ``x`` arrived in (float64's for anything else).

    Symmetry and positive-semidefiniteness tolerances are based on it, so that a float32
    kernel promoted to float64 is judged by float32 round-off.
    """
    if isinstance(x, torch.Tensor):
        return torch.finfo(x.dtype).eps if x.dtype.is_floating_point else 2.0**-52
    dt = getattr(x, "dtype", None)
    if dt is not None and np.issubdtype(dt, np.floating):
        return float(np.finfo(dt).eps)
    return 2.0**-52


def check_tol(x: Any, dtype: torch.dtype) -> float:
    """Relative tolerance for 'is this symmetric / PSD up to round-off': sqrt(eps)."""
    return math.sqrt(max(source_eps(x), torch.finfo(dtype).eps))


def symmetrize(K: torch.Tensor, name: str, tol: float) -> torch.Tensor:
    """Check ``K`` is symmetric up to ``tol`` (relative to max|K|) and return (K + Kᵀ)/2."""
    scale = float(K.abs().max()) if K.numel() else 0.0
    if scale > 0:
        asym = float((K - K.T).abs().max())
        if asym > tol * scale:
            raise ParameterError(
                f"{name} is not symmetric: max|K - Kᵀ| = {asym:.3g} (relative {asym / scale:.2g}, "
                f"tolerance {tol:.1g}). A training kernel must be k(X, X) for one set X; check "
                "you did not pass a test-train block, or symmetrize it with (K + K.T) / 2"
            )
    return 0.5 * (K + K.T)


@dataclass(frozen=True)
class KernelData:
    """A validated training kernel flattened to ``(N, N)``."""

    K: torch.Tensor  # (N, N), symmetric
    n: int  # number of training examples
    out: int | None  # o for a 4-D (n, n, o, o) kernel, None for a 2-D kernel
    tol: float  # symmetry / PSD tolerance

    @property
    def device(self) -> torch.device:
        return self.K.device

    @property
    def dtype(self) -> torch.dtype:
        return self.K.dtype


def prepare_kernel(
    k: Any, name: str, dtype: torch.dtype, *, allow_4d: bool = True, device: Any = None
) -> KernelData:
    """Validate a square training kernel ``(n, n)`` or ``(n, n, o, o)`` and flatten it."""
    t = as_tensor(k, name, dtype=dtype, device=device, min_ndim=2, max_ndim=4 if allow_4d else 2)
    if t.ndim == 3:
        raise ShapeError(
            f"{name} has shape {tuple(t.shape)}; a kernel is (n, n) or, for multi-output "
            "empirical NTKs, (n, n, o, o)"
        )
    if t.shape[0] != t.shape[1] or (t.ndim == 4 and t.shape[2] != t.shape[3]):
        want = "(n, n)" if t.ndim == 2 else "(n, n, o, o)"
        raise ShapeError(f"{name} must be square, {want}; got shape {tuple(t.shape)}")
    n = int(t.shape[0])
    out = None
    if t.ndim == 4:
        out = int(t.shape[2])
        t = t.permute(0, 2, 1, 3).reshape(n * out, n * out)
    tol = check_tol(k, dtype)
    return KernelData(symmetrize(t, name, tol), n, out, tol)


@dataclass(frozen=True)
class Targets:
    """Targets ``(N, c)`` and the caller's layout."""

    Y: torch.Tensor  # (N, c)
    shape: tuple[int, ...]  # the caller's y shape, (n,) or (n, o)

    @property
    def c(self) -> int:
        return int(self.Y.shape[1])

    def rows(self, m: int) -> int:
        return int(self.Y.shape[0] // self.shape[0]) * m


def prepare_targets(y: Any, kd: KernelData, name: str = "y_train") -> Targets:
    """Validate ``y`` against the kernel and reshape it to ``(N, c)``."""
    t = as_tensor(y, name, dtype=kd.dtype, device=kd.device, min_ndim=1, max_ndim=2)
    if t.shape[0] != kd.n:
        raise ShapeError(
            f"{name} has {t.shape[0]} rows but the training kernel is for {kd.n} examples; "
            "pass one target per training example"
        )
    if kd.out is not None:
        o = t.shape[1] if t.ndim == 2 else 1
        if o != kd.out:
            raise ShapeError(
                f"{name} has shape {tuple(t.shape)} but the multi-output kernel has "
                f"o = {kd.out} outputs; pass targets of shape ({kd.n}, {kd.out})"
            )
        return Targets(t.reshape(kd.n * kd.out, 1), tuple(t.shape))
    return Targets(t.reshape(kd.n, -1), tuple(t.shape))


def prepare_cross(k: Any, kd: KernelData, name: str = "k_test_train") -> tuple[torch.Tensor, int]:
    """Validate a test-train kernel ``(m, n)`` / ``(m, n, o, o)``; return ``(M, N)`` and ``m``."""
    want_nd = 2 if kd.out is None else 4
    t = as_tensor(k, name, dtype=kd.dtype, device=kd.device, min_ndim=2, max_ndim=4)
    if t.ndim != want_nd:
        want = "(m, n)" if kd.out is None else f"(m, n, {kd.out}, {kd.out})"
        raise ShapeError(f"{name} has shape {tuple(t.shape)}; with this training kernel it must be {want}")
    if t.shape[1] != kd.n or (kd.out is not None and tuple(t.shape[2:]) != (kd.out, kd.out)):
        want = f"(m, {kd.n})" if kd.out is None else f"(m, {kd.n}, {kd.out}, {kd.out})"
        raise ShapeError(
            f"{name} has shape {tuple(t.shape)} but must be {want}: its second axis indexes "
            "the training examples (pass k(x_test, X_train), not its transpose)"
        )
    m = int(t.shape[0])
    if kd.out is not None:
        t = t.permute(0, 2, 1, 3).reshape(m * kd.out, kd.n * kd.out)
    return t, m


def prepare_outputs(fx: Any, tg: Targets, m: int, name: str, kd: KernelData) -> torch.Tensor:
    """Validate initial outputs of shape ``(m,) + y.shape[1:]`` (None → zeros); return (M, c)."""
    rows = tg.rows(m)
    if fx is None:
        return torch.zeros(rows, tg.c, dtype=kd.dtype, device=kd.device)
    want = (m, *tg.shape[1:])
    t = as_tensor(fx, name, dtype=kd.dtype, device=kd.device, min_ndim=1, max_ndim=2)
    if tuple(t.shape) != want:
        raise ShapeError(
            f"{name} has shape {tuple(t.shape)} but must be {want}, the network's outputs "
            "at initialization in the layout of y_train"
        )
    return t.reshape(rows, tg.c)


def to_caller(mat: torch.Tensor, tg: Targets, m: int) -> torch.Tensor:
    """Reshape ``(..., M, c)`` back to ``(..., m) + y.shape[1:]``."""
    lead = tuple(mat.shape[:-2])
    return mat.reshape(*lead, m, *tg.shape[1:])


def prepare_times(k: Any, name: str, *, discrete: bool, allow_inf: bool = True) -> tuple[torch.Tensor, bool]:
    """Validate times/steps: a scalar or a 1-D sequence of numbers >= 0.

    Returns a float64 CPU tensor ``(T,)`` and whether the input was a scalar.
    In discrete mode finite values must be integers (GD step counts).
    """
    if isinstance(k, torch.Tensor):
        arr = k.detach().cpu().to(torch.float64).numpy()
    else:
        try:
            arr = np.asarray(k, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ParameterError(f"{name} must be a number or a 1-D sequence of numbers") from err
    scalar = arr.ndim == 0
    if arr.ndim > 1:
        raise ShapeError(f"{name} must be a scalar or 1-D, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ShapeError(f"{name} is empty; pass at least one time")
    if np.isnan(arr).any():
        raise NonFiniteError(f"{name} contains NaN")
    if (arr < 0).any():
        raise ParameterError(
            f"{name} must be >= 0 (training runs forward from initialization), got {arr[arr < 0][0]}"
        )
    inf = np.isinf(arr)
    if inf.any() and not allow_inf:
        raise ParameterError(f"{name} must be finite here, got inf")
    if discrete and (np.floor(arr[~inf]) != arr[~inf]).any():
        bad = arr[~inf][np.floor(arr[~inf]) != arr[~inf]][0]
        raise ParameterError(
            f"{name} counts discrete gradient-descent steps (learning_rate is set) and must be "
            f"an integer, got {bad}; pass learning_rate=None for continuous gradient-flow time"
        )
    return torch.from_numpy(arr.copy()), bool(scalar)
