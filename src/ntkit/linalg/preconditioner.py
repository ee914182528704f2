"""A Nyström preconditioner for conjugate gradient on ``K + ridge·I``.

From ``l`` columns of the kernel, ``C = K[:, S]`` and ``W = K[S, S]``, the Nyström
approximation ``K̂ = C W⁻¹ Cᵀ = U diag(λ̂) Uᵀ`` (``U`` orthonormal ``n × l``) gives the
preconditioner of Frangella, Tropp & Udell (2023, "Randomized Nyström preconditioning")::

    P⁻¹ = (λ̂_l + μ) · U (diag(λ̂) + μ I)⁻¹ Uᵀ + (I − U Uᵀ),        μ = ridge,

which maps the top ``l`` directions of ``K`` to about ``λ̂_l + μ`` and leaves the rest.
CG then needs iterations depending on ``λ_{l+1}(K) / μ`` instead of ``λ_1(K) / μ``.

Cost: ``n·l`` kernel entries once (a pass over ``K[:, S]`` under the operator's budget),
``O(n·l²)`` for the factorization, ``O(n·l·k)`` per application; memory ``n·l`` numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_positive_int
from ..errors import ParameterError
from ._validation import check_ridge, matrix_columns, sample_indices


class NystromPreconditioner:
    """``P⁻¹ ≈ (K + ridge·I)⁻¹`` from ``rank`` uniformly sampled columns (see module docstring).

    Args:
        kernel: a symmetric :class:`~ntkit.linalg.KernelOperator` or an ``(n, n)`` matrix.
        rank: number of sampled columns ``l`` (``<= n``).
        ridge: ``μ >= 0``, the ridge of the system CG solves.
        seed: seed of the column sample.
        index: the columns to use instead of a random sample (1-D integers).

    Use as ``conjugate_gradient(A, b, preconditioner=P)`` (``P.apply(r)`` for ``(n, k)``).
    """

    def __init__(
        self, kernel: Any, rank: int = 500, ridge: float = 0.0, *, seed: int = 0, index: Any = None
    ) -> None:
        self.ridge = check_ridge(ridge)
        n = kernel.shape[0]
        if index is None:
            rank = min(check_positive_int(rank, "rank"), n)
            index = sample_indices(n, rank, seed)
        self.index = torch.as_tensor(index).long()
        C = matrix_columns(kernel, self.index)  # (n, l)
        dtype = C.dtype
        C = C.to(torch.float64)
        W = C[self.index.to(C.device)]
        W = 0.5 * (W + W.T)
        scale = float(W.diagonal().abs().max()) if W.numel() else 0.0
        if not scale > 0:
            raise ParameterError(
                "the sampled kernel columns are zero; the Nyström preconditioner needs k(x, x) > 0"
            )
        shift = 1e-10 * scale * W.shape[0]
        eye = torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
        L, info = torch.linalg.cholesky_ex(W + shift * eye)
        while int(info) != 0:  # W numerically indefinite (duplicates): grow the shift
            shift *= 100
            L, info = torch.linalg.cholesky_ex(W + shift * eye)
        B = torch.linalg.solve_triangular(L, C.T, upper=False).T  # C L⁻ᵀ, K̂ = B Bᵀ
        s2, V = torch.linalg.eigh(B.T @ B)
        keep = s2 > 1e-12 * float(s2.max())
        s2, V = s2[keep], V[:, keep]
        self.U = ((B @ V) / s2.sqrt()).to(dtype)  # (n, r) orthonormal columns
        self.eigenvalues = s2.to(dtype)  # λ̂, ascending
        lam_l = float(s2.min())
        self._scale = (((lam_l + self.ridge) / (s2 + self.ridge)) - 1.0).to(dtype)

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        """``P⁻¹ r`` for ``r`` of shape ``(n,)`` or ``(n, k)``."""
        U = self.U.to(r.dtype)
        coef = U.T @ r
        coef = coef * (self._scale.to(r.dtype)[:, None] if r.ndim == 2 else self._scale.to(r.dtype))
        return r + U @ coef

    __call__ = apply
