"""The linearized model ``f_lin(w, x) = f(w0, x) + <∇_w f(w0, x), w − w0>`` (Lee et al. 2019)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, jvp

from .empirical._params import check_pure
from .errors import ModelError


class LinearizedModel(nn.Module):
    """First-order Taylor expansion of ``model`` around its current weights ``w0``.

    Its parameters (same names, with ``.`` replaced by ``__``) start at ``w0`` and train with
    any torch optimizer; ``w0`` and the buffers are frozen copies. The forward pass is one
    forward-mode product ``torch.func.jvp`` along ``w − w0``: the output is exactly affine
    in the parameters. Shapes follow ``model``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ModelError(f"linearize needs a torch.nn.Module, got {type(model).__name__}")
        check_pure(model)
        named = {k: p for k, p in model.named_parameters() if p.requires_grad}
        if not named:
            raise ModelError("the model has no trainable parameters to linearize around")
        self._model = copy.deepcopy(model)
        for p in self._model.parameters():
            p.requires_grad_(False)
        self._names = list(named)
        self._fixed = {k: p.detach().clone() for k, p in model.named_parameters() if k not in named}
        for k, p in named.items():
            self.register_buffer("w0__" + k.replace(".", "__"), p.detach().clone())
        self.params = nn.ParameterDict(
            {k.replace(".", "__"): nn.Parameter(p.detach().clone()) for k, p in named.items()}
        )

    def w0(self) -> dict[str, torch.Tensor]:
        """The expansion point, by the model's parameter names."""
        return {k: getattr(self, "w0__" + k.replace(".", "__")) for k in self._names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w0 = self.w0()
        delta = {k: self.params[k.replace(".", "__")] - w0[k] for k in self._names}
        buffers = dict(self._model.named_buffers())

        def f(weights: dict) -> torch.Tensor:
            return functional_call(self._model, {**self._fixed, **buffers, **weights}, (x,))

        out, tangent = jvp(f, (w0,), (delta,))
        return out + tangent


def linearize(model: nn.Module) -> LinearizedModel:
    """``nk.linearize(model)``: the model's linearization at its current weights (see
    :class:`LinearizedModel`)."""
    return LinearizedModel(model)
