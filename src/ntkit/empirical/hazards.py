"""Forward passes the NTK cannot be taken through, detected on the probe.

The empirical NTK differentiates the model's outputs with respect to its weights; a forward
that switches autodiff off for part of its work (``with torch.no_grad():`` or
``torch.set_grad_enabled(False)`` inside ``forward``) hides those weights' share of the
Jacobian, and every method would silently return a wrong (smaller) kernel.
:func:`check_forward_grad_mode` watches every torch operation of one probe forward and
raises :class:`~ntkit.errors.ModelError` naming the fix when any ran with gradients off.
(Buffer updates, BatchNorm in training mode and randomness are checked in
:mod:`ntkit.empirical._params`.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import ModelError


class _GradModeWatch(TorchFunctionMode):
    """Records torch functions called with gradients disabled while ``inside`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.ops: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.inside and not torch.is_grad_enabled() and len(self.ops) < 5:
            self.ops.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def check_forward_grad_mode(model: nn.Module) -> Iterator[None]:
    """Run the block (one forward of ``model`` with gradients enabled); raise ModelError if
    the forward computed anything with gradients disabled."""
    watch = _GradModeWatch()

    def enter(module, args, kwargs=None):
        watch.inside += 1

    def leave(module, args, out):
        watch.inside -= 1

    handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave)]
    try:
        with torch.enable_grad(), watch:
            yield
    finally:
        for h in handles:
            h.remove()
    if watch.ops:
        raise ModelError(
            f"the model's forward computes with gradients disabled (torch.no_grad() or "
            f"set_grad_enabled(False) inside forward; ops {', '.join(watch.ops)}), so the weights "
            "used there would be missing from the NTK. Remove the no_grad block from forward (to "
            "hold weights fixed, leave them out with params=... or set requires_grad=False)"
        )
