"""``(K + ridge·I) α = y`` by Cholesky, conjugate gradient or Nyström, and predictions.

:func:`solve` is the one entry point the rest of ntkit (``nk.predict.kernel_regression``,
the scikit-learn estimators) calls with ``solver=``; :func:`predict` evaluates
``k(x_test, X) α`` tile by tile.

``solver="auto"`` (:func:`choose_solver`), for ``n`` training points and a budget of
``memory_budget`` bytes (the operator's; for a dense matrix input the matrix is already in
memory):

1. ``"cholesky"`` when ``n <= 20,000`` and the dense ``n × n`` matrix (plus one tile) fits
   the budget — an exact ``O(n³)`` solve, factorized in place (no second ``n²`` copy);
2. ``"cg"`` when the symmetric operator caches its tiles (``n²/2`` numbers fit the budget):
   each CG iteration is then a pass over memory; the default preconditioner is a Nyström
   one of rank ``min(n, 500)`` (:class:`~ntkit.linalg.NystromPreconditioner`). ``"cg"``
   also runs, by request, on an operator that does not cache (matrix-free: each step
   recomputes the kernel); its default preconditioner then has rank ``min(n, 2000)``, and a
   loose ``tol`` with a ``maxiter`` is the way to bound the time (measured runs:
   benchmarks/RESULTS.md);
3. ``"nystrom"`` otherwise, with ``min(n, 5000)`` centres (:func:`~ntkit.linalg.nystrom`),
   whose passes cost ``n·M`` kernel entries instead of ``n²``.

For a dense matrix: ``"cholesky"`` up to ``n = 20,000``, ``"cg"`` beyond.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._validation import as_tensor, check_choice, check_finite_result
from ..budget import parse_budget
from ..errors import ShapeError
from ._validation import as_square_kernel, as_targets, check_ridge, is_operator
from .cg import conjugate_gradient
from .dense import solve_psd
from .nystrom import default_centers, nystrom
from .operator import KernelOperator
from .preconditioner import NystromPreconditioner

SOLVERS = ("auto", "cholesky", "cg", "nystrom")
#: Largest ``n`` for which ``solver="auto"`` factorizes (``n³/3`` flops; timings in benchmarks/RESULTS.md).
AUTO_CHOLESKY_MAX_N = 20_000
#: Rank of the default Nyström preconditioner of ``solver="cg"`` (kernel in memory)...
DEFAULT_PRECONDITIONER_RANK = 500
#: ...and on an operator that recomputes its tiles at every product (matrix-free), where one
#: CG step costs ``n²`` kernel entries and the preconditioner's ``n·l`` entries and
#: ``n·l²`` flops are cheap next to it: fewer steps pay (measured in benchmarks/RESULTS.md).
MATRIX_FREE_PRECONDITIONER_RANK = 2000


@dataclass
class SolveInfo:
    """How :func:`solve` solved: ``solver`` used, CG ``iterations``/``residual``/``converged``
    (``0``/``0.0``/``True`` for Cholesky) and the Nyström centres' ``index`` (else ``None``)."""

    solver: str
    iterations: int = 0
    residual: float = 0.0
    converged: bool = True
    index: torch.Tensor | None = None


def choose_solver(kernel: Any) -> str:
    """The solver ``solver="auto"`` picks for ``kernel`` (see the module docstring)."""
    kernel = as_square_kernel(kernel) if not is_operator(kernel) else kernel
    n = kernel.shape[0]
    if not is_operator(kernel):
        return "cholesky" if n <= AUTO_CHOLESKY_MAX_N else "cg"
    dense = n * n * kernel.source.itemsize + kernel.source.tile_bytes(1, 1)
    if n <= AUTO_CHOLESKY_MAX_N and dense <= kernel.memory_budget:
        return "cholesky"
    if kernel.symmetric and kernel.cached:
        return "cg"
    return "nystrom"


def solve(
    kernel: Any,
    y: Any,
    *,
    solver: str = "auto",
    ridge: float = 0.0,
    tol: float | None = None,
    maxiter: int | None = None,
    preconditioner: Any = "auto",
    centers: Any = None,
    seed: int = 0,
    progress: bool | None = None,
    return_info: bool = False,
    overwrite: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SolveInfo]:
    """Solve ``(K + ridge·I) α = y`` for the training kernel ``K``.

    Args:
        kernel: ``KernelOperator(arch, x_train)`` (symmetric) or a dense ``(n, n)``
            kernel matrix (tensor or NumPy array; not modified).
        y: ``(n,)`` or ``(n, k)`` targets (e.g. one-hot classes, or ``y − f_0``).
        solver: ``"auto"``, ``"cholesky"``, ``"cg"`` or ``"nystrom"``.
        ridge: ``>= 0``, added to the diagonal (not scaled by ``n``).
        tol: CG relative residual (default ``1e-6`` for ``"cg"``, ``1e-8`` for
            ``"nystrom"``'s well-conditioned reduced system).
        maxiter: CG iteration cap (defaults: see :func:`conjugate_gradient`, :func:`nystrom`).
        preconditioner: ``"cg"`` only: ``"auto"`` (Nyström of rank ``min(n, 500)``, or
            ``min(n, 2000)`` on an operator that does not cache), ``None``, a callable
            ``r -> z``, or an object with ``apply(r)``.
        centers: ``"nystrom"`` only: ``None`` (``min(n, 5000)``), an int ``M <= n``, or
            distinct training-row indices.
        seed: seed of the Nyström centres / preconditioner columns.
        progress: progress bars (``None``: only on a terminal).
        return_info: also return a :class:`SolveInfo`.
        overwrite: ``"cholesky"`` on a dense float tensor: it may be overwritten by its factor
            (saves the one ``n × n`` copy; the caller must not use it afterwards).

    Returns:
        ``α`` shaped like ``y`` (float64, or float32 for a float32 operator/matrix): the
        predictor is ``f(x) = k(x, X) α`` (:func:`predict`). For ``"nystrom"``, ``α`` is
        zero except at the centres (``info.index``), so that ``f`` is the Nyström predictor.

    Raises:
        MemoryBudgetError: ``"cholesky"`` on an operator whose dense matrix exceeds its budget.
        SingularMatrixError: ``K + ridge·I`` is singular (use ``ridge > 0``).
        ConvergenceWarning: (warning) CG stopped at ``maxiter``.
    """
    check_choice(solver, "solver", SOLVERS)
    ridge = check_ridge(ridge)
    given = kernel
    kernel = as_square_kernel(kernel)
    # a matrix converted from NumPy (or another dtype) is ours to overwrite; the caller's is not
    owned = overwrite or not isinstance(given, torch.Tensor) or kernel.data_ptr() != given.data_ptr()
    n = kernel.shape[0]
    dtype = kernel.dtype
    device = kernel.device
    Y, squeeze = as_targets(y, n, dtype, device)
    if solver == "auto":
        solver = choose_solver(kernel)
    if solver == "cholesky":
        alpha, info = _cholesky(kernel, Y, ridge, owned), SolveInfo("cholesky")
    elif solver == "cg":
        alpha, info = _cg(kernel, Y, ridge, tol, maxiter, preconditioner, seed, progress)
    else:
        sol = nystrom(
            kernel, Y, centers=default_centers(n) if centers is None else centers, ridge=ridge,
            seed=seed, tol=1e-8 if tol is None else tol, maxiter=maxiter, progress=progress,
        )
        alpha = sol.alpha(n).to(dtype)
        info = SolveInfo("nystrom", sol.iterations, sol.residual, sol.converged, sol.index)
    check_finite_result(
        alpha, f"the {solver} solution α ({dtype})",
        "the system is too badly scaled for this dtype: rescale the targets, use ridge > 0, or "
        "compute in float64",
    )
    out = alpha[:, 0] if squeeze else alpha
    return (out, info) if return_info else out


def _cholesky(kernel: Any, Y: torch.Tensor, ridge: float, owned: bool) -> torch.Tensor:
    """The dense solve (:func:`~ntkit.linalg.dense.solve_psd`), in place when the matrix is ours."""
    K = kernel.to_dense() if is_operator(kernel) else kernel
    return solve_psd(
        K, Y, ridge=ridge, overwrite=owned or is_operator(kernel),
        what="the kernel matrix" + (" + ridge·I" if ridge else ""), stacklevel=3,
    )


def _cg(kernel, Y, ridge, tol, maxiter, preconditioner, seed, progress) -> tuple[torch.Tensor, SolveInfo]:
    n = kernel.shape[0]
    if isinstance(preconditioner, str):
        check_choice(preconditioner, "preconditioner", ("auto",))
        matrix_free = is_operator(kernel) and not kernel.cached
        rank = MATRIX_FREE_PRECONDITIONER_RANK if matrix_free else DEFAULT_PRECONDITIONER_RANK
        preconditioner = NystromPreconditioner(kernel, rank=min(n, rank), ridge=ridge, seed=seed)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        out = kernel @ v
        return out + ridge * v if ridge else out

    res = conjugate_gradient(
        matvec, Y, preconditioner=preconditioner, tol=1e-6 if tol is None else tol,
        maxiter=maxiter, progress=progress,
    )
    return res.x, SolveInfo("cg", res.iterations, res.residual, res.converged)


def predict(
    arch: Any,
    x_test: Any,
    x_train: Any,
    alpha: Any,
    *,
    get: str = "ntk",
    memory_budget: Any = None,
    dtype: Any = None,
    backend: str = "local",
    client: Any = None,
    progress: bool | None = False,
) -> torch.Tensor:
    """``f(x_test) = k(x_test, x_train) α``, tile by tile, never forming the cross matrix.

    Training rows whose coefficients are all exactly zero (the non-centres of a Nyström
    solution) are skipped, so a Nyström prediction costs ``m·M`` kernel entries.

    Args:
        arch: the architecture; ``x_test`` ``(m, *in_shape)``; ``x_train`` ``(n, *in_shape)``.
        alpha: ``(n,)`` or ``(n, k)`` from :func:`solve`.
        get, memory_budget, dtype, backend, client, progress: as for :class:`KernelOperator`.

    Returns:
        ``(m,)`` or ``(m, k)`` predictions.

    Raises:
        NonFiniteError: the kernel or the product overflowed (the message says what to change).
    """
    from .._validation import resolve_dtype

    memory_budget = parse_budget(memory_budget)
    dt = resolve_dtype(dtype)
    xt = as_tensor(x_train, "x_train", dtype=dt, min_ndim=2)
    a = as_tensor(alpha, "alpha", dtype=dt, min_ndim=1, max_ndim=2, device=xt.device)
    if a.shape[0] != xt.shape[0]:
        raise ShapeError(f"alpha has {a.shape[0]} rows but x_train has {xt.shape[0]} examples")
    rows = a.reshape(a.shape[0], -1).ne(0).any(1)
    if not bool(rows.all()):
        if not bool(rows.any()):
            m = as_tensor(x_test, "x_test", dtype=dt, min_ndim=2).shape[0]
            return a.new_zeros((m, *a.shape[1:]))
        xt, a = xt[rows], a[rows]
    op = KernelOperator(
        arch, x_test, xt, get, memory_budget=memory_budget, dtype=dt, cache=False,
        backend=backend, client=client, progress=progress,
    )
    try:
        return op @ a  # checked finite by the operator
    finally:
        op.close()
