"""Numbers for metrics and readings: JSON rounding, human formatting, small statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def r(x: float, digits: int = 8) -> float | None:
    """Round to ``digits`` significant digits for JSON (``None`` for NaN/inf)."""
    x = float(x)
    if not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return float(f"{x:.{digits}g}")


def rl(xs: Any, digits: int = 8) -> list[float | None]:
    """:func:`r` over a sequence or tensor."""
    if isinstance(xs, torch.Tensor):
        xs = xs.detach().cpu().reshape(-1).tolist()
    return [r(x, digits) for x in xs]


def fmt(x: float | None, digits: int = 3) -> str:
    """Human formatting for readings and the summary table."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` (Frobenius)."""
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def checkpoints(steps: int, count: int) -> list[int]:
    """``count`` roughly log-spaced integers from 0 to ``steps`` (both included)."""
    pts = np.unique(np.round(np.geomspace(1, steps + 1, max(count, 2)) - 1).astype(int))
    return sorted({0, steps, *pts.tolist()})


def error_rate(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of sign mistakes of real-valued predictions against labels ``±1``."""
    return float((torch.where(pred > 0, 1.0, -1.0).to(y.dtype) != y).double().mean())
