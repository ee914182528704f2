"""Combinators: serial composition, branches, and their merges (residual networks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._validation import check_positive_int, check_std
from ..errors import ParameterError, ShapeError
from ..finite.combinators import FanInConcatModule, FanInSumModule, FanOutModule, Parallel, Serial
from .activations import activation_from_name
from .dense import Dense
from .layers import Layer, State, require_single
from .pooling import GlobalAvgPool
from .state import KernelState


def _check_layers(layers: Sequence[Layer], what: str) -> tuple[Layer, ...]:
    if not layers:
        raise ParameterError(f"{what} needs at least one layer")
    for layer in layers:
        if not isinstance(layer, Layer):
            raise ParameterError(
                f"{what} takes ntkit layers (nk.Dense(...), nk.ReLU(), ...), got {layer!r}"
            )
    return tuple(layers)


class SerialLayer(Layer):
    """Layers applied one after the other; built by :func:`serial`."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = _check_layers(layers, "serial")

    def apply_kernel(self, state: State) -> State:
        layers = list(self.layers)
        i = 0
        while i < len(layers):
            layer = layers[i]
            following = layers[i + 1] if i + 1 < len(layers) else None
            if (type(layer) is Dense and type(following) is GlobalAvgPool
                    and isinstance(state, KernelState) and state.full_spatial and state.diagonal):
                # Dense is the same affine map of every entry and a mean has weights summing
                # to 1, so mean(w²·K + b²) = w²·mean(K) + b²: pooling first applies Dense to
                # one number per pair instead of the full spatial covariance (same kernel).
                state = layer.apply_kernel(following.apply_kernel(state))
                i += 2
                continue
            state = layer.apply_kernel(state)
            i += 1
        return state

    def build_module(self, in_shape, generator, dtype):
        modules = []
        for layer in self.layers:
            module, in_shape = layer.build_module(in_shape, generator, dtype)
            modules.append(module)
        return Serial(*modules), in_shape

    @property
    def has_parameters(self) -> bool:
        return any(layer.has_parameters for layer in self.layers)

    def needs_full_spatial(self) -> bool:
        return any(layer.needs_full_spatial() for layer in self.layers)

    def __repr__(self) -> str:
        return "serial(" + ", ".join(map(repr, self.layers)) + ")"


class ParallelLayer(Layer):
    """One layer per branch; built by :func:`parallel`."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = _check_layers(layers, "parallel")

    def apply_kernel(self, state: State) -> State:
        if not isinstance(state, tuple) or len(state) != len(self.layers):
            got = len(state) if isinstance(state, tuple) else 1
            raise ShapeError(
                f"parallel has {len(self.layers)} layers but received {got} branch(es); "
                f"put FanOut({len(self.layers)}) before it"
            )
        return tuple(layer.apply_kernel(s) for layer, s in zip(self.layers, state))

    def build_module(self, in_shape, generator, dtype):
        if not isinstance(in_shape, list) or len(in_shape) != len(self.layers):
            raise ShapeError(
                f"parallel has {len(self.layers)} layers; put FanOut({len(self.layers)}) before it"
            )
        built = [layer.build_module(s, generator, dtype) for layer, s in zip(self.layers, in_shape)]
        return Parallel([m for m, _ in built]), [s for _, s in built]

    @property
    def has_parameters(self) -> bool:
        return any(layer.has_parameters for layer in self.layers)

    def needs_full_spatial(self) -> bool:
        return any(layer.needs_full_spatial() for layer in self.layers)

    def __repr__(self) -> str:
        return "parallel(" + ", ".join(map(repr, self.layers)) + ")"


class FanOut(Layer):
    """Copies its input into ``n`` branches (to be followed by :func:`parallel`)."""

    handles_masks = True

    def __init__(self, n: int) -> None:
        self.n = check_positive_int(n, "n")

    def apply_kernel(self, state: State) -> State:
        # The copies share their randomness: a branch is "fresh" (uncorrelated with the
        # others) only once it applies a random affine layer of its own.
        return (require_single(state, self).replace(fresh=False),) * self.n

    def build_module(self, in_shape, generator, dtype):
        if isinstance(in_shape, list):
            raise ShapeError("FanOut received branches; merge them first with FanInSum()")
        return FanOutModule(self.n), [in_shape] * self.n


def _branches(state: State, layer: Layer) -> tuple[KernelState, ...]:
    if not isinstance(state, tuple):
        raise ShapeError(f"{type(layer).__name__} needs branches; put FanOut(n) before it")
    return state


def _add_all(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The sum of ``tensors`` (same shape) in one new tensor: one pass per addition.

    (The builtin ``sum`` starts from 0 and allocates a copy per term.)"""
    if len(tensors) == 1:
        return tensors[0]
    total = tensors[0] + tensors[1]
    for t in tensors[2:]:
        total = total.add_(t) if not t.requires_grad else total + t
    return total


class FanInSum(Layer):
    """Sums the branches: ``nngp`` and ``ntk`` add.

    The kernels of a sum add only when the cross-covariances vanish, which holds when all
    branches but at most one end in a zero-mean random affine layer (Dense/Conv, possibly
    followed by pooling) applied after the ``FanOut``: e.g. a residual block
    ``x + Dense(ReLU(x))``. Other merges raise.
    """

    handles_masks = True

    def apply_kernel(self, state: State) -> State:
        states = _branches(state, self)
        not_fresh = sum(not s.fresh for s in states)
        if not_fresh > 1:
            raise ShapeError(
                f"FanInSum got {not_fresh} branches that do not end in a Dense/Conv layer; "
                "their kernels do not simply add. End all branches but one with a Dense/Conv"
            )
        first = states[0]
        for s in states[1:]:
            if s.nngp.shape != first.nngp.shape or s.width != first.width:
                raise ShapeError(
                    f"FanInSum branches differ in shape (widths {first.width} and {s.width}); "
                    "give every branch the same width"
                )
        same_vars = all(s.var2 is s.var1 for s in states)
        var1 = _add_all([s.var1 for s in states])
        return first.replace(
            nngp=_add_all([s.nngp for s in states]),
            ntk=None if first.ntk is None else _add_all([s.ntk for s in states]),
            var1=var1,
            var2=var1 if same_vars else _add_all([s.var2 for s in states]),
            fresh=not_fresh == 0,
        )

    def build_module(self, in_shape, generator, dtype):
        if not isinstance(in_shape, list):
            raise ShapeError("FanInSum needs branches; put FanOut(n) before it")
        if any(s != in_shape[0] for s in in_shape):
            raise ShapeError(f"FanInSum branches differ in shape: {in_shape}")
        return FanInSumModule(), in_shape[0]

    def __repr__(self) -> str:
        return "FanInSum()"


class FanInConcat(Layer):
    """Concatenates the branches along ``axis`` of the batched array (1 = channels).

    ``axis=1`` (default): the next layer's ``1/fan_in`` normalization makes the kernel of
    the concatenation ``Σ_k (width_k / Σ width) · K_k``. ``axis >= 2`` (or negative, counted
    from the end of ``(n, C, *S)``) concatenates along a spatial axis: the branches must
    share their channel count and other spatial sizes; positions of branch ``k`` keep
    ``K_k``, and two positions from different branches are uncorrelated — which holds when
    all branches but at most one end in a random affine layer (Dense/Conv) after the
    ``FanOut`` (as for ``FanInSum``; other merges raise when the full spatial covariance
    is needed).
    """

    @property
    def handles_masks(self) -> bool:
        """Masks pass through a channel concatenation, not a concatenation of positions."""
        return self.axis == 1

    def __init__(self, axis: int = 1) -> None:
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ParameterError(f"axis must be an int (1 = channels, 2... = spatial), got {axis!r}")
        self.axis = int(axis)

    def _spatial_axis(self, n_spatial: int) -> int | None:
        """The spatial index the concatenation runs along, or ``None`` for the channels."""
        ndim = 2 + n_spatial
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 1 <= axis < ndim:
            raise ShapeError(
                f"FanInConcat axis {self.axis} is out of range for inputs of rank {ndim} "
                "(n, C, *spatial); use 1 for channels or 2... for a spatial axis (0 is the batch)"
            )
        return None if axis == 1 else axis - 2

    def apply_kernel(self, state: State) -> State:
        states = _branches(state, self)
        first = states[0]
        spatial_axis = self._spatial_axis(len(first.spatial))
        if spatial_axis is not None:
            return _concat_spatial(states, spatial_axis, self)
        if any(s.nngp.shape != first.nngp.shape for s in states):
            raise ShapeError("FanInConcat branches must share their spatial shape")
        total = sum(s.width for s in states)

        def mix(field: str) -> torch.Tensor:
            return sum((s.width / total) * getattr(s, field) for s in states)

        same_vars = all(s.var2 is s.var1 for s in states)
        var1 = mix("var1")
        return first.replace(
            nngp=mix("nngp"),
            ntk=None if first.ntk is None else mix("ntk"),
            var1=var1,
            var2=var1 if same_vars else mix("var2"),
            width=total,
            fresh=all(s.fresh for s in states),
        )

    def build_module(self, in_shape, generator, dtype):
        if not isinstance(in_shape, list):
            raise ShapeError("FanInConcat needs branches; put FanOut(n) before it")
        spatial_axis = self._spatial_axis(len(in_shape[0]) - 1)
        if spatial_axis is None:
            rest = {tuple(s[1:]) for s in in_shape}
            if len(rest) != 1:
                raise ShapeError(f"FanInConcat branches must share their spatial shape: {in_shape}")
            return FanInConcatModule(), (sum(s[0] for s in in_shape), *in_shape[0][1:])
        k = 1 + spatial_axis
        others = {tuple(s[:k]) + tuple(s[k + 1:]) for s in in_shape}
        if len(others) != 1:
            raise ShapeError(f"FanInConcat(axis={self.axis}) branches differ off that axis: {in_shape}")
        out = list(in_shape[0])
        out[k] = sum(s[k] for s in in_shape)
        return FanInConcatModule(self.axis), tuple(out)

    def __repr__(self) -> str:
        return "FanInConcat()" if self.axis == 1 else f"FanInConcat(axis={self.axis})"


def _concat_spatial(states, d: int, layer: Layer) -> KernelState:
    """Concatenation along spatial axis ``d`` (see :class:`FanInConcat`)."""
    first = states[0]
    if any(s.side1 and "mask" in s.side1 for s in states):
        raise ShapeError(
            f"FanInConcat(axis={layer.axis}) along a spatial axis cannot carry masks of absent "
            "positions; concatenate along the channels (axis=1) or drop the masks"
        )
    for s in states[1:]:
        if s.width != first.width or len(s.spatial) != len(first.spatial) or any(
            a != b for i, (a, b) in enumerate(zip(s.spatial, first.spatial)) if i != d
        ):
            raise ShapeError(
                f"FanInConcat(axis={layer.axis}) branches must share their channel count and the "
                f"other spatial sizes; got widths {first.width}, {s.width} and shapes "
                f"{first.spatial}, {s.spatial}"
            )
    batch = 1 if first.diagonal else 2
    spatial = list(first.spatial)
    spatial[d] = sum(s.spatial[d] for s in states)
    n_sp = len(first.spatial)

    def diag_cat(field: str, axis: int) -> torch.Tensor:
        return torch.cat([getattr(s, field) for s in states], dim=axis)

    if first.full_spatial:
        not_fresh = sum(not s.fresh for s in states)
        if not_fresh > 1:
            raise ShapeError(
                f"FanInConcat(axis={layer.axis}) got {not_fresh} branches that do not end in a "
                "Dense/Conv layer: the covariance between their positions is unknown. End all "
                "branches but one with a Dense/Conv"
            )

        def block(field: str) -> torch.Tensor:
            parts = [getattr(s, field) for s in states]
            shape = list(parts[0].shape)
            a1, a2 = batch + d, batch + n_sp + d
            shape[a1] = shape[a2] = spatial[d]
            out = parts[0].new_zeros(shape)
            start = 0
            for t in parts:
                size = t.shape[a1]
                index = [slice(None)] * t.ndim
                index[a1] = index[a2] = slice(start, start + size)
                out[tuple(index)] = t
                start += size
            return out

        nngp = block("nngp")
        ntk = None if first.ntk is None else block("ntk")
    else:
        nngp = diag_cat("nngp", batch + d)
        ntk = None if first.ntk is None else diag_cat("ntk", batch + d)
    var1 = diag_cat("var1", 1 + d)
    same_vars = all(s.var2 is s.var1 for s in states)
    var2 = var1 if same_vars else diag_cat("var2", 1 + d)
    return first.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, spatial=tuple(spatial),
                         fresh=all(s.fresh for s in states))


def serial(*layers: Layer) -> Layer:
    """Compose layers: ``serial(Dense(512), ReLU(), Dense(1))``."""
    return SerialLayer(layers)


def parallel(*layers: Layer) -> Layer:
    """Apply the i-th layer to the i-th branch (after ``FanOut``)."""
    return ParallelLayer(layers)


def mlp(
    depth: int,
    width: int,
    activation: str | Layer = "relu",
    W_std: float = 1.0,
    b_std: float | None = None,
    out: int = 1,
    parameterization: str = "ntk",
) -> Layer:
    """A fully-connected network of ``depth`` Dense layers (the readout included).

    ``mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1)`` is
    ``Dense(512)-ReLU-Dense(512)-ReLU-Dense(1)``; ``activation`` is a name
    (``"relu"``, ``"erf"``, ``"tanh"``, ...) or a layer.
    """
    depth = check_positive_int(depth, "depth")
    check_positive_int(width, "width")
    check_positive_int(out, "out")
    check_std(W_std, "W_std")
    layers: list[Layer] = []
    for _ in range(depth - 1):
        layers += [
            Dense(width, W_std, b_std, parameterization),
            activation_from_name(activation),
        ]
    layers.append(Dense(out, W_std, b_std, parameterization))
    return serial(*layers)
