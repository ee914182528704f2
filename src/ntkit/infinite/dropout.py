"""Dropout in training mode, at infinite width (neural-tangents' ``stax.Dropout``).

``Dropout(rate)`` keeps each unit with probability ``rate`` (the *keep* probability, as in
neural-tangents and JAX's ``stax.Dropout``; torch's ``nn.Dropout(p)`` takes the *drop*
probability ``p = 1 − rate``) and scales the kept ones by ``1/rate``. Masks are drawn
independently per example and per unit, so for a mask ``m`` with ``E[m] = rate``:

- two different examples (or two positions): ``E[m m'] / rate² = 1``, the kernels are unchanged;
- an example with itself at the same position: ``E[m²] / rate² = 1/rate``,

so ``nngp``, ``ntk`` and the variances are multiplied by ``1/rate`` on the pairs of an
example with itself at equal positions (the kernel of a network evaluated with dropout
active, e.g. during training; Srivastava et al. 2014; neural-tangents' ``Dropout`` kernel).
``mode="test"`` is the identity. ``kernel(x1, x2)`` with a different ``x2`` treats its
examples as other examples (their masks are independent draws), as neural-tangents does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_choice
from ..errors import ParameterError, ShapeError
from .layers import Layer, Shape, State, require_single
from .state import same_example

MODES = ("train", "test")


class Dropout(Layer):
    """Dropout with *keep* probability ``rate`` in ``(0, 1]`` (``rate=1`` keeps everything).

    Note: ``rate`` is the probability of **keeping** a unit, as in neural-tangents; torch's
    ``nn.Dropout(p)`` takes the probability of dropping it, and :meth:`build_module`
    returns ``nn.Dropout(p=1 - rate)`` (active in ``module.train()`` mode, torch's default).

    Args:
        rate: keep probability, ``0 < rate <= 1``.
        mode: ``"train"`` (the kernel of the network with dropout active; see the module
            docstring) or ``"test"`` (the identity).

    Raises:
        ParameterError: ``rate`` outside ``(0, 1]`` or an unknown ``mode``.
    """

    handles_masks = True

    def __init__(self, rate: float, mode: str = "train") -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) \
                or not 0 < rate <= 1:
            raise ParameterError(
                f"Dropout rate is the keep probability and must be in (0, 1], got {rate!r}; "
                "for torch's drop probability p pass rate=1 - p"
            )
        self.rate = float(rate)
        self.mode = check_choice(mode, "mode", MODES)

    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        if self.mode == "test" or self.rate == 1.0:
            return state
        factor = 1.0 / self.rate
        var1 = state.var1 * factor
        var2 = var1 if state.var2 is state.var1 else state.var2 * factor
        same = same_example(state)
        if same is None:
            return state.replace(var1=var1, var2=var2)
        k = len(state.spatial)
        if state.full_spatial:
            p = math.prod(state.spatial)
            positions = torch.eye(p, dtype=torch.bool, device=same.device)
            positions = positions.reshape(*state.spatial, *state.spatial)
            where = same.reshape(*same.shape, *(1,) * (2 * k)) & positions
        else:
            where = same.reshape(*same.shape, *(1,) * k)
        scale = where.to(state.nngp.dtype).mul_(factor - 1.0).add_(1.0)
        nngp = state.nngp * scale
        ntk = None if state.ntk is None else state.ntk * scale
        return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2)

    def build_module(
        self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple):
            raise ShapeError("Dropout received branches; merge them with FanInSum()/FanInConcat() first")
        if self.mode == "test":
            return nn.Identity(), in_shape
        return nn.Dropout(p=1.0 - self.rate), in_shape
