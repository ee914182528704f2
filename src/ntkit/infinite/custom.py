"""``Elementwise``: an activation whose kernel the user gives in closed form.

As neural-tangents' ``stax.Elementwise`` (Novak et al. 2020; Han et al. 2022,
arXiv:2209.04121): ``nngp_fn(cov12, var1, var2) = E[fn(u)·fn(v)]`` for
``(u, v) ~ N(0, [[var1, cov12], [cov12, var2]])``, and the derivative kernel
``E[fn'(u)·fn'(v)]`` is ``d_nngp_fn`` or, when omitted, ``∂nngp_fn/∂cov12`` by autograd
(Price's theorem, Price 1958).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import NtkitError, ParameterError
from .activations import ElementwiseLayer

KernelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _probe(fn: KernelFn, label: str) -> None:
    """Check ``fn`` accepts broadcast tensors ``(cov12, var1, var2)`` and keeps the shape."""
    cov = torch.tensor([[0.5, -0.2]], dtype=torch.float64)
    var1 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    var2 = torch.tensor([[1.5, 0.7]], dtype=torch.float64)
    try:
        out = fn(cov.expand(2, 2), var1, var2)
    except Exception as err:
        raise ParameterError(
            f"{label} must accept torch tensors (cov12, var1, var2) and work elementwise; "
            f"calling it failed with: {err}"
        ) from err
    if not isinstance(out, torch.Tensor) or out.shape != (2, 2):
        raise ParameterError(
            f"{label} must return a tensor of the broadcast shape of (cov12, var1, var2), e.g. "
            "written with torch operations"
        )


class Elementwise(ElementwiseLayer):
    """An activation ``fn`` with its kernel ``nngp_fn`` given in closed form by the user.

    Args:
        fn: the elementwise activation of the finite network (a tensor function), or
            ``None`` for a kernel-only layer (then :meth:`build_module` raises).
        nngp_fn: ``(cov12, var1, var2) -> E[fn(u) fn(v)]``, written with torch operations
            on broadcast tensors (every kernel entry at once).
        d_nngp_fn: ``(cov12, var1, var2) -> E[fn'(u) fn'(v)]``; by default
            ``∂nngp_fn/∂cov12`` by autograd (Price's theorem).

    Raises:
        ParameterError: if ``nngp_fn`` (or ``d_nngp_fn``) is not callable or not elementwise.
    """

    closed_form = True

    def __init__(self, fn: Callable | None, nngp_fn: KernelFn, d_nngp_fn: KernelFn | None = None) -> None:
        if fn is not None and not callable(fn):
            raise ParameterError(f"fn must be callable or None, got {fn!r}")
        if not callable(nngp_fn):
            raise ParameterError(f"nngp_fn must be callable (cov12, var1, var2) -> tensor, got {nngp_fn!r}")
        _probe(nngp_fn, "nngp_fn")
        if d_nngp_fn is not None:
            if not callable(d_nngp_fn):
                raise ParameterError(f"d_nngp_fn must be callable or None, got {d_nngp_fn!r}")
            _probe(d_nngp_fn, "d_nngp_fn")
        self._fn, self.nngp_fn, self.d_nngp_fn = fn, nngp_fn, d_nngp_fn
        source = fn if fn is not None else nngp_fn
        self.name = getattr(source, "__name__", "Elementwise")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        if self._fn is None:
            raise NtkitError("this Elementwise layer has no fn: it defines a kernel only")
        return self._fn(x)

    def expectations(self, q11, q22, q12, need_dot):
        nngp = self.nngp_fn(q12, q11, q22)
        dot = None
        if need_dot:
            if self.d_nngp_fn is not None:
                dot = self.d_nngp_fn(q12, q11, q22)
            else:
                dot = self._autograd_dot(q11, q22, q12)
        return nngp, dot

    def _autograd_dot(self, q11, q22, q12) -> torch.Tensor:
        """``∂nngp_fn/∂cov12`` at fixed variances (kept differentiable when ``q12`` is)."""
        keep_graph = q12.requires_grad
        with torch.enable_grad():
            c = q12 if keep_graph else q12.detach().requires_grad_(True)
            out = self.nngp_fn(c, q11, q22)
            if not out.requires_grad:  # nngp_fn does not depend on cov12
                return torch.zeros_like(q12)
            (grad,) = torch.autograd.grad(out.sum(), c, create_graph=keep_graph, allow_unused=True)
        return torch.zeros_like(q12) if grad is None else grad

    def build_module(self, in_shape, generator, dtype):
        if self._fn is None:
            raise NtkitError("Elementwise(fn=None, ...) defines a kernel only; pass fn to build the network")
        return super().build_module(in_shape, generator, dtype)

    def __repr__(self) -> str:
        return f"Elementwise({self.name})"
