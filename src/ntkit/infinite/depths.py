"""Every depth and every number of fixed layers of a fully-connected net from one recursion.

The kernels of ``nk.mlp(depth, ...)`` for ``depth = 1, 2, ...`` are the successive layers
of one recursion (docs/DESIGN.md, NTK parameterization): the NNGP after the ``l``-th Dense
layer is the depth-``l`` NNGP, and each layer's kernel is computed from the previous one.
The NTK with the first ``L'`` layers fixed (:func:`ntkit.infinite.fixed.fix_layers`) is the
same recursion with ``ntk`` restarted from zero after layer ``L'``; the recursion being
linear in ``ntk``, all values of ``L'`` are carried at once as a stack of NTKs (one per
``L'``) that share the NNGP and the activation's ``E[φ'φ']`` (Arora et al. 2020 compute their
grid of depths and fixed layers the same way). A grid of ``D`` depths × ``F`` fixed-layer
counts therefore costs one depth-``max(D)`` kernel plus ``F`` cheap multiply–adds per layer,
instead of ``D·F`` kernels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .._validation import (
    as_candidates,
    as_input_pair,
    check_choice,
    check_positive_int,
    check_std,
    resolve_dtype,
)
from ..budget import check_output
from ..errors import ParameterError
from .activations import ElementwiseLayer, activation_from_name
from .dense import Dense
from .engine import input_state
from .layers import Layer
from .state import add_scaled


def mlp_kernels(
    x1: Any,
    x2: Any = None,
    *,
    depths: Sequence[int],
    fix_layers: Sequence[int] = (0,),
    activation: str | Layer = "relu",
    W_std: float = 1.0,
    b_std: float | None = None,
    get: str = "ntk",
    dtype: Any = None,
    copy: bool = True,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Kernels of ``nk.mlp(depth, ·, activation, W_std, b_std)`` for a grid of depths and fixed layers.

    Yields ``(depth, n_fixed, K)`` for every ``depth`` in ``depths`` (ascending) and every
    ``n_fixed`` in ``fix_layers`` with ``n_fixed < depth``, where ``K`` ``(n1, n2)`` equals
    ``fix_layers(mlp(depth, ...), n_fixed).kernel(x1, x2, get=get)`` (with ``get="nngp"``
    ``n_fixed`` does not matter and only ``n_fixed = min(fix_layers)`` is yielded per depth).
    The depth-``max(depths)`` recursion runs once (module docstring). With ``copy=True`` a
    yielded tensor is never modified afterwards; with ``copy=False`` an NTK is a view of the
    recursion's working stack, overwritten once the iteration resumes (no copy of ``n1 × n2``
    per kernel: for a caller that uses each kernel before asking for the next, e.g.
    :class:`~ntkit.sklearn.NTKClassifierCV`).

    Args:
        x1: ``(n1, d)`` inputs; x2: ``(n2, d)`` or ``None`` (``x2 = x1``).
        depths: Dense layers counting the readout, each ``>= 1``.
        fix_layers: numbers of fixed (bottom) layers, each ``>= 0``.
        activation: a name (``"relu"``, ``"erf"``, ``"tanh"``, ...) or an activation layer.
        W_std, b_std: as in :func:`ntkit.mlp`.
        get: ``"ntk"`` or ``"nngp"``.
        dtype: float64 (default) or float32.
        copy: whether a yielded NTK is the caller's own (above).

    Raises:
        ParameterError: empty or invalid ``depths``/``fix_layers``/``get``/stds.
        MemoryBudgetError: the ``len(fix_layers) + 2`` live ``n1 × n2`` matrices do not fit
            in memory (checked before any work).
    """
    check_choice(get, "get", ("ntk", "nngp"))
    check_std(W_std, "W_std")
    check_std(b_std, "b_std", allow_none=True)
    depths = sorted({check_positive_int(d, "depth") for d in as_candidates(depths, "depths")})
    fixes = sorted({_check_fix(f) for f in as_candidates(fix_layers, "fix_layers")})
    if get == "nngp":
        fixes = fixes[:1]
    act = activation_from_name(activation)
    x1, x2 = as_input_pair(x1, x2, dtype=resolve_dtype(dtype), min_ndim=2)
    if x1.ndim != 2:
        raise ParameterError(f"mlp_kernels takes flat (n, d) inputs, got shape {tuple(x1.shape)}")
    n1, n2 = x1.shape[0], x1.shape[0] if x2 is None else x2.shape[0]
    live = (len(fixes) + 2) if get == "ntk" else 2
    check_output(live * n1 * n2 * x1.element_size(),
                 f"{live} live {n1}×{n2} {x1.dtype} kernels of the depth recursion",
                 "fewer fix_layers values or fewer examples", x1.device)
    state = input_state(x1, x2, want_ntk=False, diagonal=False, full_spatial=False)
    if x2 is None:
        # x x^T from a matrix product is symmetric only to rounding, and the arc-cosine kernels
        # amplify a rounding difference near correlation 1 to ~sqrt(eps): average the two halves
        # (exactly symmetric: the sum commutes), every layer then maps it symmetrically.
        nngp = (state.nngp + state.nngp.T) / 2
        nngp.diagonal().copy_(state.var1)  # a point with itself keeps its variance bit for bit
        state = state.replace(nngp=nngp)
    # One NTK per number of fixed layers, stacked on a leading axis and updated in place: the
    # layers' recursions (ntk ← nngp + W²·ntk, ntk ← ntk·E[φ'φ']) broadcast over it, with the
    # rounding of Dense's and the activation's own products. Fresh (F, n1, n2) stacks every
    # layer cost more in page faults than the arithmetic (benchmarks/RESULTS.md); a yielded
    # NTK is therefore a copy (copy=True), except at the last layer, after which the stack is
    # not touched.
    stack = state.nngp.new_zeros((len(fixes), n1, n2)) if get == "ntk" else None
    owned_derivative = (isinstance(act, ElementwiseLayer)
                        and type(act).apply_kernel is ElementwiseLayer.apply_kernel)
    dense = Dense(1, W_std, b_std)
    w2 = dense.W_std**2
    last = depths[-1]
    for layer in range(1, last + 1):
        state = dense.apply_kernel(state)  # (the NTK is kept apart, in the stack)
        if stack is not None:
            add_scaled(state.nngp, stack, w2, out=stack)  # Dense's NTK rule, on the stack
            # layers at initialization for the larger L' (fixes ascending: a trailing block)
            stack[sum(f < layer for f in fixes):] = 0.0
        if layer in depths:
            for i, f in enumerate(fixes):
                if f < layer:
                    K = state.nngp if stack is None else stack[i]
                    if copy and stack is not None and layer < last:
                        K = K.clone()
                    yield layer, f, K
        if layer < last:
            if stack is None:
                state = act.apply_kernel(state)
            elif owned_derivative:
                state, dot = act.nngp_and_derivative(state)
                stack.mul_(dot)
            else:  # any other layer: its own map of the NTK, a fresh stack we then own
                state = act.apply_kernel(state.replace(ntk=stack))
                stack, state = state.ntk, state.replace(ntk=None)


def _check_fix(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ParameterError(f"fix_layers values must be integers >= 0, got {value!r}")
    return int(value)
