"""Scale: matrix-free kernel operators, iterative solvers and a Dask backend.

- :class:`KernelOperator` — ``op @ v`` tile by tile under a memory budget (never the
  ``n × n`` matrix), ``op.diag()``, ``op.to_dense()`` (refused past the budget), over any
  kernel source (:mod:`ntkit.sources`: an architecture's kernel, the empirical NTK of a
  fixed model via ``ntkit.empirical.EmpiricalNTKSource``, a precomputed matrix via
  :class:`TensorSource`);
  ``backend="dask"`` (:class:`DaskBackend`) computes the tiles on a ``dask.distributed``
  cluster, :class:`LocalBackend` on a thread pool.
- :func:`solve_psd` — the one dense solve of ntkit (Cholesky, one singularity criterion,
  condition warning, ridge, pseudo-inverse, float64 accumulation), :func:`eigh_psd`;
- :func:`solve` — ``(K + ridge·I) α = y`` by ``"cholesky"``, ``"cg"`` or ``"nystrom"``
  (``"auto"`` chooses by size and memory); :func:`predict` — ``k(x_test, X) α``.
- :func:`conjugate_gradient` with a preconditioner hook (:class:`NystromPreconditioner`),
  :func:`nystrom` (FALKON-style Nyström kernel ridge regression).
"""

from ..budget import DEFAULT_MEMORY_BUDGET, parse_bytes
from ..sources import KernelSource, TensorSource
from ._errors import ClusterError, ConvergenceWarning
from .cg import CGResult, conjugate_gradient
from .dask_backend import DaskBackend, close_default_cluster, get_client
from .dense import cond_threshold, default_rcond, eigh_psd, estimate_cond, solve_psd
from .local_backend import LocalBackend
from .nystrom import NystromSolution, nystrom
from .operator import KernelOperator, OperatorOptions
from .preconditioner import NystromPreconditioner
from .solve import SOLVERS, SolveInfo, choose_solver, predict, solve

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "SOLVERS",
    "CGResult",
    "ClusterError",
    "ConvergenceWarning",
    "DaskBackend",
    "KernelOperator",
    "KernelSource",
    "LocalBackend",
    "NystromPreconditioner",
    "NystromSolution",
    "OperatorOptions",
    "SolveInfo",
    "TensorSource",
    "choose_solver",
    "close_default_cluster",
    "cond_threshold",
    "conjugate_gradient",
    "default_rcond",
    "eigh_psd",
    "estimate_cond",
    "get_client",
    "nystrom",
    "parse_bytes",
    "predict",
    "solve",
    "solve_psd",
]
