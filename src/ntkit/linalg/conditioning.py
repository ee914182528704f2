"""When a symmetric positive definite system is numerically singular: one criterion for ntkit.

Every dense solve in ntkit (``nk.predict``, ``nk.bounds``, ``nk.linalg.solve``) decides
singularity the same way, so that the answer does not depend on which CPU (and which BLAS
code path) factorized the matrix:

    ``A`` (``n × n``) is *numerically singular* when ``λ_min(A) <= SINGULAR_FACTOR · n · ε · λ_max(A)``,

with ``ε`` the dtype's machine epsilon. A Cholesky factorization of an exactly rank-deficient
Gram matrix may succeed or fail depending on rounding (backward error ``O(n ε ‖A‖)``,
Higham 2002, Thm 10.3); the computed ``λ_min`` is then ``O(ε ‖A‖)`` on every CPU, well below
the threshold (an exactly rank-deficient 6 × 6 Gram matrix: ``λ_min/λ_max ≈ 1e-17`` against
``1.3e-15``), so the criterion gives the same answer everywhere. The eigenvalues come from
:func:`estimate_extreme_eigenvalues` (pivots plus a few power / inverse-iteration steps),
both estimates from the conservative side: ``λ_min`` is never underestimated.
"""

from __future__ import annotations

import torch

#: Multiple of the ``n · ε`` backward error of Cholesky (Higham 2002, Thm 10.3) at or below
#: which ``λ_min / λ_max`` counts as zero.
SINGULAR_FACTOR = 1.0


def singular_threshold(n: int, dtype: torch.dtype) -> float:
    """Relative eigenvalue ``λ_min / λ_max`` at or below which an ``n × n`` system is singular."""
    return SINGULAR_FACTOR * max(n, 1) * torch.finfo(dtype).eps


def _start_vectors(A: torch.Tensor) -> torch.Tensor:
    # fixed, deterministic start vectors: the all-ones direction and one seeded random one
    gen = torch.Generator(device="cpu").manual_seed(1234)
    V = torch.randn(A.shape[0], 2, generator=gen, dtype=torch.float64).to(A)
    V[:, 0] = 1.0
    return V / V.norm(dim=0)


def estimate_lambda_max(A: torch.Tensor, iters: int = 5) -> float:
    """A lower bound on ``λ_max`` of symmetric ``A`` (``(n, n)``), close in practice.

    The larger of ``max A_ii`` and the Rayleigh quotient after ``iters`` power steps from
    fixed start vectors. Cost ``O(iters · n²)``.
    """
    lam_max = float(torch.diagonal(A).max())
    if A.shape[0] == 1:
        return lam_max
    V = _start_vectors(A)
    for _ in range(iters):
        V = A @ V
        V = V / V.norm(dim=0).clamp_min(1e-300)
    return max(lam_max, float((V * (A @ V)).sum(0).max()))


def estimate_lambda_min(L: torch.Tensor, iters: int = 5) -> float:
    """An upper bound on ``λ_min`` of ``A = L Lᵀ`` from its lower Cholesky factor ``L``.

    The smaller of ``min L_ii²`` and the inverse Rayleigh quotient after ``iters``
    inverse-iteration steps. Reads only the lower triangle of ``L`` (its upper triangle may
    hold anything, as after an in-place factorization). Cost ``O(iters · n²)``.
    """
    d = torch.diagonal(L)
    lam_min = float((d * d).min())
    if L.shape[0] == 1:
        return lam_min

    def inv(B: torch.Tensor) -> torch.Tensor:
        Z = torch.linalg.solve_triangular(L, B, upper=False)
        return torch.linalg.solve_triangular(L.mT, Z, upper=True)

    U = _start_vectors(L)
    for _ in range(iters):
        U = inv(U)
        U = U / U.norm(dim=0).clamp_min(1e-300)
    inv_rq = float((U * inv(U)).sum(0).max())
    if inv_rq > 0 and inv_rq == inv_rq:
        lam_min = min(lam_min, 1.0 / inv_rq)
    elif inv_rq != inv_rq:  # the solve overflowed: as singular as it gets
        lam_min = 0.0
    return lam_min


def is_numerically_singular(lam_min: float, lam_max: float, n: int, dtype: torch.dtype) -> bool:
    """The module's criterion: ``λ_min <= SINGULAR_FACTOR · n · ε · λ_max`` (or not finite)."""
    if not (lam_min == lam_min and lam_max == lam_max):  # NaN
        return True
    return lam_min <= singular_threshold(n, dtype) * lam_max
