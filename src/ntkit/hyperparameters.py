"""Hyperparameters of any architecture by Gaussian-process marginal likelihood.

The infinite-width NNGP is an exact Gaussian-process prior over the network's outputs
(Neal 1996; Lee et al. 2018), and the NTK the covariance of the NTK-GP (Lee et al. 2019).
With observation noise ``σ²`` the log marginal likelihood of targets ``Y`` ``(n, o)`` (``o``
independent outputs sharing the kernel) is (Rasmussen & Williams 2006, eq. 2.30)

    log p(Y | X, θ) = −½ tr(Yᵀ A⁻¹ Y) − (o/2) log det A − (n·o/2) log 2π,   A = K_θ(X, X) + σ²·I.

:func:`fit_hyperparameters` maximizes it over positive hyperparameters (``W_std``, ``b_std``,
``noise`` = σ², or any keyword of an architecture factory) in log-space with L-BFGS-B
(scipy), the gradient coming from torch autograd through the whole kernel recursion —
closed-form activations, quadrature activations (``Tanh``, ``Activation(fn)``: the
quadrature rule is differentiated exactly), convolutions and pooling alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._validation import as_tensor, check_choice
from .errors import NonFiniteError, ParameterError, ShapeError, SingularMatrixError
from .infinite.layers import Layer

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class HyperparameterFit:
    """Result of :func:`fit_hyperparameters`.

    Attributes:
        params: the fitted values (floats), every key of the ``params`` given.
        log_marginal_likelihood: at ``params``.
        initial_log_marginal_likelihood: at the starting values.
        history: the log marginal likelihood at every evaluation, in order.
        arch: ``arch_fn`` called with the fitted values (without ``noise``).
        success, message: the optimizer's report (``scipy.optimize.minimize``).
    """

    params: dict[str, float]
    log_marginal_likelihood: float
    initial_log_marginal_likelihood: float
    history: list[float] = field(repr=False)
    arch: Layer | None = field(repr=False, default=None)
    success: bool = True
    message: str = ""


def _targets(y: Any, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    Y = as_tensor(y, "y", dtype=dtype, device=device, min_ndim=1, max_ndim=2)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if Y.shape[0] != n:
        raise ShapeError(f"y has {Y.shape[0]} rows but x has {n} examples; pass one target row per example")
    return Y


def _check_params(params: Any) -> dict[str, float]:
    if not isinstance(params, dict) or not params:
        raise ParameterError(
            "params must be a non-empty dict of starting values, e.g. {'W_std': 1.4, 'b_std': 0.1, "
            "'noise': 0.01}"
        )
    out = {}
    for name, value in params.items():
        if not isinstance(name, str):
            raise ParameterError(f"params keys must be names (str), got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not (0 < float(value) < math.inf):
            raise ParameterError(
                f"params[{name!r}] must be a finite number > 0 (it is optimized in log-space), got {value!r}"
            )
        out[name] = float(value)
    return out


def log_marginal_likelihood(
    arch_fn: Callable[..., Layer],
    x: Any,
    y: Any,
    params: dict[str, Any],
    *,
    kernel: str = "nngp",
) -> torch.Tensor:
    """The GP log marginal likelihood (module docstring) as a differentiable 0-dim tensor.

    Args:
        arch_fn: ``arch_fn(**hyper) -> Layer``, called with every key of ``params`` except
            ``"noise"`` (e.g. ``lambda W_std, b_std: nk.mlp(3, 1, "relu", W_std, b_std)``).
        x: ``(n, *in_shape)`` inputs; y: ``(n,)`` or ``(n, o)`` targets (zero prior mean: center
            them first).
        params: values (floats or 0-dim tensors, e.g. with ``requires_grad``); ``"noise"`` is
            the observation-noise variance σ² (absent: 0).
        kernel: ``"nngp"`` (the Bayesian prior, default) or ``"ntk"`` (the NTK-GP).

    Returns:
        ``log p(y | x)``, float64 0-dim tensor, differentiable with respect to tensor params.

    Raises:
        SingularMatrixError: ``K + noise·I`` is not numerically positive definite (add or raise
            ``"noise"``).
        ShapeError: ``y`` rows differ from ``x``'s examples, or the kernel is not one number per
            pair (the architecture needs a readout).
    """
    check_choice(kernel, "kernel", ("nngp", "ntk"))
    if not callable(arch_fn):
        raise ParameterError(f"arch_fn must be a callable returning an ntkit architecture, got {arch_fn!r}")
    X = as_tensor(x, "x", min_ndim=2)
    Y = _targets(y, X.shape[0], X.dtype, X.device)
    hyper = {k: v for k, v in params.items() if k != "noise"}
    arch = arch_fn(**hyper)
    if not isinstance(arch, Layer):
        raise ParameterError(
            f"arch_fn must return an ntkit architecture (nk.serial, nk.mlp, ...), got {arch!r}"
        )
    K = arch.kernel(X, get=kernel)
    if K.ndim != 2:
        raise ShapeError(
            f"the kernel has shape {tuple(K.shape)}, not one number per pair of examples; end the "
            "architecture with a readout (GlobalAvgPool()/Flatten(), then Dense(1))"
        )
    noise = params.get("noise", 0.0)
    A = K + noise * torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise SingularMatrixError(
            "K + noise·I is not numerically positive definite; add observation noise (params "
            "'noise', e.g. 1e-3 times the kernel's scale) or raise it"
        )
    alpha = torch.cholesky_solve(Y, L)
    n, o = Y.shape
    return -0.5 * (Y * alpha).sum() - o * torch.log(torch.diagonal(L)).sum() - 0.5 * n * o * _LOG_2PI


def fit_hyperparameters(
    arch_fn: Callable[..., Layer],
    x: Any,
    y: Any,
    params: dict[str, float],
    *,
    kernel: str = "nngp",
    bounds: dict[str, tuple[float, float]] | None = None,
    max_iter: int = 100,
) -> HyperparameterFit:
    """Maximize the GP log marginal likelihood over an architecture's hyperparameters.

    Example: ``nk.fit_hyperparameters(lambda W_std, b_std: nk.mlp(3, 1, "erf", W_std, b_std),
    x, y, params={"W_std": 1.0, "b_std": 0.1, "noise": 0.1})``.

    Args:
        arch_fn: ``arch_fn(**hyper) -> Layer`` (see :func:`log_marginal_likelihood`); it
            receives 0-dim float64 tensors, which every ntkit layer accepts for ``W_std``/
            ``b_std`` (and which any differentiable use of a keyword supports).
        x: ``(n, *in_shape)`` inputs; y: ``(n,)`` or ``(n, o)`` targets (centered).
        params: starting values, each ``> 0``; ``"noise"`` is the noise variance σ².
        kernel: ``"nngp"`` (default) or ``"ntk"``.
        bounds: optional ``{name: (low, high)}`` (``0 < low < high``); default ``(1e-6, 1e6)``.
        max_iter: L-BFGS-B iterations.

    Returns:
        A :class:`HyperparameterFit` (``params``, the likelihood before and after, ``history``).

    Raises:
        ParameterError: bad ``params``/``bounds``/``kernel``, or ``arch_fn`` not returning a layer.
        SingularMatrixError: at the starting values, ``K + noise·I`` is not positive definite.
        NonFiniteError: the likelihood or its gradient is not finite at the starting values.
    """
    from scipy.optimize import minimize

    start = _check_params(params)
    names = list(start)
    low_high = []
    for name in names:
        lo, hi = (bounds or {}).get(name, (1e-6, 1e6))
        if not (0 < lo < hi < math.inf):
            raise ParameterError(f"bounds[{name!r}] must satisfy 0 < low < high, got {(lo, hi)!r}")
        low_high.append((math.log(lo), math.log(hi)))
    unknown = set(bounds or {}) - set(names)
    if unknown:
        raise ParameterError(f"bounds names {sorted(unknown)} are not in params ({names})")
    X = as_tensor(x, "x", min_ndim=2)
    history: list[float] = []

    def objective(theta: np.ndarray, strict: bool = False) -> tuple[float, np.ndarray]:
        leaves = {n: torch.tensor(float(t), dtype=torch.float64, requires_grad=True)
                  for n, t in zip(names, theta)}
        values = {n: torch.exp(leaf) for n, leaf in leaves.items()}
        try:
            with torch.enable_grad():
                lml = log_marginal_likelihood(arch_fn, X, y, values, kernel=kernel)
                grads = torch.autograd.grad(lml, [leaves[n] for n in names])
        except (SingularMatrixError, NonFiniteError):
            if strict:
                raise
            return math.inf, np.zeros(len(names))  # the line search backs off
        g = np.array([float(t) for t in grads])
        value = float(lml.detach())
        if not (math.isfinite(value) and np.isfinite(g).all()):
            if strict:
                raise NonFiniteError(
                    "the log marginal likelihood or its gradient is not finite at the starting values; "
                    "change them (smaller W_std/b_std, more noise)"
                )
            return math.inf, np.zeros(len(names))
        history.append(value)
        return -value, -g

    theta0 = np.array([math.log(start[n]) for n in names])
    theta0 = np.clip(theta0, [lo for lo, _ in low_high], [hi for _, hi in low_high])
    initial = -objective(theta0, strict=True)[0]
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B", bounds=low_high,
                   options={"maxiter": int(max_iter)})
    fitted = {n: float(math.exp(t)) for n, t in zip(names, res.x)}
    final = -objective(res.x, strict=True)[0]
    if final < initial:  # never worse than the start (L-BFGS-B can stop on a failed line search)
        fitted, final = dict(start), initial
    arch = arch_fn(**{n: v for n, v in fitted.items() if n != "noise"})
    return HyperparameterFit(params=fitted, log_marginal_likelihood=final,
                             initial_log_marginal_likelihood=initial, history=history, arch=arch,
                             success=bool(res.success), message=str(res.message))
