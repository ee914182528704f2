"""The kernel state that flows through the layers of an infinite-width network.

For a batch pair ``(x1, x2)`` the state holds, after each layer, the NNGP covariance of the
pre-activations between every pair, the NTK, and each input's own variance (needed by the
activations, whose Gaussian expectations depend on ``q11``, ``q12``, ``q22``).

Layouts (``S`` is the spatial shape of one example, ``()`` for fully-connected layers):

- pairwise, spatial-diagonal: ``nngp``/``ntk`` ``(n1, n2, *S)`` — covariance of position ``p``
  of ``x1_i`` with the *same* position of ``x2_j``;
- pairwise, full spatial: ``(n1, n2, *S, *S)`` — every position with every position
  (needed by pooling; Novak et al. 2019, Arora et al. 2019);
- ``diagonal=True``: the pairs ``(x1_i, x2_i)`` only, so the two batch axes become one.

``var1`` is ``(n1, *S)`` and ``var2`` is ``(n2, *S)``: the variance at each position.

Pooling a full spatial covariance (``AvgPool``, ``GlobalAvgPool``) needs each example's
covariance of *every* position with every other position to produce the new variances,
which ``var1``/``var2`` (the diagonal only) do not hold. The engine therefore evaluates
full-spatial architectures on a flat list of pairs (``diagonal=True`` layout) that also
contains each example paired with itself; ``self_pairs = (i1, i2)`` gives, for every pair
``k``, the index ``i1[k]`` of the pair (left example, left example) and ``i2[k]`` of the
pair (right example, right example) in the same batch (see ``ntkit.infinite.pairs``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KernelState:
    """Kernels of one batch pair at one point of the network (see the module docstring).

    ``width`` is the feature (or channel) count of the finite network at this point: the
    standard parameterization and ``FanInConcat`` need it. ``fresh`` is ``True`` right after
    a zero-mean random affine layer (Dense/Conv, possibly followed by linear pooling): such
    a branch is uncorrelated with any other branch, which ``FanInSum`` relies on.
    ``same`` is ``True`` when the right examples are the left ones (``x2`` was ``None``):
    in the pairwise layout the pair ``(i, i)`` is then an example with itself, in the
    ``diagonal=True`` layout every pair is (see :func:`same_example`).
    ``side1``/``side2`` hold per-example side information of the left/right examples
    (e.g. ``"mask"``: ``(n, *S)`` booleans, ``True`` = position absent), indexed along the
    batch axis like ``var1``/``var2``; ``None`` when there is none (see :func:`absent`).
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    var1: torch.Tensor
    var2: torch.Tensor
    width: int
    spatial: tuple[int, ...] = ()
    full_spatial: bool = False
    diagonal: bool = False
    fresh: bool = False
    self_pairs: tuple[torch.Tensor, torch.Tensor] | None = None
    same: bool = False
    side1: dict | None = None
    side2: dict | None = None

    def replace(self, **changes) -> KernelState:
        """Return a copy with the given fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def is_spatial(self) -> bool:
        return len(self.spatial) > 0

    def q11(self) -> torch.Tensor:
        """``var1`` broadcastable against ``nngp``."""
        return self._broadcast(self.var1, first=True)

    def q22(self) -> torch.Tensor:
        """``var2`` broadcastable against ``nngp``."""
        return self._broadcast(self.var2, first=False)

    def _broadcast(self, var: torch.Tensor, *, first: bool) -> torch.Tensor:
        k = len(self.spatial)
        if self.diagonal:
            batch = var.shape[:1]
        else:
            batch = (var.shape[0], 1) if first else (1, var.shape[0])
        if not self.full_spatial:
            return var.reshape(*batch, *self.spatial)
        ones = (1,) * k
        spatial = (*self.spatial, *ones) if first else (*ones, *self.spatial)
        return var.reshape(*batch, *spatial)


def swap_pair_axes(t: torch.Tensor, n_spatial: int, full_spatial: bool) -> torch.Tensor:
    """Return the kernel of the swapped pair: ``K[j, i, p', p]`` from ``K[i, j, p, p']``."""
    if not full_spatial:
        return t.transpose(0, 1)
    first = list(range(2, 2 + n_spatial))
    second = list(range(2 + n_spatial, 2 + 2 * n_spatial))
    return t.permute(1, 0, *second, *first)


def same_example(state: KernelState) -> torch.Tensor | None:
    """Which pairs hold an example with itself, as a boolean tensor over the batch axes.

    ``(n1, n2)`` in the pairwise layout, ``(N,)`` in the ``diagonal=True``/pair-list layout;
    ``None`` when no pair does (e.g. ``x2`` given). Layers whose randomness is drawn per
    example (``Dropout``) need it: the same example shares its draw, two examples do not.
    """
    device = state.var1.device
    if state.self_pairs is not None:
        i1, _ = state.self_pairs
        return i1 == torch.arange(i1.numel(), device=device)
    if not state.same:
        return None
    n = state.var1.shape[0]
    if state.diagonal:
        return torch.ones(n, dtype=torch.bool, device=device)
    return torch.eye(n, dtype=torch.bool, device=device)


def absent(state: KernelState, first: bool) -> torch.Tensor | None:
    """The boolean ``(N, *S)`` mask of absent positions of the left (``first``) or right
    examples, aligned with ``var1``/``var2``; ``None`` when no mask was given."""
    side = state.side1 if first else state.side2
    if not side:
        return None
    return side.get("mask")


def is_zero_constant(t: torch.Tensor) -> bool:
    """Whether ``t`` is a broadcast zero (all strides 0), the NTK of the raw inputs.

    The engine's pair evaluation (:mod:`ntkit.infinite.pairs`) passes the input NTK, which
    is 0 (no parameters act before the input), as ``zeros(()).expand(shape)``; skipping its
    window sum saves a pass over the largest tensor of the network.
    """
    return t.numel() > 0 and all(st == 0 for st in t.stride()) and float(t[(0,) * t.ndim]) == 0.0


def scale_shift(t: torch.Tensor, scale, shift, *, inplace: bool) -> torch.Tensor:
    """``t·scale + shift`` (``shift=None``: none); in place on ``t`` when both are numbers."""
    plain = not isinstance(scale, torch.Tensor) and not isinstance(shift, torch.Tensor)
    if inplace and plain:
        t = t.mul_(scale)
        return t if shift is None else t.add_(shift)
    t = t * scale
    if shift is None:
        return t
    return t.add_(shift) if plain else t + shift  # `t` is fresh: in place when plain


def add_scaled(a: torch.Tensor, b: torch.Tensor, scale, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a + scale·b`` in one pass when ``scale`` is a number; into ``out`` when given (which
    may be ``b`` itself: the same rounding, no new tensor)."""
    if isinstance(scale, torch.Tensor) or abs(scale) > torch.finfo(b.dtype).max:
        total = a + scale * b  # (an alpha outside the dtype's range is refused by torch.add)
        return total if out is None else out.copy_(total)
    return torch.add(a, b, alpha=scale, out=out)


@dataclass(frozen=True)
class Features:
    """Features of a batch of examples whose Gram matrices are the kernels (module docstring).

    ``nngp (n, K, P)``: ``nngp[i, j] = nngp_fᵢᵀ nngp_fⱼ`` (``P`` positions, flattened);
    ``ntk (n, K', P)`` likewise, or ``None`` for a zero NTK. ``width``: the finite network's
    channel count at this point; ``fresh``: as :class:`~ntkit.infinite.state.KernelState`.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    width: int
    spatial: tuple[int, ...]
    fresh: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n, width, *spatial)``: the shape of the inputs these features stand for."""
        return (self.nngp.shape[0], self.width, *self.spatial)

    @property
    def device(self) -> torch.device:
        return self.nngp.device

    def take(self, index: torch.Tensor) -> Features:
        """The examples at ``index`` (a shared NTK stays shared)."""
        nngp = self.nngp[index]
        ntk = nngp if self.ntk is self.nngp else (None if self.ntk is None else self.ntk[index])
        return dataclasses.replace(self, nngp=nngp, ntk=ntk)

    def cat(self, others: list[Features]) -> Features:
        """These examples followed by those of ``others`` (same layout)."""
        parts = [self, *others]
        nngp = torch.cat([p.nngp for p in parts])
        if all(p.ntk is p.nngp for p in parts):
            ntk = nngp
        elif any(p.ntk is None for p in parts):
            ntk = None if all(p.ntk is None for p in parts) else torch.cat(
                [p.ntk if p.ntk is not None else p.nngp.new_zeros(p.nngp.shape[0], 1, p.nngp.shape[2])
                 for p in parts])
        else:
            ntk = torch.cat([p.ntk for p in parts])
        return dataclasses.replace(self, nngp=nngp, ntk=ntk)
