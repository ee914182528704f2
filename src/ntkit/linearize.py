"""The linearized model ``f_lin(w, x) = f(w0, x) + <∇_w f(w0, x), w − w0>`` (Lee et al. 2019).

In the lazy regime a wide network trains like its first-order Taylor expansion around the
initial weights ``w0``; gradient descent on the MSE then follows the closed-form kernel
dynamics of the (empirical) NTK at ``w0``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp

from ._validation import as_tensor
from .empirical.inputs import OutputFn, OutputSelector
from .empirical.selection import ParamSelector, check_finite_weights, check_modules, select_params
from .empirical.traceable import traceable
from .errors import ModelError, NtkitError, ParameterError


def _key(name: str) -> str:
    return name.replace(".", "__")


class LinearizedModel(nn.Module):
    """First-order Taylor expansion of a module around its current weights ``w0``.

    ``forward(*args, **kwargs)`` takes what the model takes (a tensor, several tensors,
    keyword tensors such as ``input_ids=..., attention_mask=...``) and returns
    ``f(w0, x) + <∇_w f(w0, x), w − w0>`` for the selected output (``output_fn``, as in
    :func:`ntkit.empirical_ntk`; by default the output tensor), computed by one forward-mode
    product (``torch.func.jvp``) along ``w − w0``: the output is exactly affine in the
    parameters. RNNs and attention run in their transformable form
    (:mod:`ntkit.empirical.traceable`).

    Attributes:
        params: ``nn.ParameterDict`` of the linearized parameters ``w`` (the model's names with
            ``.`` replaced by ``__``); they start at ``w0`` and train with any torch optimizer.
        w0__<name>: frozen copies of ``w0`` (buffers, saved in ``state_dict``).

    Parameters that were not selected, and all buffers, stay fixed at their values at
    construction. The original model is copied, so later changes to it have no effect.
    """

    def __init__(self, model: nn.Module, params: ParamSelector = None, output_fn: OutputFn = None) -> None:
        super().__init__()
        self._select = OutputSelector(output_fn)
        if not isinstance(model, nn.Module):
            raise ModelError(f"linearize needs a torch.nn.Module, got {type(model).__name__}")
        if params is None and not any(p.requires_grad for p in model.parameters()):
            raise ModelError(
                f"the model ({type(model).__name__}) has no trainable parameters to linearize "
                "around; pass a model with weights (or choose some with params=[names])"
            )
        check_modules(model)
        check_finite_weights(model)
        selected, _ = select_params(model, params)
        template = copy.deepcopy(model)
        for p in template.parameters():
            p.requires_grad_(False)
        # Not a submodule: its (frozen) parameters must not reach optimizers or state_dict.
        object.__setattr__(self, "_template", template)
        self._names = list(selected)
        for name, value in selected.items():
            self.register_buffer("w0__" + _key(name), value.clone())
        self.params = nn.ParameterDict(  # pairs keep the model's order (a dict would sort)
            [(_key(name), nn.Parameter(value.clone())) for name, value in selected.items()]
        )

    def _apply(self, fn, *args: Any, **kwargs: Any):  # keep the template on our device/dtype
        super()._apply(fn, *args, **kwargs)
        self._template._apply(fn, *args, **kwargs)
        return self

    @property
    def model(self) -> nn.Module:
        """The frozen copy of the original module (holding ``w0`` and the buffers)."""
        return self._template

    def w0(self) -> dict[str, torch.Tensor]:
        """The expansion point, by the model's parameter names."""
        return {name: getattr(self, "w0__" + _key(name)) for name in self._names}

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``f(w0, x) + J(w0, x)·(w − w0)``; the inputs are the model's, the result has the
        selected output's shape."""
        w0 = self.w0()
        ref = next(iter(w0.values()))
        args = tuple(_check_input(a, ref) for a in args)
        delta = {name: self.params[_key(name)] - w0[name] for name in self._names}

        def f(weights: dict[str, torch.Tensor]) -> torch.Tensor:
            return self._select(functional_call(self._template, weights, args, kwargs))

        try:
            with traceable(self._template):
                out, tangent = jvp(f, (w0,), (delta,))
        except NtkitError:
            raise
        except Exception as err:
            shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
            raise ModelError(
                f"the linearized model failed on inputs of shape {shapes}: {type(err).__name__}: "
                f"{err}. Pass inputs the original model accepts (same feature count and layout, "
                "batch axis first)"
            ) from err
        return out + tangent


def _check_input(x: Any, ref: torch.Tensor) -> Any:
    """Floating inputs must have the parameters' dtype (ParameterError naming the cast);
    integer inputs (e.g. token ids) and non-tensors pass; NumPy arrays are converted."""
    if isinstance(x, np.ndarray):
        return as_tensor(x, "x", dtype=ref.dtype, device=ref.device, min_ndim=0)
    if not isinstance(x, torch.Tensor):
        return x
    if x.is_complex() or (x.is_floating_point() and x.dtype != ref.dtype):
        cast = {torch.float64: "x.double()", torch.float32: "x.float()"}.get(ref.dtype, "x.to(dtype)")
        raise ParameterError(
            f"x has dtype {x.dtype} but the linearized model's parameters are {ref.dtype}; "
            f"pass {cast} (or linearize a model of x's dtype)"
        )
    return x


def linearize(model: nn.Module, params: ParamSelector = None, *,
              output_fn: OutputFn = None) -> LinearizedModel:
    """``nk.linearize(model)``: the model's linearization at its current weights.

    Args:
        model: any ``nn.Module`` with a pure forward (call ``model.eval()`` first if it has
            BatchNorm or dropout).
        params: which parameters to linearize in (the rest stays fixed at ``w0``); same forms
            as in :func:`ntkit.empirical_ntk` (``None``: all with ``requires_grad``).
        output_fn: which output is linearized, as in :func:`ntkit.empirical_ntk` (``None``: the
            output tensor, or the only tensor of a tuple/dict/dataclass output; a key such as
            ``"logits"``, an index, a callable, or ``ntkit.empirical.all_outputs``).

    Returns:
        A :class:`LinearizedModel`; train it like any module, e.g.
        ``torch.optim.SGD(lin.parameters(), lr)``.
    """
    return LinearizedModel(model, params, output_fn)
