"""Checks done once per model structure, remembered (weakly) on the model.

:func:`~ntkit.empirical_ntk` probes a model before computing (output layout, purity, flop
count) and, for the structured path, verifies its layer decomposition against autograd. Both
depend on the model's structure, not on its weight values, so tracking a kernel during
training would repeat them at every call for nothing. They are kept here, keyed by
everything they depend on: the selected parameter names, every parameter's and buffer's
name, shape, dtype and device, every submodule (identity, type, training flag, an
instance-level ``forward`` override), the layout, example shapes, dtypes and devices of the
inputs (and the non-batched ``model_kwargs``) and the output selection (``output_fn``).
Any change to one of these runs the checks again; only successful outcomes (and the reason a
structured path does not apply) are kept, so a failing model fails on every call.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

_MEMO: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()
#: Entries kept per model (different inputs shapes or parameter selections).
MAX_ENTRIES = 16


def structure_key(model: nn.Module, selected: dict[str, torch.Tensor], x, output: Any = None) -> tuple:
    """Everything the probe and the verification depend on, besides the weight values."""
    tensors = tuple(
        (kind, name, tuple(t.shape), t.dtype, t.device)
        for kind, items in (("p", model.named_parameters()), ("b", model.named_buffers()))
        for name, t in items
    )
    modules = tuple(
        (name, id(m), type(m), m.training, _override(m))
        for name, m in model.named_modules(remove_duplicate=False)
    )
    inputs = x.signature() if hasattr(x, "signature") else (tuple(x.shape[1:]), x.dtype, x.device)
    return tuple(selected), tensors, modules, inputs, output


def _override(module: nn.Module) -> int | None:
    """Identity of an instance-level ``forward`` (not ntkit's own temporary RNN forward)."""
    forward = module.__dict__.get("forward")
    if forward is None or getattr(forward, "ntkit_traceable", False):
        return None
    return id(forward)


def recall(model: nn.Module, key: tuple, what: str) -> Any:
    """The remembered outcome ``what`` for ``key``, or ``None``."""
    return _MEMO.get(model, {}).get((what, key))


def remember(model: nn.Module, key: tuple, what: str, value: Any) -> None:
    entries = _MEMO.setdefault(model, {})
    if len(entries) >= MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    entries[(what, key)] = value
