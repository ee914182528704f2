"""The NTK of a network whose first layers stay at their initialization (:func:`fix_layers`).

The NTK is a sum over parameters, ``Θ(x, x') = Σ_p ∂f(x)/∂p · ∂f(x')/∂p``; training only the
top layers keeps the terms of their parameters. In the kernel recursion
(docs/DESIGN.md: ``ntk ← nngp_new + W_std²·ntk`` at a Dense layer, ``ntk ← ntk·E[φ'φ']`` at an
activation) every layer's own parameters enter as the ``nngp_new`` term, and the recursion is
linear and homogeneous in ``ntk`` otherwise. Resetting ``ntk`` to zero right after the
``L'``-th layer with parameters therefore removes exactly the gradient terms of the first
``L'`` such layers: the NTK with those layers fixed (Arora et al. 2020, "Harnessing the
power of infinitely wide deep nets on small-data tasks", §3; their CNTK code's ``--fix``).
With ``L'`` = (number of layers with parameters) − 1 only the readout is trained and the
NTK equals the NNGP of the output.

Layers are counted along the architecture's top-level chain (nested ``serial`` flattened):
a block of several entries (``FanOut``, ``parallel(...)``, ``FanInSum``) counts each entry
with parameters once — fixing a ``parallel(...)`` entry fixes all its branches.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ParameterError
from ..finite.combinators import Serial
from .combinators import SerialLayer
from .layers import Layer, Shape, State
from .state import KernelState


def chain(arch: Layer) -> tuple[Layer, ...]:
    """The top-level layers of ``arch``, nested ``serial(...)`` flattened, in order."""
    if isinstance(arch, SerialLayer):
        return tuple(layer for entry in arch.layers for layer in chain(entry))
    return (arch,)


def trained_layers(arch: Layer) -> int:
    """How many entries of :func:`chain` (``arch``) have parameters (the ``L`` of ``fix_layers``)."""
    return sum(1 for layer in chain(arch) if layer.has_parameters)


class FixedLayers(Layer):
    """``arch`` with its first ``n_fixed`` layers with parameters held at initialization.

    Built by :func:`fix_layers`. ``kernel(...)``'s NNGP is ``arch``'s; its NTK counts the
    gradients of the remaining (top) layers only. ``build`` gives the same finite network as
    ``arch`` (one flat ``Serial`` over :func:`chain`); :meth:`trained_prefixes` names the
    parameters whose empirical NTK this kernel is the limit of.
    """

    def __init__(self, arch: Layer, n_fixed: int) -> None:
        self.arch = arch
        self.n_fixed = n_fixed
        self.layers = chain(arch)
        count = 0
        self._cut = -1  # index in `layers` after which the NTK restarts from zero
        for i, layer in enumerate(self.layers):
            if count == n_fixed:
                break
            if layer.has_parameters:
                count += 1
                self._cut = i

    @property
    def has_parameters(self) -> bool:  # type: ignore[override]
        return self.arch.has_parameters

    def needs_full_spatial(self) -> bool:
        return self.arch.needs_full_spatial()

    def apply_kernel(self, state: State) -> State:
        for i, layer in enumerate(self.layers):
            state = layer.apply_kernel(state)
            if i == self._cut:
                state = _zero_ntk(state)
        return state

    def build_module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype):
        modules = []
        for layer in self.layers:
            module, in_shape = layer.build_module(in_shape, generator, dtype)
            modules.append(module)
        return Serial(*modules), in_shape

    def trained_prefixes(self) -> list[str]:
        """Module-name prefixes (``"3"``, ...) of the trained layers in ``build(...)``'s module.

        For ``nk.empirical_ntk(net, x, params=fixed.trained_prefixes())``, whose expectation
        over initializations tends to this kernel's NTK as the widths grow.
        """
        return [str(i) for i, layer in enumerate(self.layers) if i > self._cut and layer.has_parameters]

    def __repr__(self) -> str:
        return f"fix_layers({self.arch!r}, {self.n_fixed})"


def _zero_ntk(state: State) -> State:
    if isinstance(state, tuple):
        return tuple(_zero_ntk(s) for s in state)
    assert isinstance(state, KernelState)
    if state.ntk is None:
        return state
    return state.replace(ntk=torch.zeros_like(state.ntk))


def fix_layers(arch: Layer, n_fixed: int) -> Layer:
    """The architecture whose first ``n_fixed`` layers with parameters stay at initialization.

    Args:
        arch: any ntkit architecture (``nk.mlp(...)``, ``nk.serial(...)`` with Conv, attention,
            residual blocks, ...).
        n_fixed: ``0 <= n_fixed < L``, ``L`` = the layers with parameters along the top-level
            chain (:func:`trained_layers`); ``n_fixed = L − 1`` trains the readout only (the
            NTK then equals the NNGP).

    Returns:
        ``arch`` itself for ``n_fixed = 0``; otherwise a :class:`FixedLayers` whose NTK
        keeps the gradient terms of the top ``L − n_fixed`` layers (module docstring; Arora
        et al. 2020). Same NNGP, same finite network (``build``).

    Raises:
        ParameterError: ``n_fixed`` not an integer in ``[0, L − 1]`` (at least the readout
            must be trained, or the NTK would be zero).
    """
    if isinstance(n_fixed, bool) or not isinstance(n_fixed, (int, np.integer)):
        raise ParameterError(f"fix_layers must be an integer >= 0, got {n_fixed!r}")
    n_fixed = int(n_fixed)
    if not isinstance(arch, Layer):
        raise ParameterError(f"fix_layers needs an ntkit architecture (nk.mlp, nk.serial, ...), got {arch!r}")
    total = trained_layers(arch)
    if n_fixed < 0 or n_fixed >= max(total, 1):
        raise ParameterError(
            f"fix_layers={n_fixed} is out of range: the architecture has {total} layer(s) with "
            f"parameters along its top-level chain, so fix_layers must be in 0..{max(total - 1, 0)} "
            "(at least the readout is trained; fix_layers = L - 1 gives the NNGP)"
        )
    return arch if n_fixed == 0 else FixedLayers(arch, n_fixed)
