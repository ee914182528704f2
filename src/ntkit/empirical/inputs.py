"""Model inputs and outputs of any shape: tensors, tuples/lists, dicts, dataclasses.

The empirical kernels (:func:`ntkit.empirical_ntk`, :func:`ntkit.empirical_nngp`,
:func:`ntkit.ntk_vp`) and :func:`ntkit.linearize` call a model on *batches of examples*.
This module is how a batch is held and how the model's answer is read:

- **Inputs** (:class:`Examples`, made by :func:`as_examples`): a tensor ``(n, ...)`` is
  passed as ``model(x)``; a tuple or list of tensors ``(input_ids, attention_mask)`` as
  ``model(*x)``; a dict ``{"input_ids": ..., "attention_mask": ...}`` as ``model(**x)``.
  Every tensor is batched along dim 0 (the same ``n`` for all); ``None`` entries pass
  through. Floating tensors are cast to the model's dtype; integer and boolean tensors
  (token ids, masks) keep theirs. Arguments that are not batched (a fixed causal mask, a
  flag) go in ``model_kwargs``, passed unchanged to every call.
- **Outputs** (:class:`OutputSelector`): the model may return a tensor, a tuple/list, a
  dict (e.g. Hugging Face's ``ModelOutput``) or an object with tensor fields (a dataclass).
  ``output_fn`` says which part counts: a callable ``raw -> tensor (n, ...)``, a key or
  attribute name (``"logits"``), an index (``0``), or :func:`all_outputs` (every tensor,
  flattened and concatenated per example). By default a lone tensor is used and anything
  else raises :class:`~ntkit.errors.ModelError` listing the candidate fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .._validation import as_tensor
from ..errors import DeviceError, ModelError, ParameterError, ShapeError

#: What ``output_fn`` may be: ``None`` (the lone tensor), a callable, a key/attribute, an index.
OutputFn = None | Callable[[Any], torch.Tensor] | str | int


class Examples:
    """A batch of ``n`` model inputs: batched tensors plus how to pass them to the model.

    Attributes:
        kind: ``"tensor"`` (``model(x)``), ``"sequence"`` (``model(*x)``) or ``"mapping"``
            (``model(**x)``).
        keys: the entries' names (mapping) or positions (sequence); ``()`` for a tensor.
        leaves: the entries, each ``(n, ...)`` or ``None``.
        kwargs: non-batched keyword arguments passed to every call (``model_kwargs``).

    Indexing (``ex[a:b]``, ``ex[index_tensor]``) selects examples; ``len(ex)`` and
    ``ex.shape[0]`` are ``n``.
    """

    def __init__(self, kind: str, keys: tuple, leaves: tuple, kwargs: dict | None = None) -> None:
        self.kind, self.keys, self.leaves = kind, keys, tuple(leaves)
        self.kwargs = {} if kwargs is None else kwargs

    # -------------------------------------------------------------- batch
    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in self.leaves if t is not None)

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    @property
    def shape(self) -> torch.Size:
        """``(n,)``: the batch shape (the example shapes are per entry, :meth:`signature`)."""
        return torch.Size([len(self)])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Examples:
        """The same batch with ``fn`` applied to every tensor entry."""
        return self.with_leaves(tuple(None if t is None else fn(t) for t in self.leaves))

    def with_leaves(self, leaves: tuple) -> Examples:
        return Examples(self.kind, self.keys, leaves, self.kwargs)

    def __getitem__(self, index: Any) -> Examples:
        return self.map(lambda t: t[index])

    def repeat_interleave(self, repeats: int) -> Examples:
        return self.map(lambda t: t.repeat_interleave(repeats, dim=0))

    def signature(self) -> tuple:
        """Per entry: key, example shape, dtype, device (what a probe of the model depends on)."""
        entries = tuple(None if t is None else (tuple(t.shape[1:]), t.dtype, t.device) for t in self.leaves)
        return (self.kind, self.keys, *entries, _kwargs_signature(self.kwargs))

    # -------------------------------------------------------------- calls
    def arguments(self, leaves: tuple | None = None) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of the model call for these (or the given) entries."""
        leaves = self.leaves if leaves is None else leaves
        if self.kind == "tensor":
            return (leaves[0],), dict(self.kwargs)
        if self.kind == "sequence":
            return tuple(leaves), dict(self.kwargs)
        return (), {**dict(zip(self.keys, leaves)), **self.kwargs}

    def with_tensors(self, tensors: tuple, add_batch_axis: bool = False) -> Examples:
        """The same layout with its tensor entries replaced (``None`` entries kept); with
        ``add_batch_axis`` each tensor is one example without its batch axis (inside ``vmap``)."""
        it = iter(tensors)
        leaves = tuple(None if t is None else next(it) for t in self.leaves)
        if add_batch_axis:
            leaves = tuple(None if t is None else t[None] for t in leaves)
        return self.with_leaves(leaves)

    def describe(self) -> str:
        if self.kind == "tensor":
            return f"shape {tuple(self.leaves[0].shape)}"
        parts = ", ".join(f"{k!r}: {'None' if t is None else tuple(t.shape)}"
                          for k, t in zip(self.keys, self.leaves))
        opening, closing = ("(", ")") if self.kind == "sequence" else ("{", "}")
        return opening + parts + closing


def _kwargs_signature(kwargs: dict) -> tuple:
    out = []
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            out.append((k, tuple(v.shape), v.dtype, v.device))
        else:
            out.append((k, type(v).__name__, repr(v)[:200]))
    return tuple(out)


def _leaf(value: Any, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        t = value
        if t.device != device:
            raise DeviceError(
                f"{name} is on {t.device} but the model is on {device}; move them to one device "
                "first (ntkit never copies silently)"
            )
    elif isinstance(value, (np.ndarray, list, int, float, np.number)):
        arr = np.asarray(value)
        if not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
            raise ShapeError(f"{name} must be numeric, got an array of dtype {arr.dtype}")
        t = torch.as_tensor(arr.copy() if not arr.flags.writeable else arr, device=device)
    else:
        raise ShapeError(
            f"{name} is a {type(value).__name__}; batched model inputs must be tensors or arrays "
            "(batch axis first). Pass arguments that are not batched with model_kwargs={...}"
        )
    if t.is_complex():
        raise ParameterError(f"{name} is complex ({t.dtype}); the empirical NTK needs real inputs")
    if t.is_floating_point():
        t = as_tensor(t, name, dtype=dtype, min_ndim=1)
    elif t.ndim < 1:
        raise ShapeError(f"{name} must have a batch axis first, got a scalar")
    elif t.numel() == 0:
        raise ShapeError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one example")
    return t


def as_examples(x: Any, name: str, *, dtype: torch.dtype, device: torch.device,
                model_kwargs: dict | None = None) -> Examples:
    """``x`` (tensor, array, tuple/list or dict of them) as :class:`Examples`.

    Raises ShapeError (no tensor, different batch sizes, a non-array entry), DeviceError,
    NonFiniteError (NaN/Inf in a floating entry), ParameterError (bad ``model_kwargs``).
    """
    if model_kwargs is None:
        model_kwargs = {}
    if not isinstance(model_kwargs, Mapping) or not all(isinstance(k, str) for k in model_kwargs):
        raise ParameterError(
            f"model_kwargs must be a dict of keyword arguments, got {type(model_kwargs).__name__}"
        )
    if isinstance(x, Mapping):
        if not all(isinstance(k, str) for k in x):
            raise ShapeError(f"{name} is a dict: its keys must be the forward's argument names (strings)")
        keys = tuple(x)
        leaves = tuple(_leaf(x[k], f"{name}[{k!r}]", dtype, device) for k in keys)
        kind = "mapping"
        clash = set(keys) & set(model_kwargs)
        if clash:
            raise ParameterError(f"{sorted(clash)} given both in {name} and in model_kwargs; pass each once")
    elif isinstance(x, (tuple, list)) and x and not _is_number_list(x):
        keys = tuple(range(len(x)))
        leaves = tuple(_leaf(v, f"{name}[{i}]", dtype, device) for i, v in enumerate(x))
        kind = "sequence"
    else:
        leaves = (_leaf(x, name, dtype, device),)
        if leaves[0] is None:
            raise ShapeError(f"{name} is None; pass a batch of inputs")
        keys, kind = (), "tensor"
    ex = Examples(kind, keys, leaves, dict(model_kwargs))
    if not ex.tensors:
        raise ShapeError(f"{name} holds no tensor; pass the batched inputs (batch axis first)")
    sizes = {int(t.shape[0]) for t in ex.tensors}
    if len(sizes) > 1:
        raise ShapeError(
            f"the entries of {name} have different batch sizes ({ex.describe()}); every entry is "
            "batched along dim 0 with the same number of examples. Pass entries that are not "
            "batched with model_kwargs={...}"
        )
    return ex


def _is_number_list(x: Any) -> bool:
    """A (nested) list of numbers is one array, not a tuple of arguments."""
    first = x[0]
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    return isinstance(first, (int, float, bool, np.number))


def as_example_pair(x1: Any, x2: Any, *, dtype: torch.dtype, device: torch.device,
                    model_kwargs: dict | None = None) -> tuple[Examples, Examples | None]:
    """``x1`` and ``x2`` (or ``None``) as :class:`Examples` of the same layout."""
    e1 = as_examples(x1, "x1", dtype=dtype, device=device, model_kwargs=model_kwargs)
    if x2 is None:
        return e1, None
    e2 = as_examples(x2, "x2", dtype=dtype, device=device, model_kwargs=model_kwargs)
    if e1.signature() != e2.signature():
        raise ShapeError(
            f"x1 and x2 must have the same layout and the same example shape per entry, got x1 "
            f"{e1.describe()} and "
            f"x2 {e2.describe()}; pad or reshape them alike"
        )
    return e1, e2


# ------------------------------------------------------------------ outputs
def tensor_fields(raw: Any) -> list[tuple[str, torch.Tensor]]:
    """The tensor entries of a model output, with the ``output_fn`` that selects each."""
    if isinstance(raw, torch.Tensor):
        return [("", raw)]
    if isinstance(raw, Mapping):
        return [(repr(k), v) for k, v in raw.items() if isinstance(v, torch.Tensor)]
    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        return [(repr(f.name), getattr(raw, f.name)) for f in dataclasses.fields(raw)
                if isinstance(getattr(raw, f.name), torch.Tensor)]
    if isinstance(raw, (tuple, list)):
        names = getattr(raw, "_fields", None)
        return [(repr(names[i]) if names else str(i), v) for i, v in enumerate(raw)
                if isinstance(v, torch.Tensor)]
    return []


def all_outputs(raw: Any) -> torch.Tensor:
    """``output_fn`` that counts every tensor the model returns: each ``(n, ...)`` entry is
    flattened to ``(n, -1)`` and they are concatenated (in the order of the output's
    fields) to ``(n, o)``. Nested tuples/dicts are walked depth first."""
    flat: list[torch.Tensor] = []

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat.append(value.reshape(value.shape[0], -1) if value.ndim else value.reshape(1, 1))
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, (tuple, list)):
            for v in value:
                walk(v)

    walk(raw)
    if not flat:
        raise ModelError(f"the model's output ({type(raw).__name__}) holds no tensor")
    return torch.cat(flat, dim=1) if len(flat) > 1 else flat[0]


class OutputSelector:
    """Reads the tensor that counts out of a model's raw output (see the module docstring)."""

    def __init__(self, output_fn: OutputFn = None) -> None:
        if not (output_fn is None or callable(output_fn) or isinstance(output_fn, (str, int))) or (
            isinstance(output_fn, bool)
        ):
            raise ParameterError(
                "output_fn must be None, a callable raw_output -> tensor, a key/attribute name "
                f"(str) or an index (int); got {output_fn!r}"
            )
        self.output_fn = output_fn

    def key(self) -> Any:
        """A hashable identity of the selection (for remembering probes)."""
        fn = self.output_fn
        if fn is None or isinstance(fn, (str, int)):
            return fn
        code = getattr(fn, "__code__", None)
        if code is None:
            return ("object", id(fn))
        cells = tuple(repr(c.cell_contents)[:200] for c in (fn.__closure__ or ()))
        return (code, cells, repr(getattr(fn, "__defaults__", None))[:200])

    def __call__(self, raw: Any) -> torch.Tensor:
        fn = self.output_fn
        if fn is None:
            if isinstance(raw, torch.Tensor):
                return raw
            fields = tensor_fields(raw)
            if len(fields) == 1:
                return fields[0][1]
            raise ModelError(self._ambiguous(raw, fields))
        try:
            if isinstance(fn, str):
                out = raw[fn] if isinstance(raw, Mapping) else getattr(raw, fn)
            elif isinstance(fn, int):
                out = raw[fn]
            else:
                out = fn(raw)
        except (KeyError, AttributeError, IndexError, TypeError) as err:
            fields = tensor_fields(raw)
            raise ModelError(
                f"output_fn={fn!r} failed on the model's output ({type(raw).__name__}): "
                f"{type(err).__name__}: {err}. {self._listing(fields)}"
            ) from err
        if not isinstance(out, torch.Tensor):
            raise ModelError(
                f"output_fn returned a {type(out).__name__}; it must return one tensor (n, ...) "
                "(use ntkit.empirical.all_outputs to concatenate several)"
            )
        return out

    @staticmethod
    def _listing(fields: list) -> str:
        if not fields:
            return "The output holds no tensor."
        shown = ", ".join(f"{name} {tuple(t.shape)}" for name, t in fields)
        return f"Its tensor fields: {shown}."

    def _ambiguous(self, raw: Any, fields: list) -> str:
        kind = type(raw).__name__
        if not fields:
            return (f"the model returned a {kind} holding no tensor; the empirical NTK needs a "
                    "tensor output (n, ...), selected with output_fn=")
        first = fields[0][0]
        dotted = first.startswith("'") and not isinstance(raw, (Mapping, tuple, list))
        access = f"out.{first[1:-1]}" if dotted else f"out[{first}]"
        return (
            f"the model returned a {kind} with {len(fields)} tensor fields: "
            + ", ".join(f"{name} {tuple(t.shape)}" for name, t in fields)
            + f". Say which counts with output_fn= (e.g. output_fn={first}, or "
            f"output_fn=lambda out: {access}), or output_fn=ntkit.empirical.all_outputs for all "
            "of them concatenated"
        )


def check_output(out: torch.Tensor, n: int) -> None:
    """The selected output must be floating with the batch axis first, ``(n, ...)``."""
    if out.ndim == 0 or out.shape[0] != n:
        raise ModelError(
            f"the model's (selected) output must have the batch axis first, (n={n}, ...); got "
            f"{tuple(out.shape)} for {n} examples. Make forward return one row per example, or "
            "choose another output with output_fn="
        )
    if not out.is_floating_point():
        raise ModelError(f"the model's output has dtype {out.dtype}; the NTK needs floating outputs")


__all__ = ["Examples", "OutputFn", "OutputSelector", "all_outputs", "as_example_pair",
           "as_examples", "check_output", "tensor_fields"]
