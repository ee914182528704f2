r"""Generalization measures and bounds computed from a kernel Gram matrix.

Arora, Du, Hu, Li & Wang 2019, "Fine-grained analysis of optimization and generalization for
overparameterized two-layer neural networks" (ICML):

* Thm 4.1 — the training residual decays along the eigenvectors of ``H``
  (:func:`ntkit.predict.loss_curve`);
* Thm 5.1 — for a two-layer ReLU net trained by GD from small random initialization, with
  probability ``>= 1 − δ`` the population 0-1 loss (labels ``±1``, inputs of unit norm) is at
  most ``sqrt(2 yᵀ(H∞)⁻¹y / n) + O(sqrt(log(n / (λ0 δ)) / n))``, ``λ0 = λ_min(H∞)``, with
  Arora's first-layer Gram matrix ``H∞_ij = x_iᵀx_j (π − arccos x_iᵀx_j) / (2π)``
  (:func:`ntkit.theory.arora_h_infinity`). The data-dependent term :func:`complexity` is small for
  labels the kernel finds "smooth" and large for random labels.

The same quantities make sense for any kernel Gram matrix ``H`` (e.g. the full NTK): for a
feature map ``φ`` with ``H = ΦᵀΦ`` (columns ``φ(x_i)``), the minimum-norm interpolant that GD
converges to moves the weights by exactly ``‖w∞ − w0‖ = sqrt(rᵀH⁻¹r)``, ``r = y − f_0(X)``
(:func:`weight_distance`), and the class ``{x ↦ ⟨w − w0, φ(x)⟩ : ‖w − w0‖ <= W}`` has
empirical Rademacher complexity ``W · E_σ‖Σ_i σ_i φ(x_i)‖ / n`` (:func:`rademacher`).

Inputs are torch tensors or NumPy arrays (float64 by default); scalars are returned as
Python floats. Targets ``y`` are ``(n,)`` or ``(n, o)``; for ``(n, o)`` the quadratic form is
summed over outputs, ``tr(YᵀH⁻¹Y)`` (the squared Frobenius weight distance).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ._kernel_inputs import (
    KernelData,
    Targets,
    prepare_kernel,
    prepare_outputs,
    prepare_targets,
)
from ._validation import check_nonnegative, check_scalar, work_dtype
from .data import corrupt_labels  # lives in ntkit.data; re-exported where it was first published
from .errors import ParameterError, SingularMatrixError
from .linalg import solve_psd
from .theory import arora_h_infinity  # lives in ntkit.theory; re-exported

__all__ = [
    "arora_h_infinity",
    "complexity",
    "corrupt_labels",
    "generalization_bound",
    "lambda_min",
    "rademacher",
    "rademacher_upper_bound",
    "weight_distance",
    "yHy",
]


def _prep(H: Any, y: Any, dtype: Any) -> tuple[KernelData, Targets]:
    dt = work_dtype(dtype)
    kd = prepare_kernel(H, "H", dt, allow_4d=False)
    return kd, prepare_targets(y, kd, "y")


def _solve(kd: KernelData, R: torch.Tensor, ridge: float, pinv: bool, depth: int = 1) -> torch.Tensor:
    # depth: frames between _solve and the user's call (1: a public function calls _solve)
    return solve_psd(
        kd.K,
        R,
        ridge=ridge,
        pinv=pinv,
        rcond=None,
        tol=kd.tol,
        what="H" + (" + ridge·I" if ridge else ""),
        stacklevel=2 + depth,
    )


def yHy(H: Any, y: Any, *, ridge: float = 0.0, pinv: bool = False, dtype: Any = None) -> float:
    """The quadratic form ``yᵀ (H + ridge·I)⁻¹ y``.

    Args:
        H: ``(n, n)`` symmetric positive definite Gram matrix (e.g. the NTK, or
            :func:`arora_h_infinity`).
        y: ``(n,)`` or ``(n, o)`` (then ``tr(Yᵀ H⁻¹ Y)``).
        ridge: ``>= 0`` added to the diagonal.
        pinv: use the pseudo-inverse for singular ``H`` (``yᵀH⁺y``).
        dtype: computation dtype, default float64.

    Raises:
        SingularMatrixError: ``H`` singular and ``ridge = 0``, ``pinv=False``.
    """
    kd, tg = _prep(H, y, dtype)
    return _yhy(kd, tg, check_scalar(ridge, "ridge"), pinv, depth=2)


def _yhy(kd: KernelData, tg: Targets, ridge: float, pinv: bool, depth: int) -> float:
    alpha = _solve(kd, tg.Y, ridge, pinv, depth)
    return float((tg.Y * alpha).sum())


def complexity(H: Any, y: Any, *, ridge: float = 0.0, pinv: bool = False, dtype: Any = None) -> float:
    """Arora et al. 2019 (Thm 5.1) data-dependent complexity ``sqrt(2 yᵀH⁻¹y / n)``.

    Args and errors as :func:`yHy`; ``n`` is the number of rows of ``y``.
    """
    kd, tg = _prep(H, y, dtype)
    return _complexity(kd, tg, check_scalar(ridge, "ridge"), pinv)


def _complexity(kd: KernelData, tg: Targets, ridge: float, pinv: bool) -> float:
    return math.sqrt(2.0 * max(_yhy(kd, tg, ridge, pinv, depth=3), 0.0) / kd.n)


def lambda_min(H: Any, *, dtype: Any = None) -> float:
    """Smallest eigenvalue ``λ0 = λ_min(H)`` of the symmetric matrix ``H`` ``(n, n)``.

    Not clipped: a negative value (round-off, or an invalid kernel) is returned as is.
    Arora et al. 2019 (Thm 3.1) show ``λ_min(H∞) > 0`` when no two inputs are parallel.
    """
    kd = prepare_kernel(H, "H", work_dtype(dtype), allow_4d=False)
    return float(torch.linalg.eigvalsh(kd.K)[0])


def weight_distance(
    H: Any,
    y: Any,
    *,
    fx_train_0: Any | None = None,
    ridge: float = 0.0,
    pinv: bool = False,
    dtype: Any = None,
) -> float:
    """Distance ``‖w∞ − w0‖`` travelled by gradient descent on the linearized model.

    With ``H = ΦᵀΦ`` (``Φ``: ``p × n``, columns ``φ(x_i)``) and residual ``r = y − f_0(X)``,
    GD on ``(1/2n)‖f − y‖²`` from ``w0`` converges to ``w∞ = w0 + Φ H⁻¹ r``, so
    ``‖w∞ − w0‖ = sqrt(rᵀ H⁻¹ r)``. With ``ridge = ρ > 0`` (weight decay towards ``w0``)
    ``w∞ − w0 = Φ (H + ρI)⁻¹ r`` and the distance is ``sqrt(rᵀ(H+ρI)⁻¹ H (H+ρI)⁻¹ r)``.

    Args:
        H: ``(n, n)``. y: ``(n,)`` or ``(n, o)`` (Frobenius norm over outputs).
        fx_train_0: outputs at initialization, shape of ``y``; None → 0.
        ridge, pinv, dtype: as in :func:`yHy`.
    """
    kd, tg = _prep(H, y, dtype)
    ridge = check_scalar(ridge, "ridge")
    R = tg.Y - prepare_outputs(fx_train_0, tg, kd.n, "fx_train_0", kd)
    alpha = _solve(kd, R, ridge, pinv)
    q = float((alpha * (kd.K @ alpha)).sum())
    return math.sqrt(max(q, 0.0))


def generalization_bound(
    H: Any,
    y: Any,
    delta: float,
    *,
    c: float = 1.0,
    c_prime: float | None = None,
    ridge: float = 0.0,
    dtype: Any = None,
) -> float:
    r"""Arora et al. 2019, Thm 5.1-shaped generalization bound.

    Implements exactly::

        sqrt(2 yᵀH⁻¹y / n) + c · sqrt(log(c_prime / δ) / n)

    with the default ``c_prime = n / λ0`` (``λ0 = λ_min(H)``), which is Arora's statement
    ``sqrt(2 yᵀ(H∞)⁻¹y / n) + O(sqrt(log(n / (λ0 δ)) / n))`` with the constant of the
    ``O(·)`` set to ``c = 1`` (the theorem leaves it unspecified). For Arora's guarantee
    use ``H = arora_h_infinity(x)`` on unit-norm ``x`` and labels ``y ∈ {±1}`` — then the
    value bounds the population 0-1 error of the GD-trained wide two-layer ReLU net, up to
    that constant. Other kernels (the full NTK) give the same-shaped quantity.

    Args:
        H: ``(n, n)`` positive definite Gram matrix. y: ``(n,)`` or ``(n, o)``.
        delta: failure probability, ``0 < δ < 1``.
        c: ``>= 0``, constant in front of the confidence term.
        c_prime: ``> 0``; ``None`` means ``n / λ_min(H)``. Must make ``c_prime / δ > 1``.
        ridge: ``>= 0`` added to ``H`` (and to ``λ0``).
        dtype: computation dtype, default float64.
    """
    d = check_scalar(delta, "delta")
    if not 0 < d < 1:
        raise ParameterError(f"delta must be in (0, 1), got {d}")
    c = check_scalar(c, "c")
    kd, tg = _prep(H, y, dtype)
    ridge = check_scalar(ridge, "ridge")
    comp = _complexity(kd, tg, ridge, False)
    if c_prime is None:
        lam0 = float(torch.linalg.eigvalsh(kd.K)[0]) + ridge
        if lam0 <= 0:
            raise SingularMatrixError(
                f"λ_min(H) = {lam0:.3g} <= 0, so the default c_prime = n / λ_min is undefined; "
                "pass c_prime explicitly or use ridge > 0"
            )
        cp = kd.n / lam0
    else:
        cp = check_scalar(c_prime, "c_prime", positive=True)
    ratio = cp / d
    if ratio <= 1:
        raise ParameterError(
            f"c_prime / delta = {ratio:.3g} <= 1 makes log(c_prime / delta) <= 0; pass a larger c_prime"
        )
    return comp + c * math.sqrt(math.log(ratio) / kd.n)


def _check_W(W: Any) -> float:
    check_nonnegative(W, "W")
    return float(W)


def rademacher(
    H: Any,
    W: float,
    n_draws: int = 1000,
    *,
    seed: int | np.random.Generator | None = 0,
    dtype: Any = None,
) -> float:
    r"""Monte-Carlo estimate of the empirical Rademacher complexity of a weight ball.

    For ``F_W = {x ↦ ⟨w − w0, φ(x)⟩ : ‖w − w0‖ <= W}`` on points with Gram matrix
    ``H_ij = ⟨φ(x_i), φ(x_j)⟩``::

        R_S(F_W) = E_σ sup_{‖v‖<=W} (1/n) Σ_i σ_i ⟨v, φ(x_i)⟩ = (W/n) E_σ ‖Σ_i σ_i φ(x_i)‖
                 = (W/n) E_σ sqrt(σᵀ H σ),

    with ``σ`` uniform on ``{±1}ⁿ``. Estimated by the mean over ``n_draws`` sign vectors drawn
    with a NumPy Generator (deterministic given ``seed``). Round-off negative ``σᵀHσ`` are
    clipped at 0; values below ``-sqrt(eps)·tr(H)`` mean ``H`` is not PSD (error).
    Used by Arora et al. 2019 (Lemma 5.4) with ``W = sqrt(yᵀH⁻¹y)``.

    Args:
        H: ``(n, n)`` symmetric PSD Gram matrix.
        W: radius ``>= 0``.
        n_draws: number of Rademacher vectors, ``>= 1``.
        seed: int, None, or a ``numpy.random.Generator``.
        dtype: computation dtype, default float64.

    Returns:
        The estimate (a Python float). The exact value satisfies
        ``E sqrt(σᵀHσ) <= sqrt(tr H) <= sqrt(n max_i H_ii)``, i.e. it never exceeds
        :func:`rademacher_upper_bound` (either kind); the estimate obeys this up to its
        Monte-Carlo error (standard error ``≈ W · std(sqrt(σᵀHσ)) / (n sqrt(n_draws))``).
    """
    kd = prepare_kernel(H, "H", work_dtype(dtype), allow_4d=False)
    W = _check_W(W)
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        raise ParameterError(f"n_draws must be an integer >= 1, got {n_draws!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n = kd.n
    trace = float(torch.diagonal(kd.K).sum())
    batch = max(1, min(int(n_draws), 4_000_000 // max(n, 1)))
    total, left = 0.0, int(n_draws)
    while left > 0:
        b = min(batch, left)
        S = rng.integers(0, 2, size=(b, n), dtype=np.int8).astype(np.float64) * 2.0 - 1.0
        St = torch.from_numpy(S).to(device=kd.device, dtype=kd.dtype)
        q = ((St @ kd.K) * St).sum(1)
        qmin = float(q.min())
        if qmin < -kd.tol * max(abs(trace), 1e-300):
            raise ParameterError(
                f"σᵀHσ = {qmin:.3g} < 0 for a sign vector σ: H is not positive semidefinite, "
                "so it is not a Gram matrix"
            )
        total += float(torch.sqrt(q.clamp_min(0.0)).sum())
        left -= b
    return W * total / (n_draws * n)


def rademacher_upper_bound(H: Any, W: float, *, kind: str = "max", dtype: Any = None) -> float:
    r"""Closed-form upper bounds on the Rademacher complexity estimated by :func:`rademacher`.

    * ``kind="max"`` (default): ``W · max_i ‖φ(x_i)‖ / √n = W · sqrt(max_i H_ii) / √n``;
    * ``kind="trace"``: ``W · sqrt(tr H) / n``, from Jensen
      ``E sqrt(σᵀHσ) <= sqrt(E σᵀHσ) = sqrt(tr H)``; it is never larger than ``"max"``.

    Args:
        H: ``(n, n)`` symmetric Gram matrix. W: radius ``>= 0``. kind: ``"max"``/``"trace"``.
    """
    kd = prepare_kernel(H, "H", work_dtype(dtype), allow_4d=False)
    W = _check_W(W)
    diag = torch.diagonal(kd.K)
    if bool((diag < 0).any()):
        raise ParameterError("H has negative diagonal entries; it is not a Gram matrix")
    if kind == "max":
        return W * math.sqrt(float(diag.max())) / math.sqrt(kd.n)
    if kind == "trace":
        return W * math.sqrt(float(diag.sum())) / kd.n
    raise ParameterError(f"kind must be 'max' or 'trace', got {kind!r}")
