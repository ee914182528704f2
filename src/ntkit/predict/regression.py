"""Kernel regression — the ``t = ∞`` predictor of gradient descent — and the GD step-size limit."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._kernel_inputs import (
    KernelData,
    prepare_cross,
    prepare_kernel,
    prepare_outputs,
    prepare_targets,
    to_caller,
)
from .._validation import check_choice, check_scalar, work_dtype
from ..errors import ParameterError, ShapeError
from ..linalg import eigh_psd, solve_psd


def kernel_regression(
    k_train_train: Any,
    y_train: Any,
    k_test_train: Any | None = None,
    *,
    ridge: float = 0.0,
    fx_train_0: Any | None = None,
    fx_test_0: Any | None = None,
    pinv: bool = False,
    rcond: float | None = None,
    dtype: Any = None,
    solver: str = "auto",
) -> torch.Tensor:
    r"""The kernel-trick predictor, the ``t = ∞`` limit of gradient descent on the MSE.

    In the lazy regime a network trained by gradient descent (or gradient flow) on
    ``(1/2n)‖f − y‖²`` from ``f_0`` converges to (Jacot et al. 2018; Lee et al. 2019,
    "Wide neural networks of any depth evolve as linear models under gradient descent")::

        f_∞(x) = f_0(x) + k(x, X) (H + ridge·I)⁻¹ (y − f_0(X)),     H = k(X, X).

    With ``ridge = 0`` this is the minimum-norm interpolant of the residual. ``ridge > 0``
    is kernel ridge regression (``ridge`` is added to the diagonal as is, not scaled by
    ``n``); it is also the limit of gradient descent on
    ``(1/2n)(‖f − y‖² + ridge·‖w − w0‖²)`` for the linearized model.

    Args:
        k_train_train: ``H = k(X, X)``, ``(n, n)`` (one kernel shared by all outputs) or a
            multi-output empirical NTK ``(n, n, o, o)``. Must be symmetric (checked, to
            ``sqrt(eps)`` relative) and positive (semi)definite.
        y_train: targets ``(n,)`` or ``(n, o)``.
        k_test_train: ``k(x, X)``, ``(m, n)`` (or ``(m, n, o, o)``). ``None`` returns the
            predictions on the training set.
        ridge: ``>= 0``, added to the diagonal of ``H``.
        fx_train_0: network outputs at initialization on ``X``, shape of ``y_train``;
            ``None`` means zeros.
        fx_test_0: outputs at initialization on the test points, ``(m,) + y_train.shape[1:]``;
            ``None`` means zeros. Only with ``k_test_train``.
        pinv: use the pseudo-inverse (eigendecomposition, eigenvalues
            ``<= rcond·λ_max`` dropped) instead of a Cholesky solve; gives the minimum-norm
            solution for singular ``H`` — the limit gradient flow reaches.
        rcond: pseudo-inverse cutoff relative to ``λ_max``; default ``N·eps`` (as NumPy).
            Dense path only: refused (ParameterError) with operators or iterative solvers.
        dtype: computation dtype, default float64 (for a :class:`~ntkit.linalg.KernelOperator`
            the operator's own dtype; another one is a ParameterError).
        solver: ``"auto"`` (a Cholesky solve for matrices; :func:`ntkit.linalg.solve`'s
            choice for operators), ``"cholesky"``, ``"cg"`` or ``"nystrom"`` (the iterative
            solvers of :mod:`ntkit.linalg`). ``k_train_train`` and ``k_test_train`` may also
            be :class:`ntkit.linalg.KernelOperator` objects, which never form the matrices;
            the iterative solvers take 2-D kernels only. Every path runs the same input
            checks and the dense solve is :func:`ntkit.linalg.solve_psd`.

    Returns:
        Test predictions ``(m,) + y_train.shape[1:]`` when ``k_test_train`` is given, else
        training predictions ``(n,) + y_train.shape[1:]``; on the inputs' device.

    Raises:
        SingularMatrixError: ``H + ridge·I`` is singular and ``pinv=False``.
        IllConditionedWarning: (warning) its condition number exceeds 1e12 (1e5 in float32).
    """
    from ..linalg import KernelOperator

    check_choice(solver, "solver", ("auto", "cholesky", "cg", "nystrom"))
    if (isinstance(k_train_train, KernelOperator) or isinstance(k_test_train, KernelOperator)
            or solver in ("cg", "nystrom")):
        return _through_linalg_solve(k_train_train, y_train, k_test_train, ridge, fx_train_0,
                                     fx_test_0, pinv, rcond, dtype, solver)
    dt = work_dtype(dtype)
    kd = prepare_kernel(k_train_train, "k_train_train", dt)
    tg = prepare_targets(y_train, kd)
    ridge = check_scalar(ridge, "ridge")
    if rcond is not None:
        rcond = check_scalar(rcond, "rcond")
    f0 = prepare_outputs(fx_train_0, tg, kd.n, "fx_train_0", kd)
    if k_test_train is None:
        if fx_test_0 is not None:
            raise ParameterError("fx_test_0 was given without k_test_train; pass both or neither")
        kt, m = None, kd.n
    else:
        kt, m = prepare_cross(k_test_train, kd)
        ft0 = prepare_outputs(fx_test_0, tg, m, "fx_test_0", kd)
    alpha = solve_psd(
        kd.K,
        tg.Y - f0,
        ridge=ridge,
        pinv=pinv,
        rcond=rcond,
        tol=kd.tol,
        what="k_train_train" + (" + ridge·I" if ridge else ""),
        stacklevel=2,
    )
    out = f0 + kd.K @ alpha if kt is None else ft0 + kt @ alpha
    return to_caller(out, tg, m)


def _through_linalg_solve(k_train, y, k_test, ridge, f0, ft0, pinv, rcond, dtype, solver) -> torch.Tensor:
    """``kernel_regression`` through :func:`ntkit.linalg.solve` (operators, CG or Nyström).

    The inputs pass the checks of the dense path (targets, initial outputs, the test
    kernel's shape, ``ridge``); ``dtype`` is honoured for matrices and must match an
    operator's own dtype; ``pinv``/``rcond`` (the dense pseudo-inverse) are refused.
    """
    from ..linalg import KernelOperator, solve

    if pinv:
        raise ParameterError("pinv=True needs the dense Cholesky/eigen path; use solver='cholesky'")
    if rcond is not None:
        raise ParameterError(
            "rcond is the pseudo-inverse cutoff of the dense path (pinv=True); the iterative "
            "solvers and kernel operators do not use it: regularize with ridge > 0, or pass dense "
            "matrices with solver='auto'/'cholesky'"
        )
    ridge = check_scalar(ridge, "ridge")
    if isinstance(k_train, KernelOperator):
        if dtype is not None and work_dtype(dtype) != k_train.dtype:
            raise ParameterError(
                f"dtype={work_dtype(dtype)} but k_train_train is a KernelOperator computing in "
                f"{k_train.dtype}; build the operator with that dtype, or leave dtype=None"
            )
        if not k_train.symmetric:
            raise ShapeError(
                "k_train_train must be the symmetric training operator KernelOperator(arch, x_train) "
                f"(x2=None); got a {k_train.shape[0]}×{k_train.shape[1]} cross-kernel operator"
            )
        kd = KernelData(k_train, k_train.shape[0], None, math.sqrt(torch.finfo(k_train.dtype).eps))
    else:
        kd = prepare_kernel(k_train, "k_train_train", work_dtype(dtype), allow_4d=False)
    tg = prepare_targets(y, kd)
    f0 = prepare_outputs(f0, tg, kd.n, "fx_train_0", kd)
    if k_test is None:
        if ft0 is not None:
            raise ParameterError("fx_test_0 was given without k_test_train; pass both or neither")
        kt, m = None, kd.n
    elif isinstance(k_test, KernelOperator):
        if k_test.shape[1] != kd.n:
            raise ShapeError(
                f"k_test_train has shape {tuple(k_test.shape)} but must be (m, {kd.n}): its second "
                "axis indexes the training examples (KernelOperator(arch, x_test, x_train))"
            )
        if k_test.dtype != kd.dtype:
            raise ParameterError(
                f"k_test_train computes in {k_test.dtype} but the training kernel in {kd.dtype}; "
                "use one dtype for both"
            )
        kt, m = k_test, k_test.shape[0]
    else:
        kt, m = prepare_cross(k_test, kd)
    ft0 = prepare_outputs(ft0, tg, m, "fx_test_0", kd) if kt is not None else None
    alpha = solve(kd.K, tg.Y - f0, solver=solver, ridge=ridge)
    out = f0 + kd.K @ alpha if kt is None else ft0 + kt @ alpha
    return to_caller(out, tg, m)


def max_learning_rate(k_train_train: Any, *, ridge: float = 0.0, dtype: Any = None) -> float:
    """Largest step size for which discrete gradient descent on the MSE converges.

    GD on ``(1/2n)‖f − y‖²`` (plus ``(ridge/2n)‖w − w0‖²``) for the linearized model moves
    the residual by ``I − (η/n)(H + ridge·I)``; it contracts iff
    ``η < 2n / (λ_max(H) + ridge)``, the value returned (``inf`` when ``H + ridge·I = 0``).
    At exactly this value the top mode oscillates without decaying.

    Args:
        k_train_train: ``(n, n)`` or ``(n, n, o, o)`` kernel on the training set.
        ridge: ``>= 0``.
        dtype: computation dtype, default float64.

    Returns:
        ``2n / (λ_max + ridge)`` as a Python float.
    """
    dt = work_dtype(dtype)
    kd = prepare_kernel(k_train_train, "k_train_train", dt)
    ridge = check_scalar(ridge, "ridge")
    w, _ = eigh_psd(kd.K, kd.tol, "k_train_train", vectors=False)
    top = float(w[-1]) + ridge
    return float("inf") if top <= 0 else 2.0 * kd.n / top
