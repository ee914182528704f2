"""Matmul/convolution flops of one forward, read off the layers when every module is known.

The probe (:func:`ntkit.empirical._params.prepare`) measures the forward's flops for the
cost model. ``torch.utils.flop_counter.FlopCounterMode`` counts them for any model, but it is
a ``TorchDispatchMode``, and the first use of any dispatch mode imports ``torch._dynamo``
(2–3 s of CPU, once per process). For a model built only from the layers below (``nn.Linear``,
``nn.Conv1d/2d/3d``, activations, ``nn.Flatten``, ``nn.Sequential`` and the modules that
:meth:`ntkit.infinite.Layer.build` makes of them) the count follows from each layer's output
shape — ``2·in_features`` flops per output entry of an affine layer and
``2·(C_in/groups)·prod(kernel)`` per output entry of a convolution, the counts
``FlopCounterMode`` gives (aten ``mm``/``addmm``/``convolution``: ``2·m·k·n``); elementwise
layers count 0, as there. Every other model is counted by ``FlopCounterMode``.
"""

from __future__ import annotations

import math

from torch import nn

from ..finite.activations import Elementwise
from ..finite.combinators import Serial
from ..finite.conv import NTKConv
from ..finite.dense import NTKDense, ScaledStandardDense
from ..finite.pooling import FlattenModule

_AFFINE = (nn.Linear, NTKDense, ScaledStandardDense)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, NTKConv)
#: Modules without matmul/convolution work of their own (containers call only their children).
_FREE = (
    nn.Sequential, Serial, Elementwise, FlattenModule, nn.Flatten, nn.Identity,
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus,
)


def counts_from_layers(model: nn.Module) -> bool:
    """Whether every module of ``model`` (itself included) is one whose flops are known.

    Exact types only: a subclass may override ``forward`` with other work.
    """
    return all(type(m) in _AFFINE or type(m) in _CONV or type(m) in _FREE for m in model.modules())


def layer_flops(module: nn.Module, out: object) -> float:
    """Matmul/convolution flops of one call of a module accepted by :func:`counts_from_layers`
    that returned ``out``."""
    t = type(module)
    if t in _AFFINE:
        return 2.0 * module.in_features * out.numel()
    if t in _CONV:
        groups = getattr(module, "groups", 1)
        return 2.0 * (module.in_channels // groups) * math.prod(module.kernel_size) * out.numel()
    return 0.0
