"""Fully-connected layers (Jacot et al. 2018; Lee et al. 2019, docs/DESIGN.md conventions)."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_choice, check_positive_int, check_std
from ..errors import ParameterError, ShapeError
from ..finite.dense import NTKDense, ScaledStandardDense
from .layers import Layer, Shape, State, require_single
from .state import add_scaled, is_zero_constant, scale_shift

PARAMETERIZATIONS = ("ntk", "standard")


def _as_scalar(value: float | torch.Tensor) -> float | torch.Tensor:
    """Keep 0-dim tensors (differentiable hyperparameters); plain numbers become floats."""
    return value if isinstance(value, torch.Tensor) else float(value)


class Dense(Layer):
    """Fully-connected layer of ``width`` outputs.

    NTK parameterization (default): ``z = (W_std/√fan_in)·W x + b_std·b``, ``W, b ~ N(0, 1)``;
    kernel recursion ``nngp ← W_std²·nngp + b_std²``, ``ntk ← nngp_new + W_std²·ntk``.
    Standard parameterization: ``z = W x + b``, ``W ~ N(0, W_std²/fan_in)``, ``b ~ N(0, b_std²)``;
    the NNGP is the same and ``ntk ← fan_in·nngp + [bias] + W_std²·ntk`` (the gradient with
    respect to the unscaled weights carries the fan-in; Sohl-Dickstein et al. 2020), so this
    kernel grows with the stated widths.

    ``s=(s_in, s_out)`` (standard parameterization only; neural-tangents' ``s``, Sohl-Dickstein
    et al. 2020): the finite layer has ``s_in·d`` inputs and ``s_out·width`` outputs,
    ``z = W x/√s_in + b`` with ``W ~ N(0, W_std²·s_in/fan_in)``; the NNGP is unchanged and
    the NTK's fan-in factor is the base width ``fan_in/s_in``. The first layer needs
    ``s_in = 1`` and each layer's ``s_in`` the previous layer's ``s_out``.

    ``b_std=None`` means no bias. ``W_std``/``b_std`` may be 0-dim tensors with
    ``requires_grad`` to differentiate kernels with respect to them.

    On flat inputs ``(n, d)`` the layer maps ``(n, d) -> (n, width)``. On spatial inputs
    ``(n, C, *S)`` (sequences ``(n, C, T)``, images ``(n, C, H, W)``) it acts on the channel
    axis at every position with shared weights — a 1×1 convolution, as neural-tangents'
    ``Dense`` with a ``channel_axis`` — mapping ``(n, C, *S) -> (n, width, *S)`` with
    ``fan_in = C``; the same recursion then holds for every pair of positions, in the
    spatial-diagonal and the full spatial layout alike.
    """

    has_parameters = True

    handles_masks = True  # position-wise

    def __init__(
        self,
        width: int,
        W_std: float = 1.0,
        b_std: float | None = None,
        parameterization: str = "ntk",
        s: tuple[int, int] = (1, 1),
    ) -> None:
        self.width = check_positive_int(width, "width")
        check_std(W_std, "W_std")
        check_std(b_std, "b_std", allow_none=True)
        self.W_std = _as_scalar(W_std)
        self.b_std = None if b_std is None else _as_scalar(b_std)
        self.parameterization = check_choice(parameterization, "parameterization", PARAMETERIZATIONS)
        self.s = _check_s(s, self.parameterization)

    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        w2 = self.W_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        # Two passes over the largest tensor (a fresh product, then the bias in place); the
        # rounding is that of `w2 * nngp + b2`, so a self pair's diagonal stays its variance.
        nngp = scale_shift(state.nngp, w2, None if self.b_std is None else b2, inplace=False)
        ntk = None
        if state.ntk is not None:
            if self.parameterization == "ntk":
                # A zero incoming NTK (the raw inputs, as a broadcast zero): ntk' = nngp',
                # shared (no layer writes into its inputs).
                zero = state.ntk is not state.nngp and is_zero_constant(state.ntk)
                ntk = nngp if zero else add_scaled(nngp, state.ntk, w2)
            else:
                bias_term = 0.0 if self.b_std is None else 1.0
                ntk = (state.width / self.s[0]) * state.nngp + bias_term + w2 * state.ntk
        return state.replace(
            nngp=nngp,
            ntk=ntk,
            var1=w2 * state.var1 + b2,
            var2=w2 * state.var2 + b2,
            width=self.width * self.s[1],
            fresh=True,
        )

    def build_module(
        self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple) or not in_shape:
            raise ShapeError(
                f"Dense expects one input of shape (d,) or (C, *spatial), got {in_shape}; "
                "merge branches with FanInSum()/FanInConcat() first"
            )
        if self.s != (1, 1):
            module = ScaledStandardDense(in_shape[0], self.width * self.s[1], self.s[0], self.W_std,
                                         self.b_std, generator, dtype)
            return module, (self.width * self.s[1], *in_shape[1:])
        module = NTKDense(
            in_shape[0], self.width, W_std=self.W_std, b_std=self.b_std,
            parameterization=self.parameterization, generator=generator, dtype=dtype,
        )
        return module, (self.width, *in_shape[1:])


def _check_s(s, parameterization: str) -> tuple[int, int]:
    """``s`` as a pair of ints >= 1; only ``(1, 1)`` with the NTK parameterization."""
    try:
        pair = tuple(s)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ParameterError(f"s must be a pair of integers >= 1 (s_in, s_out), got {s!r}")
    if pair != (1, 1) and parameterization != "standard":
        raise ParameterError(
            f"s={pair} scales widths in the standard parameterization only; pass "
            "parameterization='standard' (the NTK parameterization's kernel does not depend on s)"
        )
    return (int(pair[0]), int(pair[1]))
