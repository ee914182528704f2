"""Preconditioned conjugate gradient for symmetric positive definite systems ``A X = B``.

Each column of ``B`` is an independent system with its own step sizes (the products with
``A`` are shared: one ``A @ P`` per iteration for all columns). A column stops moving once
its relative residual ``‖b − A x‖ / ‖b‖`` is at most ``tol``; the solve stops when all
have, or at ``maxiter`` iterations — then a :class:`~ntkit.linalg.ConvergenceWarning` states
the relative residual achieved (recomputed as ``b − A x``, one extra product).

The preconditioner approximates ``A⁻¹``: a callable ``r -> z``, an object with an
``apply(r)`` method (e.g. :class:`~ntkit.linalg.NystromPreconditioner`), or a matrix
(anything with ``@``). It must be symmetric positive definite.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._validation import as_tensor
from ..errors import NonFiniteError, ParameterError, ShapeError, SingularMatrixError
from ._errors import ConvergenceWarning

#: Relative residual ``‖b − A x‖ / ‖b‖`` at which an iteration counts as diverged (SPD
#: systems in exact arithmetic never exceed ``√κ``-ish factors; only a numerically singular or
#: indefinite ``A`` drives it this high), and the bound on the result at ``maxiter``: a
#: result more than 10x worse than ``x = 0`` means CG diverged.
DIVERGED = 1e8
DIVERGED_AT_END = 10.0


def _diverged(residual: float, it: int) -> None:
    raise SingularMatrixError(
        f"conjugate gradient diverged (relative residual {residual:.3g} after {it} iterations, "
        "worse than the start x = 0): the matrix is numerically singular or not positive "
        "definite, as a Cholesky factorization would also report; use ridge > 0, or remove "
        "duplicated training points"
    )


@dataclass
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    Attributes:
        x: the solution, shaped like ``b``.
        iterations: iterations run (products with ``A``, not counting the initial one
            when ``x0`` is given or the final residual check).
        residual: largest relative residual over the columns, ``‖b − A x‖ / ‖b‖`` (from the
            CG recurrence when converged, recomputed when not).
        converged: whether every column reached ``tol``.
        history: the largest relative residual after each iteration.
    """

    x: torch.Tensor
    iterations: int
    residual: float
    converged: bool
    history: list[float] = field(default_factory=list)


def as_linear_map(A: Any, name: str = "A") -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> A v`` for a callable, an object with ``apply``, or anything with ``@``."""
    if A is None:
        return lambda v: v
    if hasattr(A, "apply") and callable(A.apply):
        return A.apply
    if hasattr(A, "__matmul__") and not callable(A):
        return lambda v: A @ v
    if callable(A):
        return A
    raise ParameterError(
        f"{name} must be a callable, an object with apply(r), or a matrix; got {type(A).__name__}"
    )


def conjugate_gradient(
    A: Any,
    b: Any,
    *,
    preconditioner: Any = None,
    tol: float = 1e-6,
    maxiter: int | None = None,
    x0: Any = None,
    progress: bool | None = None,
    warn: bool = True,
) -> CGResult:
    """Solve ``A x = b`` for symmetric positive definite ``A`` by preconditioned CG.

    Args:
        A: the matrix: a callable ``v -> A v`` on ``(n, k)`` tensors, or anything with
            ``@`` (a tensor, a :class:`~ntkit.linalg.KernelOperator`).
        b: ``(n,)`` or ``(n, k)`` right-hand sides.
        preconditioner: ``None``, a callable ``r -> z ≈ A⁻¹ r``, an object with
            ``apply(r)``, or a matrix.
        tol: relative residual ``‖b − A x‖ / ‖b‖`` to reach, per column (``> 0``).
        maxiter: iteration cap (default ``min(2n, 1000)``).
        x0: starting point, shaped like ``b`` (default zeros).
        progress: progress bar (``None``: only on a terminal; ``False``: never).
        warn: emit :class:`~ntkit.linalg.ConvergenceWarning` at the cap.

    Returns:
        :class:`CGResult` with ``x`` shaped like ``b``.

    Raises:
        SingularMatrixError: a search direction ``p`` with ``pᵀ A p <= 0``: ``A`` is not
            positive definite (use a ridge > 0); or the iteration diverged: relative residual
            above :data:`DIVERGED` during the iteration, or above :data:`DIVERGED_AT_END`
            at ``maxiter`` (consistent with the Cholesky and Nyström solvers).
    """
    from tqdm.auto import tqdm

    bt = as_tensor(b, "b", dtype=b.dtype if isinstance(b, torch.Tensor) else None, min_ndim=1, max_ndim=2)
    squeeze = bt.ndim == 1
    B = bt[:, None] if squeeze else bt
    n, k = B.shape
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol > 0:
        raise ParameterError(f"tol must be a number > 0, got {tol!r}")
    if maxiter is None:
        maxiter = min(2 * n, 1000)
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 0:
        raise ParameterError(f"maxiter must be an integer >= 0, got {maxiter!r}")
    matvec = as_linear_map(A, "A")
    precond = as_linear_map(preconditioner, "preconditioner")

    def apply(f, v, what):
        out = f(v)
        if out.shape != v.shape:
            raise ShapeError(f"{what} returned shape {tuple(out.shape)} for input {tuple(v.shape)}")
        return out

    bnorm = torch.linalg.vector_norm(B, dim=0)
    safe_bnorm = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    if x0 is None:
        X = torch.zeros_like(B)
        R = B.clone()
    else:
        X = as_tensor(x0, "x0", dtype=B.dtype, device=B.device).reshape(n, k).clone()
        R = B - apply(matvec, X, "A")
    Z = apply(precond, R, "preconditioner")
    P = Z.clone()
    rz = (R * Z).sum(0)
    history: list[float] = []
    rel = torch.linalg.vector_norm(R, dim=0) / safe_bnorm
    rel = torch.where(bnorm > 0, rel, torch.zeros_like(rel))
    it = 0
    disable = None if progress is None else not progress
    with tqdm(total=maxiter, desc="CG", disable=disable, leave=False) as bar:
        while float(rel.max()) > tol and it < maxiter:
            active = rel > tol
            AP = apply(matvec, P, "A")
            pap = (P * AP).sum(0)
            if bool((active & ~(pap > 0)).any()):
                if not bool(torch.isfinite(pap).all()):
                    raise NonFiniteError(
                        "conjugate gradient produced NaN/Inf; check A and the preconditioner"
                    )
                raise SingularMatrixError(
                    f"conjugate gradient met a direction p with pᵀAp = {float(pap[active].min()):.3g} <= 0 "
                    f"at iteration {it + 1}: the matrix is singular or not positive definite; use "
                    "ridge > 0"
                )
            zero, one = torch.zeros_like(pap), torch.ones_like(pap)
            alpha = torch.where(active, rz / torch.where(active, pap, one), zero)
            X += alpha * P
            R -= alpha * AP
            Z = apply(precond, R, "preconditioner")
            rz_new = (R * Z).sum(0)
            beta = torch.where(active, rz_new / torch.where(rz != 0, rz, one), zero)
            P = Z + beta * P
            rz = torch.where(active, rz_new, rz)
            rel_new = torch.linalg.vector_norm(R, dim=0) / safe_bnorm
            rel = torch.where(active & (bnorm > 0), rel_new, rel)
            it += 1
            if not float(rel.max()) <= DIVERGED:  # also NaN
                _diverged(float(rel.max()), it)
            history.append(float(rel.max()))
            bar.update()
            bar.set_postfix(residual=f"{history[-1]:.2e}", refresh=False)
    converged = float(rel.max()) <= tol
    residual = float(rel.max()) if rel.numel() else 0.0
    if not converged:
        true_r = B - apply(matvec, X, "A")
        rel_true = torch.linalg.vector_norm(true_r, dim=0) / safe_bnorm
        residual = float(torch.where(bnorm > 0, rel_true, torch.zeros_like(rel_true)).max())
        if not residual <= DIVERGED_AT_END:
            _diverged(residual, it)
        if warn:
            warnings.warn(
                f"conjugate gradient stopped at maxiter={maxiter} iterations with relative residual "
                f"{residual:.3e} (tol={tol:.1e}); raise maxiter, use a preconditioner, or a larger ridge",
                ConvergenceWarning,
                stacklevel=2,
            )
    x = X[:, 0] if squeeze else X
    return CGResult(x=x, iterations=it, residual=residual, converged=converged, history=history)
