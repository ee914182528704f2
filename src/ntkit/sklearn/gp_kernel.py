"""The infinite-width NTK/NNGP as a ``sklearn.gaussian_process`` kernel (:class:`NTK`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.gaussian_process.kernels import Hyperparameter
from sklearn.gaussian_process.kernels import Kernel as _SKKernel

from ..errors import NonFiniteError, ParameterError
from ..infinite import Layer
from ..infinite.activations import activation_from_name
from .kernel_function import _SQRT2, _as_matrix, _check_arch_params


class NTK(_SKKernel):
    """The infinite-width NTK (or NNGP) as a ``sklearn.gaussian_process`` kernel.

    ``GaussianProcessRegressor(kernel=NTK(depth=3) + WhiteKernel())`` fits ``W_std`` and
    ``b_std`` by maximizing the marginal likelihood. Like scikit-learn's own kernels the
    hyperparameters are optimized in log-space (``theta = log([W_std, b_std])``) within
    ``W_std_bounds`` / ``b_std_bounds`` (pass ``"fixed"`` to freeze one); ``b_std=None``
    (no bias) is always fixed. The gradient ``∂K/∂log θ`` is computed by torch autograd
    through the kernel recursion of ``nk.mlp`` (exact, not finite differences); it needs an
    activation with a closed-form kernel: every name of ``ntkit.infinite.names`` but tanh,
    sigmoid and softplus (ReLU, GELU, erf, sin, cos, rbf, exp, gaussian, sign,
    ``"hermite(n)"``, ``"monomial(n)"``, ``"rectified_monomial(n)"``, ``"polynomial([...])"``,
    ...). Quadrature activations (tanh, ...) can be used with ``optimizer=None``.

    Args:
        depth: Dense layers of ``nk.mlp`` including the readout (>= 1).
        activation: activation name.
        W_std: weight standard deviation (> 0 here: the optimizer works with its log).
        b_std: bias standard deviation (> 0), or ``None`` for no bias.
        kernel: ``"ntk"`` (the NTK-GP mean of Lee et al. 2019 uses it) or ``"nngp"``
            (the NNGP of Lee et al. 2018, an exact Bayesian prior).
        W_std_bounds, b_std_bounds: ``(low, high)`` or ``"fixed"``.
    """

    def __init__(
        self,
        depth: int = 3,
        activation: str = "relu",
        W_std: float = _SQRT2,
        b_std: float | None = 0.1,
        kernel: str = "ntk",
        W_std_bounds: Any = (1e-2, 1e2),
        b_std_bounds: Any = (1e-3, 1e2),
    ) -> None:
        self.depth = depth
        self.activation = activation
        self.W_std = W_std
        self.b_std = b_std
        self.kernel = kernel
        self.W_std_bounds = W_std_bounds
        self.b_std_bounds = b_std_bounds

    @property
    def hyperparameter_W_std(self) -> Hyperparameter:
        return Hyperparameter("W_std", "numeric", self.W_std_bounds)

    @property
    def hyperparameter_b_std(self) -> Hyperparameter:
        return Hyperparameter("b_std", "numeric", "fixed" if self.b_std is None else self.b_std_bounds)

    def _arch(self, W_std: Any = None, b_std: Any = None) -> Layer:
        return _check_arch_params(
            self.depth,
            self.activation,
            self.W_std if W_std is None else W_std,
            self.b_std if b_std is None else b_std,
            self.kernel,
        )

    def __call__(self, X: Any, Y: Any = None, eval_gradient: bool = False):
        """``K(X, Y)`` ``(n_X, n_Y)``; with ``eval_gradient`` also ``∂K/∂theta`` ``(n, n, n_free)``.

        ``eval_gradient=True`` needs ``Y=None`` (as for every scikit-learn kernel).
        """
        x1 = _as_matrix(X, "X")
        if not eval_gradient:
            x2 = None if Y is None else _as_matrix(Y, "Y")
            return self._arch().kernel(x1, x2, get=self.kernel).numpy()
        if Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        act = activation_from_name(self.activation)
        if not getattr(act, "closed_form", False):
            raise ParameterError(
                f"NTK gradients need an activation with a closed-form kernel (relu, gelu, erf, "
                f"sin, rbf, hermite(n), ...), got {self.activation!r}; use one of those, or "
                "GaussianProcessRegressor(optimizer=None) to keep W_std/b_std fixed"
            )
        free = [h.name for h in self.hyperparameters if not h.fixed]
        leaves = {
            name: torch.tensor(float(getattr(self, name)), dtype=torch.float64, requires_grad=True)
            for name in free
        }
        with torch.enable_grad():
            K = self._arch(leaves.get("W_std"), leaves.get("b_std")).kernel(x1, get=self.kernel)
            grads = []
            if free:
                # Each entry of K depends on (W_std, b_std) only: the Jacobian columns
                # ∂K/∂θ_i (n×n each) come from one reverse pass with a dummy cotangent u
                # and one more pass differentiating ⟨u, ∂K/∂θ_i⟩ with respect to u.
                u = torch.zeros_like(K, requires_grad=True)
                first = torch.autograd.grad(
                    K, [leaves[n] for n in free], grad_outputs=u, create_graph=True
                )
                for name, g in zip(free, first):
                    (dK,) = torch.autograd.grad(g, u, retain_graph=True)
                    grads.append(float(getattr(self, name)) * dK)  # chain rule for log θ
        n = x1.shape[0]
        grad = torch.stack(grads, dim=-1) if grads else K.new_zeros((n, n, 0))
        if not bool(torch.isfinite(grad).all()):
            raise NonFiniteError(
                "the NTK gradient is not finite; check W_std/b_std are > 0 and X is finite"
            )
        return K.detach().numpy(), grad.detach().numpy()

    def diag(self, X: Any) -> np.ndarray:
        """``k(x_i, x_i)`` for every row, ``(n,)`` — without forming the matrix."""
        x1 = _as_matrix(X, "X")
        return self._arch().kernel(x1, get=self.kernel, diagonal=True).numpy()

    def is_stationary(self) -> bool:
        """``False``: the NTK depends on the norms of ``x`` and ``x'``, not only ``x − x'``."""
        return False

    def __repr__(self) -> str:
        return (
            f"NTK(depth={self.depth}, activation={self.activation!r}, W_std={self.W_std:.3g}, "
            f"b_std={'None' if self.b_std is None else format(self.b_std, '.3g')}, "
            f"kernel={self.kernel!r})"
        )
