"""The dense solve of ntkit: symmetric positive (semi)definite systems held in memory.

Every dense solve in the library goes through :func:`solve_psd` (``nk.predict``,
``nk.bounds``, ``nk.linalg.solve(solver="cholesky")``, the scikit-learn estimators), so that
a kernel matrix gets the same checks, warnings and errors wherever it is solved:

* ``(K + ridge·I) X = B`` by Cholesky, factorized in place in one ``n × n`` buffer (the
  caller's when ``overwrite=True``, else one copy);
* singularity by the one criterion of :mod:`ntkit.linalg.conditioning`
  (``λ_min <= n·ε·λ_max``), the same on every CPU whether or not the factorization fails:
  :class:`~ntkit.errors.SingularMatrixError` suggesting ``ridge > 0`` or ``pinv=True``;
* an :class:`~ntkit.errors.IllConditionedWarning` stating the estimated condition number
  when it exceeds :func:`cond_threshold` (``1e12`` in float64, ``1e5`` in float32);
* ``pinv=True``: the pseudo-inverse from the eigendecomposition (:func:`eigh_psd`),
  eigenvalues ``<= rcond·λ_max`` dropped — the minimum-norm solution for a singular ``K``;
* ``dtype=torch.float64`` on a float32 ``K``: the factorization and the triangular solves
  accumulate in float64 (the result is float64).

:func:`eigh_psd` is the eigendecomposition of a kernel matrix that must be positive
semidefinite (round-off negatives clipped to 0, genuinely negative eigenvalues an error).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from .._validation import resolve_dtype
from ..errors import IllConditionedWarning, NonFiniteError, ParameterError, ShapeError, SingularMatrixError
from .conditioning import (
    estimate_lambda_max,
    estimate_lambda_min,
    is_numerically_singular,
    singular_threshold,
)

__all__ = ["cond_threshold", "default_rcond", "eigh_psd", "estimate_cond", "solve_psd"]


def cond_threshold(dtype: torch.dtype) -> float:
    """Condition number above which a solve in ``dtype`` is flagged as meaningless.

    ``1e12`` for float64 and ``1e5`` for float32: beyond, a relative error of about
    ``cond · ε`` (Higham 2002, §10.1) leaves fewer than ~4 (float64) / ~2 (float32) digits.
    """
    return 1e12 if dtype == torch.float64 else 1e5


def default_rcond(n: int, dtype: torch.dtype) -> float:
    """NumPy's pseudo-inverse cutoff: ``n · ε`` relative to the largest eigenvalue."""
    return max(n, 1) * torch.finfo(dtype).eps


def estimate_cond(A: torch.Tensor, L: torch.Tensor, iters: int = 5) -> float:
    """The 2-norm condition number of SPD ``A`` ``(n, n)`` from its lower Cholesky factor ``L``.

    ``λ_max / λ_min`` estimated as in :mod:`ntkit.linalg.conditioning`: a lower bound on the
    true condition number, in practice within a small factor of it (``inf`` if ``λ_min <= 0``).
    """
    lam_min, lam_max = estimate_lambda_min(L, iters), estimate_lambda_max(A, iters)
    if lam_min <= 0:
        return float("inf")
    return lam_max / lam_min


def _warn_cond(cond: float, dtype: torch.dtype, what: str, advice: str, stacklevel: int) -> None:
    thr = cond_threshold(dtype)
    if cond > thr:
        warnings.warn(
            f"{what} has condition number ≈ {cond:.2e} (> {thr:.0e} for {dtype}); the result "
            f"may be meaningless. {advice}",
            IllConditionedWarning,
            stacklevel=stacklevel + 1,
        )


def eigh_psd(
    K: torch.Tensor, tol: float | None = None, what: str = "the kernel matrix", *, vectors: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``K = V diag(w) Vᵀ`` with ``w`` ascending and clipped at 0 (round-off only).

    Args:
        K: ``(n, n)`` symmetric (only its lower triangle is read, as by ``torch.linalg.eigh``).
        tol: eigenvalues in ``[−tol·max|w|, 0)`` are round-off and clipped to 0; default
            ``√ε`` of ``K``'s dtype.
        what: the matrix's name in error messages.
        vectors: ``False`` computes the eigenvalues only (``V`` is None).

    Returns:
        ``(w (n,), V (n, n) or None)`` in ``K``'s dtype.

    Raises:
        ParameterError: an eigenvalue below ``−tol·max|w|``: ``K`` is not a kernel (Gram) matrix.
    """
    tol = math.sqrt(torch.finfo(K.dtype).eps) if tol is None else float(tol)
    if vectors:
        w, V = torch.linalg.eigh(K)
    else:
        w, V = torch.linalg.eigvalsh(K), None
    scale = float(w.abs().max()) if w.numel() else 0.0
    if scale > 0 and float(w[0]) < -tol * scale:
        raise ParameterError(
            f"{what} is not positive semidefinite: smallest eigenvalue {float(w[0]):.3g} "
            f"(largest {float(w[-1]):.3g}); a kernel matrix must be a Gram matrix — check how "
            "it was computed"
        )
    return w.clamp_min(0.0), V


def _singular_advice(hint: float) -> str:
    return (
        f"a ridgeless solve needs an invertible kernel. Use ridge > 0 (e.g. ridge={hint:.1e}) or "
        "pinv=True for the minimum-norm (pseudo-inverse) solution; duplicated training points "
        "also cause this"
    )


def solve_psd(
    K: torch.Tensor,
    B: torch.Tensor,
    *,
    ridge: float = 0.0,
    pinv: bool = False,
    rcond: float | None = None,
    tol: float | None = None,
    dtype: Any = None,
    overwrite: bool = False,
    what: str = "the kernel matrix",
    stacklevel: int = 1,
) -> torch.Tensor:
    """``(K + ridge·I)⁻¹ B`` by Cholesky, or ``(K + ridge·I)⁺ B`` with ``pinv=True``.

    Args:
        K: ``(n, n)`` symmetric positive (semi)definite tensor (symmetry is not checked; the
            factorization reads the lower triangle).
        B: ``(n,)`` or ``(n, c)`` right-hand sides.
        ridge: ``>= 0`` added to the diagonal (not scaled by ``n``).
        pinv: pseudo-inverse through the eigendecomposition instead of Cholesky.
        rcond: ``pinv`` cutoff relative to ``λ_max``; default ``n·ε`` (:func:`default_rcond`).
        tol: ``pinv`` only: the round-off tolerance of :func:`eigh_psd` (default ``√ε``).
        dtype: computation (and result) dtype, ``torch.float64`` or ``torch.float32``; default
            ``K``'s. ``torch.float64`` on a float32 ``K`` accumulates in float64.
        overwrite: ``K`` may be overwritten by its factor (saves the one ``n × n`` copy;
            only when ``K`` already has the computation dtype).
        what: the matrix's name in warnings and errors.
        stacklevel: ``1``: warnings point at the caller of this function; ``2``: its caller...

    Returns:
        ``X`` of ``B``'s shape, in the computation dtype, on ``K``'s device.

    Raises:
        SingularMatrixError: ``K + ridge·I`` is not positive definite or numerically singular
            (:mod:`ntkit.linalg.conditioning`), with ``pinv=False``.
        NonFiniteError: the solution overflowed.
        ShapeError: ``K`` is not square or ``B`` does not have ``n`` rows.
        IllConditionedWarning: (warning) the condition number exceeds :func:`cond_threshold`.
    """
    dt = K.dtype if dtype is None else resolve_dtype(dtype)
    if dt not in (torch.float32, torch.float64):
        raise ParameterError(f"solve_psd computes in torch.float64 or torch.float32, got {dt}")
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ShapeError(f"{what} must be a square (n, n) matrix, got shape {tuple(K.shape)}")
    n = K.shape[0]
    if B.ndim not in (1, 2) or B.shape[0] != n:
        raise ShapeError(f"the right-hand side must be ({n},) or ({n}, c), got shape {tuple(B.shape)}")
    B = B.to(dtype=dt, device=K.device)
    if overwrite and K.dtype == dt and K.is_contiguous():
        A = K
    else:  # one copy, ours to factorize in place
        A = K.to(dtype=dt, copy=True, memory_format=torch.contiguous_format)
    if ridge:
        A.diagonal().add_(float(ridge))
    if pinv:
        X = _pinv_solve(A, B, rcond, tol, what, stacklevel + 1)
    else:
        X = _cholesky_solve(A, B, what, stacklevel + 1)
    if not bool(torch.isfinite(X).all()):
        raise NonFiniteError(f"solving with {what} overflowed to NaN/Inf; use ridge > 0 or a larger rcond")
    return X


def _pinv_solve(A, B, rcond, tol, what, stacklevel) -> torch.Tensor:
    n = A.shape[0]
    w, V = eigh_psd(A, tol, what)
    rc = default_rcond(n, A.dtype) if rcond is None else rcond
    w_max = float(w[-1]) if n else 0.0
    keep = w > rc * w_max
    inv = torch.where(keep, 1.0 / torch.where(keep, w, torch.ones_like(w)), torch.zeros_like(w))
    if bool(keep.any()):
        _warn_cond(
            w_max / float(w[keep].min()),
            A.dtype,
            f"{what} (eigenvalues kept by pinv, rcond={rc:.1e})",
            "Increase rcond or use ridge > 0.",
            stacklevel + 1,
        )
    Bm = B.reshape(n, -1)
    return (V @ (inv[:, None] * (V.T @ Bm))).reshape(B.shape)


def _cholesky_solve(A, B, what, stacklevel) -> torch.Tensor:
    """Factorize ``A`` (contiguous, ours) in place and solve."""
    n = A.shape[0]
    hint = max(float(torch.diagonal(A).abs().mean()) if n else 1.0, 1e-300) * 1e-8
    lam_max = estimate_lambda_max(A)  # before the factor overwrites A
    Ac = A.T  # symmetric, so this column-major view is the same matrix: LAPACK works in place
    info = torch.empty((), dtype=torch.int32, device=A.device)
    torch.linalg.cholesky_ex(Ac, upper=False, out=(Ac, info))
    if int(info) != 0:
        raise SingularMatrixError(
            f"{what} is singular or not positive definite (Cholesky failed at pivot "
            f"{int(info)} of {n}); {_singular_advice(hint)}"
        )
    lam_min = estimate_lambda_min(Ac)
    if is_numerically_singular(lam_min, lam_max, n, A.dtype):
        raise SingularMatrixError(
            f"{what} is numerically singular (λ_min ≈ {lam_min:.2e} <= "
            f"{singular_threshold(n, A.dtype):.1e} · λ_max ≈ {lam_max:.2e}); {_singular_advice(hint)}"
        )
    _warn_cond(
        lam_max / lam_min,
        A.dtype,
        what,
        "Use ridge > 0 or pinv=True, or remove (near-)duplicate training points.",
        stacklevel + 1,
    )
    Bm = B.reshape(n, -1)
    Z = torch.linalg.solve_triangular(Ac, Bm, upper=False)
    return torch.linalg.solve_triangular(Ac.T, Z, upper=True).reshape(B.shape)
