"""Dense symmetric solves and spectra for ntkit.predict / ntkit.bounds (private).

* :func:`solve_psd` — ``(K + ridge·I)⁻¹ B`` by Cholesky (``torch.linalg.cholesky_ex``); a
  failed factorization, or a numerically singular matrix by the one criterion of
  :mod:`ntkit.linalg.conditioning`, raises :class:`~ntkit.errors.SingularMatrixError` suggesting
  ``ridge > 0`` or ``pinv=True``; a condition number above :func:`cond_threshold` gives an
  :class:`~ntkit.errors.IllConditionedWarning` that states the estimate. ``pinv=True`` uses
  the eigendecomposition and drops eigenvalues ``<= rcond · λ_max``.
* :func:`eigh_psd` — eigendecomposition of a kernel matrix that must be positive
  semidefinite; eigenvalues in ``[-tol·λ_max, 0)`` (round-off) are clipped to 0, more
  negative ones are an error.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import IllConditionedWarning, NonFiniteError, ParameterError, SingularMatrixError
from ..linalg.conditioning import (
    estimate_lambda_max,
    estimate_lambda_min,
    is_numerically_singular,
    singular_threshold,
)


def cond_threshold(dtype: torch.dtype) -> float:
    """Condition number above which a solve in ``dtype`` is flagged as meaningless."""
    return 1e12 if dtype == torch.float64 else 1e5


def default_rcond(N: int, dtype: torch.dtype) -> float:
    """NumPy's pseudo-inverse cutoff: ``N · eps`` relative to the largest eigenvalue."""
    return max(N, 1) * torch.finfo(dtype).eps


def _ridge_hint(A: torch.Tensor) -> str:
    scale = float(torch.diagonal(A).abs().mean()) if A.numel() else 1.0
    return f"{max(scale, 1e-300) * 1e-8:.1e}"


def estimate_cond(A: torch.Tensor, L: torch.Tensor, iters: int = 5) -> float:
    """Estimate the 2-norm condition number of SPD ``A`` from its Cholesky factor ``L``.

    ``λ_max / λ_min`` from :mod:`ntkit.linalg.conditioning`:
    a lower bound on the true condition number, in practice within a small factor of it.
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
    K: torch.Tensor, tol: float, what: str, *, vectors: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``K = V diag(w) Vᵀ`` with ``w`` ascending and clipped at 0 (documented clip).

    Raises ParameterError if some eigenvalue is below ``-tol · max|w|``: the matrix is not a
    kernel (Gram) matrix. ``vectors=False`` computes eigenvalues only (``V`` is None).
    """
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


def solve_psd(
    K: torch.Tensor,
    B: torch.Tensor,
    *,
    ridge: float,
    pinv: bool,
    rcond: float | None,
    tol: float,
    what: str,
    stacklevel: int = 2,
) -> torch.Tensor:
    """Return ``(K + ridge·I)⁻¹ B`` (or ``(K + ridge·I)⁺ B`` with ``pinv=True``).

    ``K``: ``(N, N)`` symmetric PSD; ``B``: ``(N, c)``; result ``(N, c)``.
    """
    N = K.shape[0]
    A = K + ridge * torch.eye(N, dtype=K.dtype, device=K.device) if ridge else K
    if pinv:
        w, V = eigh_psd(A, tol, what)
        rc = default_rcond(N, A.dtype) if rcond is None else rcond
        w_max = float(w[-1]) if N else 0.0
        keep = w > rc * w_max
        inv = torch.where(keep, 1.0 / torch.where(keep, w, torch.ones_like(w)), torch.zeros_like(w))
        if bool(keep.any()):
            kept_cond = w_max / float(w[keep].min())
            _warn_cond(
                kept_cond,
                A.dtype,
                f"{what} (eigenvalues kept by pinv, rcond={rc:.1e})",
                "Increase rcond or use ridge > 0.",
                stacklevel + 1,
            )
        X = V @ (inv[:, None] * (V.T @ B))
    else:
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) != 0:
            raise SingularMatrixError(
                f"{what} is singular or not positive definite (Cholesky failed at pivot "
                f"{int(info)} of {N}); a ridgeless solve needs an invertible kernel. Use "
                f"ridge > 0 (e.g. ridge={_ridge_hint(A)}) or pinv=True for the minimum-norm "
                "(pseudo-inverse) solution; duplicated training points also cause this"
            )
        lam_min, lam_max = estimate_lambda_min(L), estimate_lambda_max(A)
        if is_numerically_singular(lam_min, lam_max, N, A.dtype):
            raise SingularMatrixError(
                f"{what} is numerically singular (λ_min ≈ {lam_min:.2e} <= "
                f"{singular_threshold(N, A.dtype):.1e} · λ_max ≈ {lam_max:.2e}); a ridgeless solve "
                f"needs an invertible kernel. Use ridge > 0 (e.g. ridge={_ridge_hint(A)}) or "
                "pinv=True for the minimum-norm (pseudo-inverse) solution; duplicated training "
                "points also cause this"
            )
        _warn_cond(
            lam_max / lam_min,
            A.dtype,
            what,
            "Use ridge > 0 or pinv=True, or remove (near-)duplicate training points.",
            stacklevel + 1,
        )
        X = torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, B, upper=False), upper=True)
    if not bool(torch.isfinite(X).all()):
        raise NonFiniteError(f"solving with {what} overflowed to NaN/Inf; use ridge > 0 or a larger rcond")
    return X
