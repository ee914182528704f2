"""Nyström kernel ridge regression solved Falkon-style (Rudi, Carratino & Rosasco 2017).

With ``M`` centres ``c_1..c_M`` the predictor is restricted to ``f(x) = Σ_j β_j k(x, c_j)``.
Minimizing ``‖K_nM β − y‖² + ridge · βᵀ K_MM β`` — the Nyström restriction of kernel
ridge regression ``(K + ridge·I) α = y``, with ``ridge`` on the scale of ``kernel_regression``
(added to the diagonal, not multiplied by ``n``) — gives the ``M × M`` system::

    H β = K_nMᵀ y,        H = K_nMᵀ K_nM + ridge · K_MM.

When the centres are all ``n`` training points, ``K_nM = K`` and ``H = K (K + ridge·I)``,
so ``β`` is the exact solution ``α``.

**Preconditioner** (FALKON). ``K_nMᵀ K_nM ≈ (n/M) K_MM²``, so with ``K_MM = TᵀT`` and
``(n/M) T Tᵀ + ridge·I = AᵀA`` (two ``M × M`` Cholesky factors, ``T`` with a tiny jitter)
the matrix ``B = T⁻¹ A⁻¹`` makes ``Bᵀ H B`` close to the identity; conjugate gradient runs
on ``Bᵀ H B γ = Bᵀ K_nMᵀ y`` and ``β = B γ``. It needs a handful of iterations, each one
pass over ``K_nM`` (:meth:`~ntkit.linalg.KernelOperator.gram`).

**Two ways to apply** ``K_nMᵀ K_nM``:

- ``"iterative"`` (when the ``n × M`` matrix ``K_nM`` fits the operator's budget): it is
  computed once and cached; each CG iteration is two passes over it (memory bound);
- ``"gram"`` (otherwise): one sweep over ``K_nM`` in row panels forms the ``M × M`` matrix
  ``K_nMᵀ K_nM`` (BLAS ``syrk``, ``n·M²`` flops); CG then runs on dense ``M × M`` products.
  Each kernel entry is computed once either way — never once per iteration.

**Cost.** ``n·M`` kernel entries, ``O(M³)`` for the two factors; memory ``2·M²`` float64
numbers (the factors; ``K_MM``'s buffer becomes ``T``) plus ``M²`` in ``"gram"`` mode, plus
the cache in ``"iterative"`` mode. Predictions cost ``m·M`` kernel entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import as_tensor, check_positive_int
from ..budget import parse_budget
from ..errors import ParameterError, ShapeError, SingularMatrixError
from ._validation import (
    as_square_kernel,
    as_targets,
    check_index,
    check_ridge,
    is_operator,
    sample_indices,
)
from .cg import conjugate_gradient
from .operator import KernelOperator

#: Default number of centres of ``solver="nystrom"``: ``min(n, 5000)``.
DEFAULT_CENTERS = 5000


def default_centers(n: int) -> int:
    """The default number of Nyström centres for ``n`` training points: ``min(n, 5000)``."""
    return min(n, DEFAULT_CENTERS)


@dataclass
class NystromSolution:
    """A fitted Nyström predictor ``f(x) = K(x, centres) β``.

    Attributes:
        beta: ``(M,)`` or ``(M, k)`` coefficients, shaped like the targets.
        index: ``(M,)`` training-set rows of the centres, or ``None`` when the centres were
            given as points.
        centers: ``(M, *in_shape)`` centre inputs, or ``None`` for a matrix input.
        iterations, residual, converged: of the preconditioned CG (see :class:`CGResult`).
        operator: the training operator (architecture, dtype, budget, backend) or ``None``.
        mode: ``"iterative"`` (``K_nM`` cached, one pass per CG step) or ``"gram"`` (one
            sweep forming ``K_nMᵀ K_nM``).
    """

    beta: torch.Tensor
    index: torch.Tensor | None
    centers: torch.Tensor | None
    iterations: int
    residual: float
    converged: bool
    operator: KernelOperator | None = None
    mode: str = "iterative"

    def alpha(self, n: int) -> torch.Tensor:
        """Coefficients over the ``n`` training points: ``β`` at the centres, 0 elsewhere."""
        if self.index is None:
            raise ParameterError("the centres were given as points, not training indices; use predict()")
        alpha = self.beta.new_zeros((n, *self.beta.shape[1:]))
        alpha[self.index.to(alpha.device)] = self.beta
        return alpha

    def predict(
        self, x_test: Any, *, memory_budget: Any = None, progress: bool | None = False
    ) -> torch.Tensor:
        """``K(x_test, centres) β``: ``(m,)`` or ``(m, k)``, tile by tile (nothing cached).

        ``memory_budget``: any :mod:`ntkit.budget` spelling (default: the operator's)."""
        op = self.operator
        if op is None or self.centers is None:
            raise ParameterError(
                "predict() needs a solution fitted on a KernelOperator; use k(x, X)[:, index] @ beta"
            )
        cross = op.with_inputs(
            x_test, self.centers, cache=False, tile=None, progress=progress,
            memory_budget=op.memory_budget if memory_budget is None else parse_budget(memory_budget),
        )
        return cross @ self.beta


def nystrom(
    kernel: Any,
    y: Any,
    *,
    centers: Any = None,
    ridge: float = 0.0,
    seed: int = 0,
    tol: float = 1e-8,
    maxiter: int | None = None,
    progress: bool | None = None,
) -> NystromSolution:
    """Fit Nyström kernel ridge regression by FALKON's preconditioned CG (module docstring).

    Args:
        kernel: the symmetric training operator ``KernelOperator(arch, x_train)`` or a
            dense ``(n, n)`` kernel matrix.
        y: ``(n,)`` or ``(n, k)`` targets.
        centers: ``None`` (``min(n, 5000)`` uniformly sampled training points), an int
            ``M <= n`` (that many, sampled with ``seed``), a 1-D integer array of distinct
            training rows, or (operator only) a ``(M, *in_shape)`` array of points.
        ridge: ``>= 0``, as in ``(K + ridge·I) α = y``.
        seed: seed of the centre sample.
        tol: relative residual of the preconditioned CG.
        maxiter: CG iteration cap (default ``min(2M, 500)``).
        progress: progress bars (``None``: only on a terminal).

    Returns:
        :class:`NystromSolution` (``.predict(x_test)``, ``.alpha(n)``).

    Raises:
        ParameterError: ``M > n`` or repeated indices. SingularMatrixError: ``ridge = 0``
            and ``K_MM`` singular.
    """
    ridge = check_ridge(ridge)
    kernel = as_square_kernel(kernel)
    operator = kernel if is_operator(kernel) else None
    n = kernel.shape[0]
    dtype = kernel.dtype
    device = operator.device if operator is not None else kernel.device
    Y, squeeze = as_targets(y, n, torch.float64, device)
    points = None
    index = None
    if centers is None:
        index = sample_indices(n, default_centers(n), seed)
    elif isinstance(centers, (int,)) and not isinstance(centers, bool):
        M = check_positive_int(centers, "centers")
        if M > n:
            raise ParameterError(
                f"centers={M} exceeds the number of training points n = {n}; use M <= n "
                "(M = n gives the exact kernel ridge solution)"
            )
        index = sample_indices(n, M, seed)
    else:
        c = torch.as_tensor(centers) if not isinstance(centers, torch.Tensor) else centers
        if c.is_floating_point() and c.ndim >= 2:
            if operator is None:
                raise ParameterError("centres given as points need a KernelOperator, not a dense matrix")
            points = as_tensor(c, "centers", dtype=dtype, min_ndim=2, device=device)
            if points.shape[1:] != operator.x1.shape[1:]:
                raise ShapeError(
                    f"centres must have the training example shape {tuple(operator.x1.shape[1:])}, "
                    f"got {tuple(points.shape[1:])}"
                )
        else:
            index = check_index(c, n)
    if index is not None:
        index = index.to(device)

    # K_nM: cached by its operator when it fits the budget ("iterative": every CG step is
    # a pass over it), else swept once into H = K_nMᵀK_nM ("gram"). K_MM: dense, M × M.
    if operator is not None:
        if index is not None:
            knm = operator.columns(index)
            x1 = getattr(operator.source, "x1", None)  # sources with inputs: centres as points
            points = None if x1 is None else x1[index]
        else:
            knm = operator.with_inputs(operator.x1, points, cache="auto", tile=None)
        mode = "iterative" if knm.cached else "gram"

        def kmm() -> torch.Tensor:
            if index is not None:
                kmm_op = operator.restrict(index, index, cache=False, tile=None, progress=False)
            else:
                kmm_op = operator.with_inputs(points, cache=False, tile=None, progress=False)
            try:
                return kmm_op._dense().to(torch.float64)
            finally:
                kmm_op.close()

        def gram(v: torch.Tensor) -> torch.Tensor:
            return knm.gram(v.to(dtype)).to(torch.float64)

        def knm_t(u: torch.Tensor) -> torch.Tensor:
            return knm.rmatvec(u.to(dtype)).to(torch.float64)
    else:
        mode = "iterative"
        C = kernel[:, index]

        def kmm() -> torch.Tensor:
            return kernel[index][:, index].to(torch.float64)

        def gram(v: torch.Tensor) -> torch.Tensor:
            return (C.T @ (C @ v.to(dtype))).to(torch.float64)

        def knm_t(u: torch.Tensor) -> torch.Tensor:
            return (C.T @ u.to(dtype)).to(torch.float64)

    if mode == "gram":
        H, rhs_knm = knm.gram_matrix(Y)  # one sweep over K_nM: each tile computed once
    else:
        H, rhs_knm = None, knm_t(Y)
    if operator is not None:
        knm.close()
    K_MM = kmm()
    M = K_MM.shape[0]
    if H is not None and ridge:
        H.add_(K_MM, alpha=ridge)  # H = K_nMᵀK_nM + ridge·K_MM; K_MM is not needed after this
    # FALKON's preconditioner, in place: K_MM's buffer becomes T_low (K_MM + j·I = T_low T_lowᵀ)
    T_low, jitter = _cholesky_in_place(K_MM, kmm, first_jitter=True)

    def inner() -> torch.Tensor:  # (n/M) T Tᵀ + ridge·I with T = T_lowᵀ
        out = T_low.T @ T_low
        out.mul_(n / M).diagonal().add_(ridge)
        return out

    A_low, _ = _cholesky_in_place(inner(), inner, first_jitter=False)

    def B(g: torch.Tensor) -> torch.Tensor:  # T⁻¹ A⁻¹ g
        z = torch.linalg.solve_triangular(A_low.T, g, upper=True)
        return torch.linalg.solve_triangular(T_low.T, z, upper=True)

    def Bt(u: torch.Tensor) -> torch.Tensor:  # A⁻ᵀ T⁻ᵀ u
        z = torch.linalg.solve_triangular(T_low, u, upper=False)
        return torch.linalg.solve_triangular(A_low, z, upper=False)

    def reduced(g: torch.Tensor) -> torch.Tensor:
        v = B(g)
        if H is not None:
            return Bt(H @ v)
        hv = gram(v)
        if ridge:  # ridge · K_MM v, with K_MM = T_low T_lowᵀ − j·I
            hv = hv + ridge * (T_low @ (T_low.T @ v) - jitter * v)
        return Bt(hv)

    rhs = Bt(rhs_knm)
    if maxiter is None:
        maxiter = min(2 * M, 500)
    res = conjugate_gradient(reduced, rhs, tol=tol, maxiter=maxiter, progress=progress)
    beta = B(res.x)
    if not bool(torch.isfinite(beta).all()):
        raise SingularMatrixError(
            "the Nyström system is singular (K_MM is not positive definite); use ridge > 0 or "
            "fewer / distinct centres"
        )
    beta = beta.to(dtype)
    return NystromSolution(
        beta=beta[:, 0] if squeeze else beta,
        index=index,
        centers=points,
        iterations=res.iterations,
        residual=res.residual,
        converged=res.converged,
        operator=operator,
        mode=mode,
    )


def _cholesky_in_place(A: torch.Tensor, recompute, first_jitter: bool) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of ``A + jitter·I`` in ``A``'s memory; returns it and the jitter.

    The first try adds FALKON's jitter ``M·ε·max(diag)`` if ``first_jitter`` (else none);
    each failure rebuilds ``A`` with ``recompute()`` and multiplies the jitter by ten. The
    jitter only shapes the preconditioner: the system solved is exact. The factor is a
    view with column-major strides (LAPACK then works in place, no second ``M²`` buffer).
    """
    M = A.shape[0]
    scale = float(A.diagonal().abs().max()) if M else 1.0
    if not scale > 0 or not math.isfinite(scale):
        raise SingularMatrixError("the centre kernel K_MM is zero or not finite; check the centres")
    base = M * torch.finfo(A.dtype).eps * scale
    jitter = base if first_jitter else 0.0
    info = torch.empty((), dtype=torch.int32, device=A.device)
    for attempt in range(12):
        if attempt:
            jitter = max(10 * jitter, base)
            A.copy_(recompute())
        A.diagonal().add_(jitter)
        low = A.T  # column-major view of the symmetric matrix
        torch.linalg.cholesky_ex(low, upper=False, out=(low, info))
        if int(info) == 0:
            return low, jitter
    raise SingularMatrixError(
        "could not factor K_MM + jitter·I; the centres' kernel is not positive semidefinite"
    )
