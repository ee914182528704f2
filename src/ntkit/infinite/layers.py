"""The :class:`Layer` base class: one description, two objects.

Every layer maps kernel states to kernel states (the infinite-width network) and builds
the matching finite ``nn.Module`` (the finite network in the same parameterization).
Combinators are layers too, so a whole architecture is a single :class:`Layer`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import as_input_pair, check_finite_result, resolve_dtype
from ..errors import ParameterError, ShapeError
from ..kernel import Kernel
from .masks import as_mask, remask, unsupported_layer
from .state import KernelState

#: One example's shape, or a list of them after a ``FanOut``.
Shape = tuple[int, ...] | list
#: A kernel state, or a tuple of them after a ``FanOut``.
State = KernelState | tuple

_KERNEL_NAMES = ("nngp", "ntk")


class Layer(abc.ABC):
    """A layer of an architecture (see ``docs/DESIGN.md``, "One description, two objects")."""

    # ------------------------------------------------------------------ to override
    @abc.abstractmethod
    def apply_kernel(self, state: State) -> State:
        """Map the kernel state of this layer's input to that of its output."""

    @abc.abstractmethod
    def build_module(
        self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[nn.Module, Shape]:
        """Return the finite module for one example shape ``in_shape`` and its output shape."""

    def needs_full_spatial(self) -> bool:
        """Whether this layer needs position-by-position covariances (e.g. pooling)."""
        return False

    #: Whether the layer honours masks of absent positions (``kernel(..., mask1=...)``):
    #: position-wise layers pass them through, the others must exclude absent positions.
    handles_masks = False

    #: Whether the finite module this layer builds has trainable parameters (weights,
    #: biases): the gradient terms a layer adds to the NTK. ``fix_layers`` counts these.
    has_parameters = False

    # ------------------------------------------------------------------ public API
    def kernel(
        self,
        x1: Any,
        x2: Any = None,
        get: str | Sequence[str] = ("nngp", "ntk"),
        *,
        diagonal: bool = False,
        dtype: Any = None,
        memory_budget: int | float | str | None = None,
        mask1: Any = None,
        mask2: Any = None,
        pattern1: Any = None,
        pattern2: Any = None,
    ) -> Kernel | torch.Tensor:
        """Infinite-width NNGP and NTK of this architecture.

        Args:
            x1: ``(n1, *in_shape)`` inputs (tensor or NumPy array); ``in_shape`` is ``(d,)``
                for fully-connected nets and ``(C, *spatial)`` for convolutional ones.
            x2: ``(n2, *in_shape)`` or ``None``; ``None`` means ``x2 = x1`` and only the
                symmetric half is computed.
            get: ``"nngp"`` or ``"ntk"`` to return that ``(n1, n2)`` tensor, or a tuple of
                names to return a :class:`~ntkit.Kernel` with those fields filled.
            diagonal: compute only ``k(x1_i, x2_i)`` (``x2=None``: ``k(x_i, x_i)``); the
                kernels are then ``(n,)``.
            dtype: ``torch.float64`` (default) or ``torch.float32``.
            memory_budget: peak bytes of temporary kernel work (the tiles in flight), not
                counting the inputs and the returned matrices: ``2**28``, ``2.5e8``,
                ``"256MiB"``, ``"1GiB"``, ... (default 1 GiB; see :mod:`ntkit.budget`).
            mask1, mask2: boolean ``(n1, *S)``/``(n2, *S)`` masks of absent positions of
                sequences/images (``True`` = absent; ``None`` = all present), excluded from
                attention, pooling and normalization (see :mod:`ntkit.infinite.masks`).
                ``mask2`` needs ``x2``.
            pattern1, pattern2: ``(n1, N, N)``/``(n2, N, N)`` graph patterns (weighted
                adjacencies) of node features ``x (n, C, N)`` for :class:`~ntkit.Aggregate`
                (see :mod:`ntkit.infinite.graph`). ``pattern2`` needs ``x2``.

        Returns:
            A tensor (``get`` a string) or a :class:`~ntkit.Kernel`, on the inputs' device.

        Raises:
            NonFiniteError: the inputs hold NaN/Inf, or a kernel overflowed (the message says
                what to change: smaller ``W_std``/``b_std`` or depth, rescaled inputs, float64).
            ParameterError: bad ``get``/``dtype`` (float16 and complex inputs are refused).
            ParameterError: a bad ``memory_budget`` spelling (or other argument).
            MemoryBudgetError: one tile does not fit ``memory_budget``, or the returned
                matrices do not fit in memory (checked before any work; see
                :func:`ntkit.budget.check_output`).
        """
        from ..budget import parse_budget
        from .engine import evaluate

        budget = parse_budget(memory_budget)

        names, as_tensor_result = _parse_get(get)
        dtype = resolve_dtype(dtype)
        x1, x2 = as_input_pair(x1, x2, dtype=dtype)
        side1, side2, mask1, mask2 = self._masks(x1, x2, mask1, mask2)
        side1, side2 = _with_patterns(x1, x2, side1, side2, pattern1, pattern2)
        if x2 is not None:
            same_masks = (mask1 is None) == (mask2 is None) and (
                mask1 is None or torch.equal(mask1, mask2))
            same_masks = same_masks and (pattern1 is None or torch.equal(side1["pattern"], side2["pattern"]))
            if x2.shape == x1.shape and torch.equal(x1, x2) and same_masks:
                x2 = None  # k(x, x): compute the symmetric half, pairs with itself exact
                side2 = None
            elif diagonal and x2.shape[0] != x1.shape[0]:
                raise ShapeError(
                    f"diagonal=True pairs x1[i] with x2[i], so both need the same number of "
                    f"rows; got {x1.shape[0]} and {x2.shape[0]}"
                )
        result = evaluate(
            self, x1, x2, want_ntk="ntk" in names, diagonal=bool(diagonal),
            memory_budget=budget, want_nngp="nngp" in names, side1=side1, side2=side2,
        )
        if mask1 is not None:
            result = remask(result, mask1, mask1 if mask2 is None else mask2)
        if "nngp" not in names:
            result = Kernel(None, result.ntk, result.var1, result.var2, result.diagonal)
        check_finite_result(
            tuple(getattr(result, name) for name in names),
            f"the infinite-width {'/'.join(names)} kernel of {type(self).__name__} ({x1.dtype})",
        )
        return result.get(names[0]) if as_tensor_result else result

    def _masks(self, x1, x2, mask1, mask2):
        """Checked masks as side information: ``(side1, side2, mask1, mask2)``."""
        if mask1 is None and mask2 is None:
            return None, None, None, None
        if mask2 is not None and x2 is None:
            raise ShapeError("mask2 was given without x2; pass x2 too, or only mask1 for kernel(x1)")
        bad = unsupported_layer(self)
        if bad is not None:
            raise ShapeError(
                f"{type(bad).__name__} cannot honour masks of absent positions (mask1/mask2); "
                "layers that do: Dense, activations, LayerNorm, Dropout, FanOut/FanInSum/"
                "FanInConcat/FanInProd, GlobalSelfAttention, GlobalAvgPool. Remove the masks "
                "(e.g. crop the inputs to equal length) or that layer"
            )
        m1 = torch.zeros((x1.shape[0], *x1.shape[2:]), dtype=torch.bool, device=x1.device) \
            if mask1 is None else as_mask(mask1, x1, "mask1")
        if x2 is None:
            return {"mask": m1}, None, m1, None
        m2 = torch.zeros((x2.shape[0], *x2.shape[2:]), dtype=torch.bool, device=x2.device) \
            if mask2 is None else as_mask(mask2, x2, "mask2")
        return {"mask": m1}, {"mask": m2}, m1, m2

    def kernel_source(self, x1: Any, x2: Any = None, get: str = "ntk", *, dtype: Any = None):
        """This architecture's kernel on ``(x1, x2)`` as a kernel source (:mod:`ntkit.sources`).

        ``x1 (n1, *in_shape)``, ``x2 (n2, *in_shape)`` or ``None`` (symmetric); ``get``:
        ``"ntk"`` or ``"nngp"``; ``dtype``: float64 (default) or float32. The source of
        ``nk.linalg.KernelOperator(arch, x1, x2, get)``; its tiles are those of
        :meth:`kernel` (one number per pair: spatial nets need a readout).

        Returns:
            A :class:`~ntkit.infinite.source.LayerSource`.
        """
        from .source import LayerSource

        return LayerSource(self, x1, x2, get, dtype=dtype)

    def build(
        self, in_shape: Sequence[int] | int, seed: int | None = None, dtype: Any = torch.float64
    ) -> nn.Module:
        """The finite network of the stated widths, in this architecture's parameterization.

        Args:
            in_shape: shape of one example, e.g. ``(d,)`` or ``(C, H, W)``.
            seed: seed of the N(0, 1) draws of every weight and bias (``None``: random).
            dtype: parameter dtype (float64 by default).

        Returns:
            An ``nn.Module`` mapping ``(n, *in_shape)`` to the network's outputs, whose
            empirical NTK converges to :meth:`kernel` as the widths grow.
        """
        if isinstance(in_shape, int):
            in_shape = (in_shape,)
        in_shape = tuple(int(s) for s in in_shape)
        if not in_shape or any(s < 1 for s in in_shape):
            raise ShapeError(f"in_shape must be a non-empty tuple of positive sizes, got {in_shape}")
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise ParameterError(f"seed must be an integer or None, got {seed!r}")
            generator.manual_seed(int(seed))
        module, _ = self.build_module(in_shape, generator, resolve_dtype(dtype))
        return module

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def _parse_get(get: str | Sequence[str]) -> tuple[tuple[str, ...], bool]:
    if not isinstance(get, (str, tuple, list)):
        raise ParameterError(
            f"get must be 'nngp', 'ntk' or a tuple of them (default ('nngp', 'ntk')), got {get!r}"
        )
    if isinstance(get, str):
        names: tuple[str, ...] = (get,)
        single = True
    else:
        names = tuple(get)
        single = False
    bad = [g for g in names if g not in _KERNEL_NAMES]
    if not names or bad:
        raise ParameterError(
            f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}"
        )
    return names, single


def require_single(state: State, layer: Layer) -> KernelState:
    """Return ``state`` if it is one state; a layer after ``FanOut`` needs ``parallel``."""
    if isinstance(state, tuple):
        raise ShapeError(
            f"{type(layer).__name__} received {len(state)} branches; merge them with "
            "FanInSum()/FanInConcat() or give one layer per branch with parallel(...)"
        )
    return state


def require_flat(state: KernelState, layer: Layer) -> KernelState:
    """Return ``state`` if it is fully-connected; otherwise say how to flatten it."""
    if state.is_spatial:
        raise ShapeError(
            f"{type(layer).__name__} expects flat (n, d) inputs but got spatial inputs of "
            f"shape (C={state.width}, {', '.join(map(str, state.spatial))}); add Flatten() "
            "or GlobalAvgPool() before it, or pass x.reshape(len(x), -1)"
        )
    return state


def _with_patterns(x1, x2, side1, side2, pattern1, pattern2):
    """Add checked graph patterns (``"pattern"``, ``(n, N, N)``) to the side information."""
    if pattern1 is None and pattern2 is None:
        return side1, side2
    if pattern2 is not None and x2 is None:
        raise ShapeError("pattern2 was given without x2; pass x2 too, or only pattern1 for kernel(x1)")
    if x2 is not None and (pattern1 is None or pattern2 is None):
        raise ShapeError("graph inputs need a pattern for each side: pass pattern1 and pattern2 with x2")

    def checked(pattern, x, name):
        if x.ndim != 3:
            raise ShapeError(
                f"{name} goes with node features (n, C, N), but the inputs have shape {tuple(x.shape)}")
        t = torch.as_tensor(pattern, device=x.device).to(x.dtype)
        n, nodes = x.shape[0], x.shape[2]
        if t.shape != (n, nodes, nodes):
            raise ShapeError(
                f"{name} must be (n, N, N) = ({n}, {nodes}, {nodes}) for node features of shape "
                f"{tuple(x.shape)}, got {tuple(t.shape)}: one N x N pattern per graph, with the "
                "node count of the features"
            )
        if not bool(torch.isfinite(t).all()):
            raise ShapeError(f"{name} holds NaN or Inf")
        return t

    side1 = dict(side1 or {}, pattern=checked(pattern1, x1, "pattern1"))
    if x2 is not None:
        side2 = dict(side2 or {}, pattern=checked(pattern2, x2, "pattern2"))
    return side1, side2
