r"""Gradient flow with any differentiable loss, by integrating the function-space ODE.

For the linearized network (or an infinitely wide one) trained by gradient flow on
``L(f) = (1/n) Σ_i ℓ(f(x_i), y_i)`` with learning rate ``η``, the outputs obey
(Jacot et al. 2018; Lee et al. 2019, eq. 4)::

    df(X)/dt = −η K(X, X) ∇_{f(X)} L(f(X))
    df(x)/dt = −η K(x, X) ∇_{f(X)} L(f(X)).

The right-hand side depends on the training outputs only, so the test outputs are
integrated alongside at the cost of one extra matrix product. With ``loss="mse"``
(``ℓ = ½‖f − y‖²``) this is exactly :func:`~ntkit.predict.gradient_descent_mse` with
gradient-flow time ``η·t``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from .._kernel_inputs import (
    KernelData,
    prepare_cross,
    prepare_kernel,
    prepare_times,
)
from .._validation import as_tensor, check_scalar, work_dtype
from ..errors import NonFiniteError, NtkitError, ParameterError, ShapeError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: The integrators :func:`scipy.integrate.solve_ivp` offers; the first three are explicit.
EXPLICIT_METHODS = ("RK45", "RK23", "DOP853")
IMPLICIT_METHODS = ("Radau", "BDF", "LSODA")
#: Stiffness index ``η·λ_max(K)·t/n`` (about the number of steps an explicit method needs
#: for stability) above which ``method=None`` integrates with Radau and an explicitly chosen
#: explicit method is refused (it would run for minutes; Radau takes seconds).
STIFF_INDEX = 1e4


class ODEPrediction(NamedTuple):
    """Outputs of :meth:`GradientDescentODE.predict` (``test`` is None without a test kernel)."""

    train: torch.Tensor
    test: torch.Tensor | None


def _mse_grad(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (f - y) / f.shape[0]


def _ce_multi_grad(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # L = −(1/n) Σ_i Σ_c y_ic log softmax(f_i)_c  →  ∇ = (softmax(f)·Σ_c y_ic − y) / n
    p = torch.softmax(f, dim=-1)
    return (p * y.sum(-1, keepdim=True) - y) / f.shape[0]


def _ce_binary_grad(f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    # L = (1/n) Σ_i log(1 + e^{−s_i f_i}), s ∈ {−1, +1}  →  ∇ = −s σ(−s f) / n
    return -s * torch.sigmoid(-s * f) / f.shape[0]


class GradientDescentODE:
    """Predictor built by :func:`gradient_descent`; integrates the function-space ODE.

    Each call integrates from ``t = 0`` to ``max(t)`` with :func:`scipy.integrate.solve_ivp`
    (float64 state, results cast to the requested dtype and moved to the kernel's device).
    ``t`` is a scalar or a 1-D sequence of finite times ``>= 0`` (any order); a sequence adds
    a leading time axis.

    Attributes:
        loss_name: ``"mse"``, ``"cross_entropy"`` or the callable's ``__name__``.
        learning_rate: ``η``.
        method: the :func:`scipy.integrate.solve_ivp` method asked for (``None``: automatic),
            rtol, atol: its tolerances.
        last_method: the method the last integration used.
    """

    def __init__(
        self,
        kd: KernelData,
        y: torch.Tensor,
        loss_name: str,
        loss_fn: LossFn | None,
        grad_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
        learning_rate: float,
        method: str,
        rtol: float,
        atol: float,
        out_dtype: torch.dtype,
    ) -> None:
        self._kd = kd
        self._y = y
        self.loss_name = loss_name
        self._loss_fn = loss_fn
        self._grad_fn = grad_fn
        self.learning_rate = learning_rate
        self.method, self.rtol, self.atol = method, rtol, atol
        self._out_dtype = out_dtype
        self.last_method: str | None = None
        self._lam_max: float | None = None

    # -- helpers ------------------------------------------------------------------------------
    def _f_shape(self, m: int, fx: Any, name: str) -> tuple[torch.Tensor, tuple[int, ...]]:
        kd = self._kd
        if fx is None:
            shape: tuple[int, ...] = (m, *self._y.shape[1:])
            if kd.out is not None:
                shape = (m, kd.out) if self._y.ndim == 2 or kd.out > 1 else (m,)
            return torch.zeros(shape, dtype=torch.float64, device=kd.device), shape
        t = as_tensor(fx, name, dtype=torch.float64, device=kd.device, min_ndim=1, max_ndim=2)
        if t.shape[0] != m:
            raise ShapeError(f"{name} has {t.shape[0]} rows, expected {m}")
        if kd.out is not None:
            o = t.shape[1] if t.ndim == 2 else 1
            if o != kd.out:
                raise ShapeError(
                    f"{name} has shape {tuple(t.shape)} but the multi-output kernel has "
                    f"o = {kd.out}; pass ({m}, {kd.out})"
                )
        elif self._loss_fn is None and tuple(t.shape[1:]) != tuple(self._y.shape[1:]):
            raise ShapeError(
                f"{name} has shape {tuple(t.shape)}; for loss={self.loss_name!r} it must be "
                f"{(m, *self._y.shape[1:])}, the layout of y_train"
            )
        return t, tuple(t.shape)

    def _grad(self, f: torch.Tensor) -> torch.Tensor:
        if self._grad_fn is not None:
            return self._grad_fn(f, self._y)
        assert self._loss_fn is not None
        fr = f.detach().requires_grad_(True)
        with torch.enable_grad():
            L = self._loss_fn(fr, self._y)
            if not isinstance(L, torch.Tensor) or L.numel() != 1:
                raise ParameterError(
                    "the loss callable must return a scalar torch tensor (mean over examples), "
                    f"got {type(L).__name__}"
                    + (f" of shape {tuple(L.shape)}" if isinstance(L, torch.Tensor) else "")
                )
            if not L.requires_grad:
                raise ParameterError(
                    "the loss callable's result does not depend on f through torch operations; "
                    "write it with differentiable torch ops"
                )
            (g,) = torch.autograd.grad(L.reshape(()), fr, allow_unused=True)
        if g is None:
            return torch.zeros_like(f)
        return g

    def _run(
        self, t: Any, kt: torch.Tensor | None, f0: torch.Tensor, ft0: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        kd = self._kd
        times, scalar = prepare_times(t, "t", discrete=False, allow_inf=False)
        tv = times.numpy()
        K = kd.K.to(torch.float64)
        Kt = None if kt is None else kt.to(torch.float64)
        shape, rows = tuple(f0.shape), kd.K.shape[0]
        c = f0.numel() // rows
        n_tr = f0.numel()
        eta = self.learning_rate

        def rhs(_s: float, z: np.ndarray) -> np.ndarray:
            f = torch.from_numpy(z[:n_tr]).to(kd.device).reshape(shape)
            G = self._grad(f).reshape(rows, c)
            d = -eta * (K @ G)
            parts = [d.reshape(-1)]
            if Kt is not None:
                parts.append((-eta * (Kt @ G)).reshape(-1))
            return torch.cat(parts).cpu().numpy()

        z0_parts = [f0.reshape(-1)]
        if ft0 is not None:
            z0_parts.append(ft0.reshape(-1))
        z0 = torch.cat(z0_parts).cpu().numpy()
        order = np.argsort(tv, kind="stable")
        uniq, inv = np.unique(tv[order], return_inverse=True)
        t_end = float(uniq[-1])
        if t_end == 0.0:
            Z = np.repeat(z0[:, None], uniq.size, axis=1)
        else:
            method = self._choose_method(t_end)
            self.last_method = method
            from scipy.integrate import solve_ivp  # here: importing it costs ≈ 1 s

            sol = solve_ivp(
                rhs,
                (0.0, t_end),
                z0,
                method=method,
                t_eval=uniq,
                rtol=self.rtol,
                atol=self.atol,
            )
            if sol.status < 0 or sol.y.shape[1] != uniq.size:
                raise NtkitError(
                    f"the ODE integration failed ({sol.message}); try method='Radau' or "
                    "'LSODA' for stiff problems, or looser rtol/atol"
                )
            Z = sol.y
            if not np.isfinite(Z).all():
                raise NonFiniteError(
                    f"the ODE solution overflowed to NaN/Inf before t = {t_end:g} (method "
                    f"{method}); the loss gradient or the learning rate is too large: lower "
                    "learning_rate, rescale the kernel, or check the loss is finite"
                )
        Zs = np.empty((z0.size, tv.size))
        Zs[:, order] = Z[:, inv]
        Zt = torch.from_numpy(Zs.T.copy()).to(device=kd.device, dtype=self._out_dtype)
        train = Zt[:, :n_tr].reshape(-1, *shape)
        test = None
        if ft0 is not None:
            test = Zt[:, n_tr:].reshape(-1, *ft0.shape)
        return train, test, scalar

    def _choose_method(self, t_end: float) -> str:
        """``self.method``, or for ``None`` DOP853 unless the problem is stiff (then Radau);
        ParameterError for an explicit method on a stiff problem (see :data:`STIFF_INDEX`)."""
        if self._lam_max is None:
            self._lam_max = float(torch.linalg.eigvalsh(self._kd.K.to(torch.float64))[-1].clamp_min(0))
        stiffness = self.learning_rate * self._lam_max * t_end / self._kd.n
        if self.method is None:
            return "Radau" if stiffness > STIFF_INDEX else "DOP853"
        if self.method in EXPLICIT_METHODS and stiffness > STIFF_INDEX:
            raise ParameterError(
                f"the gradient-flow ODE is stiff here (η·λ_max·t/n ≈ {stiffness:.3g}): the explicit "
                f"method {self.method!r} would need about that many steps and run for minutes. "
                "Use method='Radau' (or 'BDF'/'LSODA'), or method=None to choose automatically"
            )
        return self.method

    # -- public API --------------------------------------------------------------------------
    def predict(
        self,
        t: Any,
        k_test_train: Any | None = None,
        fx_train_0: Any | None = None,
        fx_test_0: Any | None = None,
    ) -> ODEPrediction:
        """Train (and test) outputs at time(s) ``t`` from one integration.

        Args:
            t: scalar or 1-D sequence of ``T`` finite times ``>= 0``.
            k_test_train: ``(m, n)`` (or ``(m, n, o, o)``), or None for train only.
            fx_train_0: outputs at initialization on ``X``; None → zeros in the layout of
                ``y_train`` (a callable loss may use another layout, e.g. logits ``(n, C)``
                for integer labels: then pass it explicitly).
            fx_test_0: outputs at initialization on the test points, ``(m,) +
                fx_train_0.shape[1:]``; None → zeros.

        Returns:
            :class:`ODEPrediction` with ``train`` ``(n, ...)`` and ``test`` ``(m, ...)``, each
            with a leading ``(T,)`` axis for a sequence ``t``.
        """
        kd = self._kd
        f0, shape = self._f_shape(kd.n, fx_train_0, "fx_train_0")
        kt = ft0 = None
        if k_test_train is not None:
            kt, m = prepare_cross(k_test_train, kd)
            if fx_test_0 is None:
                ft0 = torch.zeros((m, *shape[1:]), dtype=torch.float64, device=kd.device)
            else:
                ft0 = as_tensor(fx_test_0, "fx_test_0", dtype=torch.float64, device=kd.device, min_ndim=1)
                if tuple(ft0.shape) != (m, *shape[1:]):
                    raise ShapeError(f"fx_test_0 has shape {tuple(ft0.shape)}, expected {(m, *shape[1:])}")
        elif fx_test_0 is not None:
            raise ParameterError("fx_test_0 was given without k_test_train; pass both or neither")
        train, test, scalar = self._run(t, kt, f0, ft0)
        if scalar:
            return ODEPrediction(train[0], None if test is None else test[0])
        return ODEPrediction(train, test)

    def train(self, t: Any, fx_train_0: Any | None = None) -> torch.Tensor:
        """Training outputs at time(s) ``t``: ``(n, ...)`` or ``(T, n, ...)``."""
        return self.predict(t, None, fx_train_0).train

    def test(
        self,
        t: Any,
        k_test_train: Any,
        fx_train_0: Any | None = None,
        fx_test_0: Any | None = None,
    ) -> torch.Tensor:
        """Test outputs at time(s) ``t``: ``(m, ...)`` or ``(T, m, ...)``."""
        out = self.predict(t, k_test_train, fx_train_0, fx_test_0).test
        assert out is not None
        return out


def _binary_signs(y: torch.Tensor) -> torch.Tensor:
    vals = set(torch.unique(y).tolist())
    if vals <= {-1.0, 1.0}:
        return y
    if vals <= {0.0, 1.0}:
        return 2.0 * y - 1.0
    raise ParameterError(
        "loss='cross_entropy' with 1-D y_train needs binary labels in {-1, +1} or {0, 1}, got "
        f"values {sorted(vals)[:5]}; for C classes pass one-hot targets of shape (n, C), "
        "e.g. torch.nn.functional.one_hot(y, C)"
    )


def gradient_descent(
    loss: str | LossFn,
    k_train_train: Any,
    y_train: Any,
    *,
    learning_rate: float = 1.0,
    method: str | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    dtype: Any = None,
) -> GradientDescentODE:
    """Gradient flow on any differentiable loss, integrated in function space.

    Integrates ``df/dt = −η K ∇_f L(f)`` on the training set and
    ``df_test/dt = −η K(x, X) ∇_{f(X)} L`` on test points (module docstring), with the loss
    a **mean** over the ``n`` examples, as ``(1/2n)‖f − y‖²`` in
    :func:`~ntkit.predict.gradient_descent_mse`.

    Args:
        loss: ``"mse"``: ``L = (1/2n) Σ_i ‖f_i − y_i‖²``.
            ``"cross_entropy"``: with ``y_train`` ``(n, C)`` (one-hot or probability rows),
            softmax cross-entropy ``L = −(1/n) Σ_i Σ_c y_ic log softmax(f_i)_c``; with
            ``y_train`` ``(n,)`` binary labels in ``{−1, +1}`` or ``{0, 1}``, the logistic
            loss ``L = (1/n) Σ_i log(1 + exp(−s_i f_i))``, ``s_i = ±1``.
            A callable ``loss(f, y) -> scalar tensor``, differentiable in ``f`` by torch
            autograd (``f``: float64, the layout of ``fx_train_0``; ``y``: ``y_train`` as a
            float64 tensor — cast inside, e.g. ``y.long()``, if you need integers). Use a
            mean over examples to keep the convention above.
        k_train_train: ``(n, n)``, or ``(n, n, o, o)`` with outputs ``(n, o)``.
        y_train: targets, first axis ``n``.
        learning_rate: ``η > 0`` (continuous-time scale).
        method: the :func:`scipy.integrate.solve_ivp` method. ``None`` (default): the
            explicit ``"DOP853"``, accurate for non-stiff problems, or the implicit
            ``"Radau"`` when the problem is stiff, i.e. when the stiffness index
            ``η·λ_max(K)·t/n`` exceeds :data:`STIFF_INDEX` (an explicit method needs about
            that many steps). An explicit method (``"RK45"``, ``"RK23"``, ``"DOP853"``)
            asked for on a stiff problem raises ParameterError when integrating.
        rtol, atol: passed to :func:`scipy.integrate.solve_ivp`.
        dtype: dtype of the returned outputs (the integration always runs in float64).

    Returns:
        A :class:`GradientDescentODE` with ``.train(t, fx_train_0=None)``,
        ``.test(t, k_test_train, fx_train_0=None, fx_test_0=None)`` and ``.predict(...)``.
    """
    out_dtype = work_dtype(dtype)
    kd = prepare_kernel(k_train_train, "k_train_train", torch.float64)
    y = as_tensor(y_train, "y_train", dtype=torch.float64, device=kd.device, min_ndim=1)
    if y.shape[0] != kd.n:
        raise ShapeError(f"y_train has {y.shape[0]} rows but k_train_train is for {kd.n} examples")
    lr = check_scalar(learning_rate, "learning_rate", positive=True)
    if method is not None and method not in EXPLICIT_METHODS + IMPLICIT_METHODS:
        raise ParameterError(
            f"method must be None or one of {', '.join(map(repr, EXPLICIT_METHODS + IMPLICIT_METHODS))} "
            f"(scipy.integrate.solve_ivp's methods); got {method!r}"
        )
    rtol = check_scalar(rtol, "rtol", positive=True)
    atol = check_scalar(atol, "atol", positive=True)
    grad_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    if callable(loss):
        return GradientDescentODE(
            kd,
            y,
            getattr(loss, "__name__", "callable"),
            loss,
            None,
            lr,
            method,
            rtol,
            atol,
            out_dtype,
        )
    if loss not in ("mse", "cross_entropy"):
        raise ParameterError(
            f"loss must be 'mse', 'cross_entropy' or a callable (f, y) -> scalar; got {loss!r}"
        )
    if y.ndim > 2:
        raise ShapeError(f"y_train must be (n,) or (n, o), got {tuple(y.shape)}")
    if kd.out is not None and (y.shape[1] if y.ndim == 2 else 1) != kd.out:
        raise ShapeError(f"y_train has shape {tuple(y.shape)} but the multi-output kernel has o = {kd.out}")
    if loss == "mse":
        grad_fn = _mse_grad
    elif y.ndim == 1:
        y = _binary_signs(y)
        grad_fn = _ce_binary_grad
    else:
        if y.shape[1] < 2:
            raise ShapeError("loss='cross_entropy' with y_train (n, 1): pass binary labels as shape (n,)")
        if bool((y < 0).any()) or not torch.allclose(
            y.sum(-1), torch.ones(y.shape[0], dtype=y.dtype, device=y.device), atol=1e-6
        ):
            raise ParameterError(
                "loss='cross_entropy' with y_train (n, C) needs one-hot or probability rows "
                "(entries >= 0 summing to 1)"
            )
        grad_fn = _ce_multi_grad
    return GradientDescentODE(kd, y, loss, None, grad_fn, lr, method, rtol, atol, out_dtype)
