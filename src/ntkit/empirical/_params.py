"""Which parameters an empirical NTK differentiates, and the pure functional call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..errors import ModelError, ParameterError

ParamSelector = None | Sequence[str] | Callable[[str, torch.Tensor], bool]


def select_params(model: nn.Module, params: ParamSelector) -> tuple[dict, dict]:
    """Split the model's parameters into ``(selected, fixed)`` name → tensor dicts.

    ``params``: ``None`` (every parameter with ``requires_grad``), a sequence of names, or a
    predicate ``(name, parameter) -> bool``.
    """
    named = dict(model.named_parameters())
    if not named:
        raise ModelError("the model has no parameters, so its NTK is zero; pass a model with weights")
    if params is None:
        chosen = {k for k, p in named.items() if p.requires_grad}
    elif callable(params):
        chosen = {k for k, p in named.items() if params(k, p)}
    elif isinstance(params, str):
        raise ParameterError("params must be a list of names, not one string; wrap it: [name]")
    else:
        names = list(params)
        unknown = [n for n in names if n not in named]
        if unknown:
            raise ParameterError(
                f"unknown parameter names {unknown}; the model has {sorted(named)}"
            )
        chosen = set(names)
    if not chosen:
        raise ParameterError(
            "params selects no parameter; pass names from model.named_parameters() or a "
            "predicate that is true for at least one"
        )
    selected = {k: p.detach() for k, p in named.items() if k in chosen}
    fixed = {k: p.detach() for k, p in named.items() if k not in chosen}
    return selected, fixed


def check_pure(model: nn.Module) -> None:
    """Refuse modules whose forward changes their own state (BatchNorm in training mode)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training and (
            module.track_running_stats
        ):
            raise ModelError(
                f"module {name or type(module).__name__} is a BatchNorm in training mode, whose "
                "forward updates running statistics and mixes examples; call model.eval() or "
                "build it with track_running_stats=False"
            )


def make_fn(model: nn.Module, fixed: dict, buffers: dict) -> Callable[[dict, torch.Tensor], Any]:
    """``f(selected_params, x)`` evaluating ``model`` with the other tensors held fixed."""

    def fn(selected: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**fixed, **buffers, **selected}, (x,))

    return fn


def flat_outputs(out: torch.Tensor, n: int) -> torch.Tensor:
    """Outputs ``(n, ...)`` as ``(n, o)``; ``(n,)`` counts as one output."""
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != n:
        shape = getattr(out, "shape", type(out).__name__)
        raise ModelError(
            f"the model's output must be a tensor with the batch axis first, (n={n}, ...); got "
            f"{shape}. Make forward return one row per example"
        )
    return out.reshape(n, -1)
