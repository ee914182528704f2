"""Dense symmetric solves and spectra for ntkit.predict / ntkit.bounds (private).

* :func:`solve_psd` — ``(K + ridge·I)⁻¹ B`` by Cholesky (``torch.linalg.cholesky_ex``); a
  failed factorization raises :class:`~ntkit.errors.SingularMatrixError` suggesting
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


def cond_threshold(dtype: torch.dtype) -> float:
    """Condition number above which a solve in ``dtype`` is flagged as meaningless."""
    return 1e12 if dtype == torch.float64 else 1e5


def default_rcond(N: int, dtype: torch.dtype) -> float:
    """NumPy's pseudo-inverse cutoff: ``N · eps`` relative to the largest eigenvalue."""
    return max(N, 1) * torch.finfo(dtype).eps


def _ridge_hint(A: torch.Tensor) -> str:
    scale = float(torch.diagonal(A).abs().mean()) if A.numel() else 1.0
    return f"{max(scale, 1e-300) * 1e-8:.1e}"


def _chol_solve(L: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    # two triangular solves: several times faster than torch.cholesky_solve on CPU
    Z = torch.linalg.solve_triangular(L, B, upper=False)
    return torch.linalg.solve_triangular(L.mT, Z, upper=True)


def estimate_cond(A: torch.Tensor, L: torch.Tensor, iters: int = 5) -> float:
    """Estimate the 2-norm condition number of SPD ``A`` from its Cholesky factor ``L``.

    Combines the pivots (``min L_ii² >= λ_min``, ``max A_ii <= λ_max``) with a few steps of
    power / inverse iteration (``O(iters · N²)``). Every ingredient is a bound from the
    correct side, so the result is a lower bound on the true condition number and in
    practice within a small factor of it.
    """
    N = A.shape[0]
    d = torch.diagonal(L)
    lam_max = float(torch.diagonal(A).max())
    lam_min = float((d * d).min())
    if N == 1:
        return 1.0
    gen = torch.Generator(device="cpu").manual_seed(1234)
    V = torch.randn(N, 2, generator=gen, dtype=torch.float64).to(A)
    V[:, 0] = 1.0
    V = V / V.norm(dim=0)
    U = V.clone()
    for _ in range(iters):
        V = A @ V
        V = V / V.norm(dim=0).clamp_min(1e-300)
        U = _chol_solve(L, U)
        U = U / U.norm(dim=0).clamp_min(1e-300)
    lam_max = max(lam_max, float((V * (A @ V)).sum(0).max()))
    inv_rq = float((U * _chol_solve(L, U)).sum(0).max())
    if inv_rq > 0:
        lam_min = min(lam_min, 1.0 / inv_rq)
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
        _warn_cond(
            estimate_cond(A, L),
            A.dtype,
            what,
            "Use ridge > 0 or pinv=True, or remove (near-)duplicate training points.",
            stacklevel + 1,
        )
        X = _chol_solve(L, B)
    if not bool(torch.isfinite(X).all()):
        raise NonFiniteError(f"solving with {what} overflowed to NaN/Inf; use ridge > 0 or a larger rcond")
    return X
