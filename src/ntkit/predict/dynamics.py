r"""Closed-form gradient-descent / gradient-flow dynamics on the MSE, and the loss curve.

Conventions (used by every function here). The loss is the mean over the ``n`` training
examples, ``L(f) = (1/2n)‖f(X) − y‖²`` (plus ``(ridge/2n)‖w − w0‖²`` when ``ridge > 0``).
For the linearized network ``f(w, x) = f_0(x) + ∇f(w0, x)(w − w0)`` with kernel
``H = k(X, X)`` (Jacot et al. 2018; Lee et al. 2019, "Wide neural networks of any depth
evolve as linear models under gradient descent", eqs. 8–11):

* discrete GD with step ``η`` after ``k`` steps (``learning_rate=η``)::

      f_k(X) = f_0(X) + (I − (I − ηH/n)^k)(y − f_0(X))
      f_k(x) = f_0(x) + k(x, X) H⁻¹ (I − (I − ηH/n)^k)(y − f_0(X))

* gradient flow at time ``t`` (``learning_rate=None``; ``η`` is absorbed into ``t``)::

      f_t(X) = f_0(X) + (I − e^{−Ht/n})(y − f_0(X))
      f_t(x) = f_0(x) + k(x, X) H⁻¹ (I − e^{−Ht/n})(y − f_0(X)).

``H⁻¹(I − e^{−Ht/n})`` is evaluated spectrally as ``V diag((1 − e^{−λt/n})/λ) Vᵀ``, which is
finite (``t/n``) for ``λ = 0``: the dynamics never needs ``H`` to be invertible. With
``ridge = ρ`` the spectrum ``λ`` is replaced by ``μ = λ + ρ`` in the decay and the train
outputs are ``f_0 + V diag(λ·g(μ)) Vᵀ (y − f_0)``. At ``t = ∞`` (or ``k = ∞``) the limit is
taken on the eigenvalues ``μ > rcond·μ_max`` (``rcond = N·eps``); smaller ones are treated
as exactly 0 (those directions never move) — the pseudo-inverse limit. For a nonsingular
``H`` this is :func:`~ntkit.predict.kernel_regression`.

The eigendecomposition ``H = V diag(λ) Vᵀ`` is computed once and cached; eigenvalues are
clipped at 0 (round-off; a clearly negative eigenvalue is an error).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch

from .._kernel_inputs import (
    KernelData,
    Targets,
    prepare_cross,
    prepare_kernel,
    prepare_outputs,
    prepare_targets,
    prepare_times,
    to_caller,
)
from .._validation import check_finite_result, check_scalar, work_dtype
from ..errors import IllConditionedWarning, ParameterError
from ..linalg import cond_threshold, default_rcond, eigh_psd


class _Coefficients(NamedTuple):
    g: torch.Tensor  # (T, N): spectral factor of H⁻¹(I − decay) [test outputs]
    lam_g: torch.Tensor  # (T, N): λ·g [train outputs]
    s: torch.Tensor  # (T, N): residual factor, 1 − λ·g (e^{−λt/n} or (1 − ηλ/n)^k at ρ = 0)


class GradientDescentMSE:
    """Predictor of gradient descent / gradient flow on the MSE, built by
    :func:`gradient_descent_mse`. See the module docstring for the formulas.

    Attributes:
        eigenvalues: ``(N,)`` eigenvalues of ``H`` (clipped at 0), in descending order.
        eigenvectors: ``(N, N)`` matching orthonormal eigenvectors (columns).
        n: number of training examples (``N = n`` for a 2-D kernel, ``n·o`` for a 4-D one).
        learning_rate: ``η`` (``None``: gradient flow).
        ridge: the ``ρ`` added to the spectrum.
        max_learning_rate: ``2n / (λ_max + ρ)``, the discrete-GD stability limit.

    All methods accept ``k`` as a scalar or a 1-D sequence of times/steps (``>= 0``; ``inf``
    allowed). A scalar gives outputs of the caller's layout; a sequence of ``T`` values adds
    a leading time axis ``(T, ...)``. With a learning rate, ``k`` must be integers.
    """

    def __init__(
        self,
        kd: KernelData,
        tg: Targets,
        learning_rate: float | None,
        ridge: float,
        _stacklevel: int = 3,
    ) -> None:
        self._kd, self._tg = kd, tg
        lam, V = eigh_psd(kd.K, kd.tol, "k_train_train")
        assert V is not None
        self.eigenvalues = torch.flip(lam, (0,))
        self.eigenvectors = torch.flip(V, (1,))
        self.n = kd.n
        self.learning_rate = learning_rate
        self.ridge = ridge
        self._mu = self.eigenvalues + ridge
        mu_max = float(self._mu[0])
        self.max_learning_rate = float("inf") if mu_max <= 0 else 2.0 * kd.n / mu_max
        self._cutoff = default_rcond(self._mu.numel(), kd.dtype) * mu_max
        self._C0 = self.eigenvectors.T @ tg.Y  # (N, c) projections of y
        if learning_rate is not None and learning_rate >= self.max_learning_rate:
            warnings.warn(
                f"learning_rate={learning_rate:.4g} >= max_learning_rate="
                f"{self.max_learning_rate:.4g} (= 2n/λ_max): discrete gradient descent "
                "diverges (or oscillates) along the top eigenvector",
                RuntimeWarning,
                stacklevel=_stacklevel,
            )

    # -- spectral factors -------------------------------------------------------------------
    def _coefficients(self, k: Any) -> tuple[_Coefficients, bool, bool]:
        """Spectral factors ``(T, N)``, whether ``k`` was a scalar, whether it holds inf."""
        discrete = self.learning_rate is not None
        times, scalar = prepare_times(k, "k" if discrete else "t", discrete=discrete)
        dt, dev = self._kd.dtype, self._kd.device
        t = times.to(device=dev, dtype=dt)[:, None]  # (T, 1)
        mu = self._mu[None, :]  # (1, N)
        lam = self.eigenvalues[None, :]
        n = float(self.n)
        is_inf = torch.isinf(t)
        t_fin = torch.where(is_inf, torch.zeros_like(t), t)
        if not discrete:
            z = mu * t_fin / n
            z_safe = torch.where(z > 0, z, torch.ones_like(z))
            phi = torch.where(z > 0, -torch.expm1(-z_safe) / z_safe, torch.ones_like(z))
            g = (t_fin / n) * phi
            if self.ridge == 0:
                lam_g, s = -torch.expm1(-z), torch.exp(-z)
            else:
                lam_g = lam * g
                s = 1.0 - lam_g
        else:
            eta = float(self.learning_rate)  # type: ignore[arg-type]
            if bool(is_inf.any()) and eta >= self.max_learning_rate:
                raise ParameterError(
                    f"k = inf requested but learning_rate={eta:.4g} >= max_learning_rate="
                    f"{self.max_learning_rate:.4g}: gradient descent does not converge"
                )
            x = (eta / n) * mu.expand_as(t_fin * mu)
            small = x < 1
            x_small = torch.where(small, x, torch.zeros_like(x))
            log_base = torch.log1p(-x_small)  # valid where x < 1
            # (1 − x)^k: exp(k log1p(−x)) is accurate for small x; pow for x >= 1.
            power = torch.where(small, torch.exp(t_fin * log_base), torch.pow(1.0 - x, t_fin))
            one_minus = torch.where(small, -torch.expm1(t_fin * log_base), 1.0 - power)
            x_safe = torch.where(x > 0, x, torch.ones_like(x))
            q = torch.where(x > 0, one_minus / x_safe, t_fin.expand_as(x))
            g = (eta / n) * q
            if self.ridge == 0:
                lam_g, s = one_minus, power
            else:
                lam_g = lam * g
                s = 1.0 - lam_g
        if bool(is_inf.any()):
            keep = mu > self._cutoff
            mu_safe = torch.where(keep, mu, torch.ones_like(mu))
            g_inf = torch.where(keep, 1.0 / mu_safe, torch.zeros_like(mu))
            lg_inf = torch.where(keep, lam / mu_safe, torch.zeros_like(mu))
            g = torch.where(is_inf, g_inf, g)
            lam_g = torch.where(is_inf, lg_inf, lam_g)
            s = torch.where(is_inf, 1.0 - lg_inf, s)
        return _Coefficients(g, lam_g, s), scalar, bool(is_inf.any())

    def _projections(self, f0: torch.Tensor | None) -> torch.Tensor:
        if f0 is None:
            return self._C0
        return self.eigenvectors.T @ (self._tg.Y - f0)

    def _warn_inf(self) -> None:
        keep = self._mu > self._cutoff
        if not bool(keep.any()):
            return
        cond = float(self._mu[0] / self._mu[keep].min())
        thr = cond_threshold(self._kd.dtype)
        if cond > thr:
            warnings.warn(
                f"the t = inf test prediction inverts k_train_train (+ ridge) whose kept "
                f"eigenvalues span a condition number ≈ {cond:.2e} (> {thr:.0e}); the "
                "result may be meaningless — use ridge > 0 or a finite t",
                IllConditionedWarning,
                stacklevel=3,
            )

    def _check_finite(self, out: torch.Tensor, what: str) -> None:
        """NonFiniteError when a trajectory overflowed (GD above its stability limit)."""
        eta = self.learning_rate
        if eta is not None and eta >= self.max_learning_rate:
            hint = (f"learning_rate={eta:.4g} >= max_learning_rate={self.max_learning_rate:.4g} "
                    "(= 2n/λ_max), so gradient descent diverges: use learning_rate < "
                    "max_learning_rate, or fewer steps")
        else:
            hint = "rescale the kernel or the targets, or use float64"
        check_finite_result(out, f"gradient-descent {what}", hint)

    # -- public API --------------------------------------------------------------------------
    def train(self, k: Any, fx_train_0: Any | None = None) -> torch.Tensor:
        """Training-set outputs after ``k`` steps / at time ``t``.

        Args:
            k: scalar or 1-D sequence of ``T`` times (flow) or integer step counts (GD).
            fx_train_0: outputs at initialization on ``X``, shape of ``y_train``; None → 0.

        Returns:
            ``(n,) + y.shape[1:]``, or ``(T, n) + y.shape[1:]`` for a sequence.
        """
        kd, tg = self._kd, self._tg
        f0 = None if fx_train_0 is None else prepare_outputs(fx_train_0, tg, kd.n, "fx_train_0", kd)
        co, scalar, _ = self._coefficients(k)
        C = self._projections(f0)
        F = self.eigenvectors @ (co.lam_g[:, :, None] * C[None])
        if f0 is not None:
            F = F + f0
        out = to_caller(F, tg, kd.n)
        self._check_finite(out, "training outputs")
        return out[0] if scalar else out

    def test(
        self,
        k: Any,
        k_test_train: Any,
        fx_train_0: Any | None = None,
        fx_test_0: Any | None = None,
    ) -> torch.Tensor:
        """Test outputs after ``k`` steps / at time ``t``.

        Args:
            k: scalar or 1-D sequence of ``T`` times (flow) or integer step counts (GD).
            k_test_train: ``k(x, X)``, ``(m, n)`` (or ``(m, n, o, o)`` with a 4-D kernel).
            fx_train_0: outputs at initialization on ``X``, shape of ``y_train``; None → 0.
            fx_test_0: outputs at initialization on ``x``, ``(m,) + y.shape[1:]``; None → 0.

        Returns:
            ``(m,) + y.shape[1:]``, or ``(T, m) + y.shape[1:]`` for a sequence.
        """
        kd, tg = self._kd, self._tg
        kt, m = prepare_cross(k_test_train, kd)
        f0 = None if fx_train_0 is None else prepare_outputs(fx_train_0, tg, kd.n, "fx_train_0", kd)
        ft0 = prepare_outputs(fx_test_0, tg, m, "fx_test_0", kd)
        co, scalar, has_inf = self._coefficients(k)
        if has_inf:
            self._warn_inf()
        C = self._projections(f0)
        KV = kt @ self.eigenvectors  # (M, N)
        F = ft0 + KV @ (co.g[:, :, None] * C[None])
        out = to_caller(F, tg, m)
        self._check_finite(out, "test outputs")
        return out[0] if scalar else out

    def dual_coefficients(self, k: Any, fx_train_0: Any | None = None) -> torch.Tensor:
        """Coefficients ``α_k`` with ``f_k(x) = f_0(x) + k(x, X) α_k`` at every test point.

        ``α = V g(Λ) Vᵀ (y − f_0(X))`` with the spectral factor ``g`` of the module
        docstring (``(1 − e^{−μt/n})/μ`` for gradient flow, ``μ = λ + ridge``), so that
        :meth:`test` is ``fx_test_0 + k_test_train @ α`` — without a test kernel.

        Args:
            k: scalar or 1-D sequence of ``T`` times (flow) or integer step counts (GD).
            fx_train_0: outputs at initialization on ``X``, shape of ``y_train``; None → 0.

        Returns:
            ``(n,) + y.shape[1:]`` (a 4-D kernel: ``(n, o)``, indexed like ``y``), or
            ``(T, n) + y.shape[1:]`` for a sequence.
        """
        kd, tg = self._kd, self._tg
        f0 = None if fx_train_0 is None else prepare_outputs(fx_train_0, tg, kd.n, "fx_train_0", kd)
        co, scalar, has_inf = self._coefficients(k)
        if has_inf:
            self._warn_inf()
        C = self._projections(f0)
        A = self.eigenvectors @ (co.g[:, :, None] * C[None])
        out = to_caller(A, tg, kd.n)
        return out[0] if scalar else out

    def loss(self, k: Any, fx_train_0: Any | None = None) -> torch.Tensor:
        """Training loss ``(1/2n)‖f − y‖²`` (data term only) after ``k`` steps / at time ``t``.

        Returns a 0-d tensor, or ``(T,)`` for a sequence.
        """
        return self._loss_parts(k, fx_train_0)[0]

    def _loss_parts(self, k: Any, fx_train_0: Any | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kd, tg = self._kd, self._tg
        f0 = None if fx_train_0 is None else prepare_outputs(fx_train_0, tg, kd.n, "fx_train_0", kd)
        co, scalar, _ = self._coefficients(k)
        C = self._projections(f0)
        res_sq = (co.s**2) @ (C**2).sum(dim=1)  # (T,)
        loss = res_sq / (2.0 * kd.n)
        self._check_finite(loss, "training loss")
        if scalar:
            return loss[0], res_sq[0], C
        return loss, res_sq, C


def gradient_descent_mse(
    k_train_train: Any,
    y_train: Any,
    *,
    learning_rate: float | None = None,
    ridge: float = 0.0,
    dtype: Any = None,
) -> GradientDescentMSE:
    """Closed-form gradient descent (``learning_rate=η``) or gradient flow on the MSE.

    The outputs of the linearized network (or of an infinitely wide one, Lee et al. 2019)
    trained on ``(1/2n)‖f − y‖²`` — see the module docstring for the formulas. One
    eigendecomposition of ``k_train_train`` (``O(N³)``) is done here and cached; each call of
    the returned predictor costs ``O(T·N²·c)`` for the train set and
    ``O(M·N² + T·M·N·c)`` for ``M`` test rows, vectorized over ``T`` times.

    Args:
        k_train_train: ``H = k(X, X)``, ``(n, n)`` or multi-output ``(n, n, o, o)``;
            symmetric (checked) positive semidefinite (eigenvalues clipped at 0).
        y_train: ``(n,)`` or ``(n, o)``.
        learning_rate: ``η > 0``: ``k`` counts discrete GD steps
            ``f ← f − (η/n) H (f − y)``; ``None``: ``k`` is gradient-flow time ``t``.
            A warning is issued if ``η >= 2n/λ_max`` (GD diverges).
        ridge: ``ρ >= 0``: weight decay towards ``w0`` with loss
            ``(1/2n)(‖f − y‖² + ρ‖w − w0‖²)``; its ``t = ∞`` limit is kernel ridge regression.
        dtype: computation dtype, default float64.

    Returns:
        A :class:`GradientDescentMSE` with ``.train(k, fx_train_0=None)``,
        ``.test(k, k_test_train, fx_train_0=None, fx_test_0=None)`` and ``.loss(k, ...)``.

    Example:
        >>> pred = gradient_descent_mse(H, y, learning_rate=0.5)
        >>> f_k = pred.train([0, 10, 100])              # (3, n)
        >>> f_test = pred.test(100, K_test_train)        # (m,)
    """
    return _build(k_train_train, y_train, learning_rate, ridge, dtype, stacklevel=4)


def _build(
    k_train_train: Any,
    y_train: Any,
    learning_rate: float | None,
    ridge: float,
    dtype: Any,
    stacklevel: int,
) -> GradientDescentMSE:
    dt = work_dtype(dtype)
    kd = prepare_kernel(k_train_train, "k_train_train", dt)
    tg = prepare_targets(y_train, kd)
    lr = None if learning_rate is None else check_scalar(learning_rate, "learning_rate", positive=True)
    ridge = check_scalar(ridge, "ridge")
    return GradientDescentMSE(kd, tg, lr, ridge, _stacklevel=stacklevel)


class LossCurve(NamedTuple):
    """Result of :func:`loss_curve`.

    Attributes:
        loss: ``(1/2n)‖y − f‖²``, 0-d or ``(T,)``.
        residual_sq: ``‖y − f‖² = Σ_i s_i² (v_iᵀ(y − f_0))²`` (Arora et al. 2019, Thm 4.1,
            with ``s_i = (1 − ηλ_i/n)^k`` or ``e^{−λ_i t/n}``), 0-d or ``(T,)``.
        eigenvalues: ``(N,)`` eigenvalues ``λ_i`` of ``H``, descending, clipped at 0.
        projections: ``v_iᵀ(y − f_0)`` in the same order: ``(N,)`` for a single output or a
            4-D kernel, ``(N, o)`` for targets ``(n, o)`` with a 2-D kernel.
    """

    loss: torch.Tensor
    residual_sq: torch.Tensor
    eigenvalues: torch.Tensor
    projections: torch.Tensor


def loss_curve(
    k_train_train: Any,
    y_train: Any,
    steps_or_t: Any,
    *,
    learning_rate: float | None = None,
    ridge: float = 0.0,
    fx_train_0: Any | None = None,
    dtype: Any = None,
) -> LossCurve:
    r"""The training-loss curve from the spectrum of the kernel.

    Arora et al. 2019 ("Fine-grained analysis of optimization and generalization for
    overparameterized two-layer neural networks", Thm 4.1): the residual of gradient
    descent decays independently along each eigenvector ``v_i`` of ``H``::

        ‖y − f_k‖² = Σ_i (1 − ηλ_i/n)^{2k} (v_iᵀ(y − f_0))²        (discrete, η given)
        ‖y − f_t‖² = Σ_i e^{−2λ_i t/n} (v_iᵀ(y − f_0))²            (gradient flow)

    (Arora et al. use the loss ``½‖·‖²`` without the ``1/n``, i.e. ``η_Arora = η/n``.)
    Labels aligned with the top eigenvectors are learned fast; random labels spread over
    the whole spectrum and are learned slowly. With ``ridge = ρ > 0``, the residual factor
    is ``1 − λ_i g(λ_i + ρ)`` (see the module docstring) and ``loss`` is the data term only.

    Args:
        k_train_train: ``(n, n)`` or ``(n, n, o, o)``.
        y_train: ``(n,)`` or ``(n, o)``.
        steps_or_t: scalar or 1-D sequence (integers when ``learning_rate`` is set).
        learning_rate: ``η`` for discrete GD, ``None`` for gradient flow.
        ridge: ``ρ >= 0``.
        fx_train_0: outputs at initialization, shape of ``y_train``; None → 0.
        dtype: computation dtype, default float64.

    Returns:
        A :class:`LossCurve`.
    """
    pred = _build(k_train_train, y_train, learning_rate, ridge, dtype, stacklevel=4)
    loss, res_sq, C = pred._loss_parts(steps_or_t, fx_train_0)
    proj = C if (pred._kd.out is None and len(pred._tg.shape) == 2) else C[:, 0]
    return LossCurve(loss, res_sq, pred.eigenvalues, proj)
