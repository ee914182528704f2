"""Argument checks shared by the solvers of :mod:`ntkit.linalg` (private)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import as_tensor
from ..errors import NonFiniteError, ParameterError, ShapeError


def check_ridge(ridge: Any) -> float:
    """``ridge`` as a float, checked finite and ``>= 0``."""
    if isinstance(ridge, torch.Tensor) and ridge.numel() == 1:
        ridge = ridge.item()
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float, np.number)):
        raise ParameterError(f"ridge must be a number >= 0, got {ridge!r}")
    ridge = float(ridge)
    if math.isnan(ridge):
        raise NonFiniteError("ridge is NaN; pass a finite number >= 0")
    if not math.isfinite(ridge) or ridge < 0:
        raise ParameterError(f"ridge must be a finite number >= 0, got {ridge}")
    return ridge


def is_operator(kernel: Any) -> bool:
    from .operator import KernelOperator

    return isinstance(kernel, KernelOperator)


def as_square_kernel(kernel: Any, name: str = "kernel") -> Any:
    """A symmetric KernelOperator as is, or a dense ``(n, n)`` matrix as a float tensor."""
    if is_operator(kernel):
        if not kernel.symmetric:
            raise ShapeError(
                f"{name} must be the symmetric training kernel KernelOperator(arch, x_train) "
                f"(x2=None); got a {kernel.shape[0]}×{kernel.shape[1]} cross-kernel operator"
            )
        return kernel
    dtype = kernel.dtype if isinstance(kernel, torch.Tensor) and kernel.dtype == torch.float32 else None
    K = as_tensor(kernel, name, dtype=dtype, min_ndim=2, max_ndim=2)
    if K.shape[0] != K.shape[1]:
        raise ShapeError(f"{name} must be a square (n, n) matrix, got shape {tuple(K.shape)}")
    scale, asym = _scale_and_asymmetry(K)
    if scale > 0:
        if asym > math.sqrt(torch.finfo(K.dtype).eps) * scale:
            raise ParameterError(
                f"{name} is not symmetric (max |K − Kᵀ| = {asym:.3g}, max |K| = {scale:.3g}); "
                "pass a kernel matrix k(X, X)"
            )
    return K


def _scale_and_asymmetry(K: torch.Tensor, chunk_elements: int = 1 << 20) -> tuple[float, float]:
    """``max |K|`` and ``max |K − Kᵀ|`` by blocks of rows: no ``n × n`` temporary."""
    n = K.shape[0]
    rows = max(1, chunk_elements // max(n, 1))
    scale = asym = 0.0
    for i in range(0, n, rows):
        block = K[i : i + rows]
        scale = max(scale, float(block.abs().max()))
        asym = max(asym, float((block - K[:, i : i + rows].T).abs().max()))
    return scale, asym


def as_targets(y: Any, n: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, bool]:
    """Targets as ``(n, k)`` plus whether they were ``(n,)``."""
    Y = as_tensor(y, "y", dtype=dtype, min_ndim=1, max_ndim=2, device=device)
    if Y.shape[0] != n:
        raise ShapeError(f"y must have {n} rows (one per training example), got shape {tuple(Y.shape)}")
    squeeze = Y.ndim == 1
    return (Y[:, None] if squeeze else Y), squeeze


def sample_indices(n: int, m: int, seed: Any) -> torch.Tensor:
    """``m`` distinct indices in ``[0, n)``, uniformly at random (seeded), sorted."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ParameterError(f"seed must be an integer, got {seed!r}")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.sort(torch.randperm(n, generator=gen)[:m]).values


def check_index(index: Any, n: int, name: str = "centers") -> torch.Tensor:
    """A 1-D integer index into ``[0, n)`` with distinct entries."""
    idx = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index)
    if idx.ndim != 1 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise ShapeError(f"{name} as indices must be a 1-D integer array, got {tuple(idx.shape)} {idx.dtype}")
    idx = idx.long()
    if idx.numel() == 0:
        raise ShapeError(f"{name} is empty; give at least one centre")
    if idx.numel() > n:
        raise ParameterError(f"{name} has {idx.numel()} indices but there are only n = {n} training points")
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise ShapeError(
            f"{name} indices must be in [0, {n}), got range [{int(idx.min())}, {int(idx.max())}]"
        )
    if torch.unique(idx).numel() != idx.numel():
        raise ParameterError(f"{name} indices must be distinct")
    return idx


def matrix_columns(kernel: Any, index: torch.Tensor) -> torch.Tensor:
    """``K[:, index]``, ``(n, l)``, from an operator (tile by tile) or a dense matrix."""
    if is_operator(kernel):
        cols = kernel.columns(index)
        try:
            return cols._dense()
        finally:
            cols.close()
    return kernel[:, index.to(kernel.device)].clone()
