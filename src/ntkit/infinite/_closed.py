"""Small numerically careful pieces shared by the closed-form activation kernels.

For pre-activations ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])`` the closed forms need the
determinant ``q11·q22 − q12²`` (never ``1 − ρ²``, which cancels near ``|ρ| = 1``), its
square root with a gradient that stays finite where it vanishes (a point with itself), and
the angle ``θ = arccos ρ`` taken as ``atan2(√det, q12)`` (exactly 0 on a point with
itself). A zero variance is read as ``ρ = 0`` (its variable is identically 0).
"""

from __future__ import annotations

import math

import torch


def determinant(q11: torch.Tensor, q22: torch.Tensor, q12: torch.Tensor) -> torch.Tensor:
    """``max(q11·q22 − q12², 0)`` (rounding can make it slightly negative)."""
    return (q11 * q22 - q12 * q12).clamp(min=0)


class _SafeSqrt(torch.autograd.Function):
    """``√max(x, 0)`` whose derivative is taken as 0 where ``x <= 0`` (not ``∞``)."""

    @staticmethod
    def forward(ctx, x):
        root = x.clamp(min=0).sqrt()
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx, grad):
        (root,) = ctx.saved_tensors
        positive = root > 0
        return torch.where(positive, grad * 0.5 / torch.where(positive, root, 1.0), 0.0)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``√max(x, 0)`` with a finite gradient at 0 (see :class:`_SafeSqrt`)."""
    return _SafeSqrt.apply(x)


def angle(q11: torch.Tensor, q22: torch.Tensor, q12: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(θ, √det)`` with ``θ = arccos ρ ∈ [0, π]``; ``θ = π/2`` where a variance is 0."""
    root_det = safe_sqrt(determinant(q11, q22, q12))
    theta = torch.atan2(root_det, q12)
    zero = (q11 <= 0) | (q22 <= 0)
    if bool(zero.any()):
        theta = torch.where(zero, math.pi / 2, theta)
    return theta, root_det


def inverse_sqrt(q: torch.Tensor) -> torch.Tensor:
    """``1/√q`` with 0 where ``q <= 0`` (a zero variance gives ``ρ = 0``)."""
    positive = q > 0
    return torch.where(positive, torch.rsqrt(torch.where(positive, q, 1.0)), 0.0)
