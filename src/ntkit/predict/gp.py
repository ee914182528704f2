r"""Gaussian-process posteriors: the NNGP (Bayesian) posterior and the NTK-GP.

Two Gaussian processes describe infinitely wide networks (Lee et al. 2019, "Wide neural
networks of any depth evolve as linear models under gradient descent", §2.3–2.4):

* **NNGP posterior** — exact Bayesian inference with the prior ``f ~ GP(0, K)`` (``K`` the
  NNGP kernel) and observation noise of variance ``diag_reg``::

      mean = K(x, X) (K + σ²I)⁻¹ y
      cov  = K(x, x) − K(x, X) (K + σ²I)⁻¹ K(X, x)

* **NTK-GP** — the distribution over random initializations ``f_0 ~ GP(0, K)`` of the
  outputs of infinitely wide networks trained by gradient flow on ``(1/2n)‖f − y‖²``
  (Lee et al. 2019, eqs. 15–16, with their ``ηt`` written ``t/n`` for the mean loss used
  throughout :mod:`ntkit.predict`). With ``Θ`` the NTK and
  ``M_t = Θ⁻¹(I − e^{−Θt/n})`` (spectrally, finite for singular ``Θ``)::

      mean_t = Θ(x, X) M_t y
      cov_t  = K(x, x) + Θ(x, X) M_t K M_t Θ(X, x)
               − Θ(x, X) M_t K(X, x) − K(x, X) M_t Θ(X, x).

  ``t = None`` or ``inf`` is the converged ensemble (``M_∞ = Θ⁻¹``, pseudo-inverse on
  numerically zero eigenvalues, see :mod:`ntkit.predict.dynamics`). With
  ``learning_rate=η`` the time is a number of discrete GD steps,
  ``M_k = Θ⁻¹(I − (I − ηΘ/n)^k)``. ``diag_reg = ρ`` replaces ``Θ`` by ``Θ + ρI`` inside
  ``M`` (weight decay towards ``w0``, as ``ridge`` in
  :func:`~ntkit.predict.gradient_descent_mse`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._kernel_inputs import (
    KernelData,
    prepare_cross,
    prepare_kernel,
    prepare_targets,
    symmetrize,
    to_caller,
)
from .._validation import as_tensor, check_scalar, work_dtype
from ..errors import ParameterError, ShapeError
from ..linalg import solve_psd
from .dynamics import GradientDescentMSE


class GPPosterior(NamedTuple):
    """Result of :func:`gp_posterior`.

    Attributes:
        mean: ``(m,) + y.shape[1:]``, or ``(T, m) + y.shape[1:]`` for a sequence of times.
        covariance: ``(m, m)`` (or ``(T, m, m)``), shared by all output columns; ``None``
            without ``nngp_test_test`` or with ``full_cov=False``.
        variance: the diagonal of the covariance, ``(m,)`` (or ``(T, m)``); ``None``
            without ``nngp_test_test``.
        kind: ``"nngp"`` or ``"ntk"``.
    """

    mean: torch.Tensor
    covariance: torch.Tensor | None
    variance: torch.Tensor | None
    kind: str


def _clip_variance(var: torch.Tensor) -> torch.Tensor:
    """Posterior variances clipped at 0. A test point equal to a training point has variance
    0 in exact arithmetic; the subtraction leaves round-off of either sign (to about
    ``-1e-15`` relative), which would make ``sqrt(variance)`` NaN. Same clip as
    ``eigh_psd`` applies to kernel spectra."""
    return var.clamp_min(0.0)


def _with_variance(cov: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``cov`` with its diagonal replaced by the clipped variances."""
    cov.diagonal(dim1=-2, dim2=-1).copy_(var)
    return cov


def _test_test(k: Any, m: int, kd: KernelData, full_cov: bool) -> torch.Tensor:
    t = as_tensor(k, "nngp_test_test", dtype=kd.dtype, device=kd.device, min_ndim=1, max_ndim=2)
    if t.ndim == 1:
        if t.shape[0] != m:
            raise ShapeError(f"nngp_test_test (a diagonal) has {t.shape[0]} entries, expected {m}")
        if full_cov:
            raise ShapeError(
                "nngp_test_test is 1-D (the diagonal k(x_i, x_i)); that only gives variances — "
                "pass full_cov=False, or the full (m, m) matrix"
            )
        return t
    if tuple(t.shape) != (m, m):
        raise ShapeError(f"nngp_test_test must be ({m}, {m}), got {tuple(t.shape)}")
    return symmetrize(t, "nngp_test_test", kd.tol)


def gp_posterior(
    nngp_train_train: Any,
    y_train: Any,
    nngp_test_train: Any,
    nngp_test_test: Any | None = None,
    *,
    ntk_train_train: Any | None = None,
    ntk_test_train: Any | None = None,
    t: Any = None,
    learning_rate: float | None = None,
    diag_reg: float = 0.0,
    full_cov: bool = True,
    pinv: bool = False,
    rcond: float | None = None,
    dtype: Any = None,
) -> GPPosterior:
    """NNGP posterior, or NTK-GP (infinite ensemble of GD-trained nets) mean and covariance.

    Without ``ntk_*`` arguments: the NNGP posterior (exact Gaussian conditioning). With
    both ``ntk_train_train`` and ``ntk_test_train``: the NTK-GP at time ``t`` (Lee et al.
    2019, eqs. 15–16). Formulas in the module docstring. All kernels are 2-D (one kernel
    shared by the output columns of ``y_train``).

    Args:
        nngp_train_train: NNGP ``K(X, X)``, ``(n, n)``; symmetric PSD. For the NTK-GP it is
            the covariance of the outputs at initialization.
        y_train: ``(n,)`` or ``(n, o)``.
        nngp_test_train: NNGP ``K(x, X)``, ``(m, n)``.
        nngp_test_test: NNGP ``K(x, x)``, ``(m, m)``, or its diagonal ``(m,)`` with
            ``full_cov=False``; ``None`` skips the covariance.
        ntk_train_train: NTK ``Θ(X, X)``, ``(n, n)`` (NTK-GP only).
        ntk_test_train: NTK ``Θ(x, X)``, ``(m, n)`` (NTK-GP only).
        t: NTK-GP only: gradient-flow time (or integer step count with ``learning_rate``),
            scalar or 1-D sequence of ``T`` values ``>= 0``; ``None`` means ``inf``.
        learning_rate: NTK-GP only: ``η`` of discrete GD; ``None`` means gradient flow.
        diag_reg: ``>= 0``. NNGP: observation-noise variance added to ``K(X, X)``. NTK-GP:
            ridge added to ``Θ(X, X)`` inside the dynamics.
        full_cov: return the full ``(m, m)`` covariance (else only ``variance``).
        pinv: NNGP only: pseudo-inverse instead of Cholesky for singular ``K + σ²I``.
        rcond: pseudo-inverse cutoff (NNGP with ``pinv=True``).
        dtype: computation dtype, default float64.

    Returns:
        A :class:`GPPosterior`. With a sequence ``t`` every field gains a leading ``T`` axis.
        Variances (and the covariance diagonal) are clipped at 0: at a test point equal to
        a training point the exact value is 0 and round-off of either sign remains.

    Raises:
        SingularMatrixError: NNGP with singular ``K + σ²I`` and ``pinv=False``.
    """
    dt = work_dtype(dtype)
    kd = prepare_kernel(nngp_train_train, "nngp_train_train", dt, allow_4d=False)
    tg = prepare_targets(y_train, kd)
    kxt, m = prepare_cross(nngp_test_train, kd, "nngp_test_train")
    diag_reg = check_scalar(diag_reg, "diag_reg")
    if rcond is not None:
        rcond = check_scalar(rcond, "rcond")
    ktt = None if nngp_test_test is None else _test_test(nngp_test_test, m, kd, full_cov)
    if (ntk_train_train is None) != (ntk_test_train is None):
        raise ParameterError(
            "the NTK-GP needs both ntk_train_train and ntk_test_train; pass both (NTK-GP) or "
            "neither (NNGP posterior)"
        )
    if ntk_train_train is None:
        if t is not None or learning_rate is not None:
            raise ParameterError(
                "t / learning_rate only apply to the NTK-GP; pass ntk_train_train and "
                "ntk_test_train, or drop t for the NNGP posterior"
            )
        c = tg.c
        X = solve_psd(
            kd.K,
            torch.cat([tg.Y, kxt.T], dim=1),
            ridge=diag_reg,
            pinv=pinv,
            rcond=rcond,
            tol=kd.tol,
            what="nngp_train_train" + (" + diag_reg·I" if diag_reg else ""),
            stacklevel=2,
        )
        mean = to_caller(kxt @ X[:, :c], tg, m)
        B = X[:, c:].T  # (m, n) = K(x, X) (K + σ²I)⁻¹
        if ktt is None:
            return GPPosterior(mean, None, None, "nngp")
        var = _clip_variance((ktt.diagonal() if ktt.ndim == 2 else ktt) - (B * kxt).sum(-1))
        cov = None
        if full_cov:
            assert ktt.ndim == 2
            cov = ktt - B @ kxt.T
            cov = _with_variance(0.5 * (cov + cov.T), var)
        return GPPosterior(mean, cov, var, "nngp")

    if pinv or rcond is not None:
        raise ParameterError(
            "pinv/rcond apply to the NNGP solve; the NTK-GP always uses the spectral "
            "(pseudo-inverse) limit at t = inf"
        )
    kth = prepare_kernel(ntk_train_train, "ntk_train_train", dt, allow_4d=False, device=kd.device)
    if kth.n != kd.n:
        raise ShapeError(
            f"ntk_train_train is for {kth.n} examples but nngp_train_train for {kd.n}; "
            "both must be computed on the same training set"
        )
    th_xt, m2 = prepare_cross(ntk_test_train, kth, "ntk_test_train")
    if m2 != m:
        raise ShapeError(
            f"ntk_test_train has {m2} test rows but nngp_test_train has {m}; use the same test points"
        )
    lr = None if learning_rate is None else check_scalar(learning_rate, "learning_rate", positive=True)
    dyn = GradientDescentMSE(kth, tg, lr, diag_reg, _stacklevel=3)
    co, scalar, has_inf = dyn._coefficients(float("inf") if t is None else t)
    if has_inf:
        dyn._warn_inf()
    V = dyn.eigenvectors
    B = ((th_xt @ V)[None] * co.g[:, None, :]) @ V.T  # (T, m, n) = Θ(x, X) M_t
    mean = to_caller(B @ tg.Y, tg, m)
    cov = var = None
    if ktt is not None:
        P = B @ kxt.T  # (T, m, m) = Θ(x, X) M_t K(X, x)
        Q = B @ kd.K  # (T, m, n)
        kdiag = ktt.diagonal() if ktt.ndim == 2 else ktt
        var = _clip_variance(kdiag - 2.0 * P.diagonal(dim1=-2, dim2=-1) + (Q * B).sum(-1))
        if full_cov:
            cov = ktt - P - P.transpose(-1, -2) + Q @ B.transpose(-1, -2)
            cov = _with_variance(0.5 * (cov + cov.transpose(-1, -2)), var)
    for value, what in ((mean, "NTK-GP mean"), (var, "NTK-GP variance")):
        if value is not None:
            dyn._check_finite(value, what)
    if scalar:
        mean = mean[0]
        cov = None if cov is None else cov[0]
        var = None if var is None else var[0]
    return GPPosterior(mean, cov, var, "ntk")
