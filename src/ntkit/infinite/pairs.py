"""Evaluation of architectures that need full spatial covariances, on lists of pairs.

Pooling (``AvgPool``, ``GlobalAvgPool``) needs, for each pair of images, the covariance of
every position with every position: ``(H·W)²`` entries per pair (Novak et al. 2019; Arora
et al. 2019). Such architectures are evaluated here on a flat list of example pairs (the
``diagonal=True`` layout ``(N, *S, *S)`` of :class:`~ntkit.infinite.state.KernelState`):

- each chunk of the pair grid holds its cross pairs and, appended, each of its examples
  paired with itself (unless that pair is already in the chunk); ``self_pairs`` points every
  pair at those, so pooling layers read the full covariance of an example with itself to
  form the pooled variances exactly;
- with ``x2=None`` only the pairs ``i <= j`` are computed (square blocks above the
  diagonal, and the upper triangle of the diagonal blocks); the others are the same pairs
  with both position axes swapped;
- chunks are sized by the memory budget (and kept about cache-sized); each ends as soon as
  the architecture's readout has reduced it, so only one chunk's ``(H·W)²`` tensors are
  ever alive.
"""

from __future__ import annotations

import math

import torch

from ..errors import ShapeError
from ..kernel import Kernel
from ..tiling import chunk_pairs, grid
from .state import Features, KernelState


def fold(layer, x1, x2, side1, side2):
    """``(rest, features1, features2)``: the architecture's linear prefix applied to each
    example's features once (:mod:`ntkit.infinite.folding`), or the arguments unchanged.

    ``rest`` is ``None`` when the whole architecture folds; ``x2=None`` stays ``None``."""
    from .folding import fold_prefix  # late: folding imports the layer modules

    f1, rest = fold_prefix(layer, x1, side1)
    if f1 is None:
        return layer, x1, x2
    if x2 is None:
        return rest, f1, None
    f2, rest2 = fold_prefix(layer, x2, side2)
    same = (rest is None and rest2 is None) or (
        rest is not None and rest2 is not None and len(rest.layers) == len(rest2.layers))
    if f2 is None or not same:
        return layer, x1, x2
    return rest, f1, f2

# Kernel entries per chunk, at most (512 pairs of 8x8 images, 16 MiB per float64 tensor).
# Larger chunks cut the self pairs' share (2/√pairs for square blocks) and the per-op
# overhead; on the CNTK benchmark 2**21 to 2**22 was ~1.5x faster than 2**17.
_CACHE_CHUNK_ENTRIES = 2**21


def pair_state(
    xa: torch.Tensor,
    xb: torch.Tensor | None,
    ia: torch.Tensor,
    ib: torch.Tensor,
    *,
    want_ntk: bool,
    side_a: dict | None = None,
    side_b: dict | None = None,
) -> tuple[KernelState, int]:
    """Input state of the pairs ``(xa[ia[k]], xb[ib[k]])`` plus the self pairs they need.

    ``xb=None`` means ``xb = xa`` (a pair ``(i, i)`` is then an example with itself).
    Shapes: ``xa (na, C, *S)``, ``ia``/``ib`` ``(m,)``. Returns the state, in the
    ``diagonal=True`` full spatial layout ``nngp (N, *S, *S)`` with ``N >= m`` (the first
    ``m`` entries are the requested pairs), and ``m``. The input NTK is 0 (no parameters
    act before the input), passed as a broadcast zero. ``side_a``/``side_b``: per-example
    side information of ``xa``/``xb`` (e.g. masks), gathered along with the pairs.
    """
    m = ia.numel()
    device = xa.device
    if xb is None:
        present = torch.full((xa.shape[0],), -1, dtype=torch.long, device=device)
        same = (ia == ib).nonzero().flatten()
        present[ia[same]] = same
        used = torch.unique(torch.cat([ia, ib]))
        missing = used[present[used] < 0]
        present[missing] = m + torch.arange(missing.numel(), device=device)
        left = torch.cat([ia, missing])
        right = torch.cat([ib, missing])
        if isinstance(xa, Features):
            selfs = [(xa, missing)]
        else:
            a, b = xa[left], xa[right]
        side1, side2 = _take(side_a, left), _take(side_a, right)
        self1, self2 = present[left], present[right]
        is_self = left == right
    else:
        ua, ub = torch.unique(ia), torch.unique(ib)
        pos_a = torch.full((xa.shape[0],), -1, dtype=torch.long, device=device)
        pos_b = torch.full((xb.shape[0],), -1, dtype=torch.long, device=device)
        pos_a[ua] = m + torch.arange(ua.numel(), device=device)
        pos_b[ub] = m + ua.numel() + torch.arange(ub.numel(), device=device)
        if isinstance(xa, Features):
            selfs = [(xa, ua), (xb, ub)]
        else:
            a = torch.cat([xa[ia], xa[ua], xb[ub]])
            b = torch.cat([xb[ib], xa[ua], xb[ub]])
        side1 = _cat([_take(side_a, ia), _take(side_a, ua), _take(side_b, ub)])
        side2 = _cat([_take(side_b, ib), _take(side_a, ua), _take(side_b, ub)])
        self1 = torch.cat([pos_a[ia], pos_a[ua], pos_b[ub]])
        self2 = torch.cat([pos_b[ib], pos_a[ua], pos_b[ub]])
        is_self = torch.arange(self1.shape[0], device=device) >= m
    ntk = None
    if isinstance(xa, Features):  # a folded prefix (ntkit.infinite.folding): Gram matrices
        fb = xa if xb is None else xb
        n, width, spatial = self1.shape[0], xa.width, xa.spatial
        p = math.prod(spatial)
        nngp = _gram(xa.nngp, fb.nngp, ia, ib, [(f.nngp, idx) for f, idx in selfs])
        var_a = (xa.nngp * xa.nngp).sum(1)
        var_b = var_a if xb is None else (fb.nngp * fb.nngp).sum(1)
        extra = [(var_a if f is xa else var_b)[idx] for f, idx in selfs]
        var1 = torch.cat([var_a[ia], *extra])
        var2 = torch.cat([var_b[ib], *extra])
        if want_ntk and xa.ntk is not None and xa.ntk is not xa.nngp:
            ntk = _gram(xa.ntk, fb.ntk, ia, ib, [(f.ntk, idx) for f, idx in selfs])
            ntk = ntk.reshape(n, *spatial, *spatial)
        shared_ntk = want_ntk and xa.ntk is xa.nngp
    else:
        n, width, spatial = a.shape[0], a.shape[1], tuple(a.shape[2:])
        p = math.prod(spatial)
        af, bf = a.reshape(n, width, p), b.reshape(n, width, p)
        nngp = torch.bmm(af.transpose(1, 2), bf).div_(width)
        var1 = (af * af).sum(1).div_(width)
        var2 = (bf * bf).sum(1).div_(width)
        shared_ntk = False
    # An example with itself: the diagonal is its variance bit for bit (arc-cosine kernels
    # are not Lipschitz at correlation 1, so one ulp would grow to √ε).
    sel = is_self.nonzero().flatten()
    if sel.numel():
        pos = torch.arange(p, device=device)
        nngp[sel[:, None], pos, pos] = var1[sel]
        var2[sel] = var1[sel]
    nngp = nngp.reshape(n, *spatial, *spatial)
    if shared_ntk:
        ntk = nngp  # ntk = nngp (e.g. after a first Dense): shared, as the layers do
    elif want_ntk and ntk is None:
        ntk = nngp.new_zeros(()).expand(nngp.shape)  # no parameters before the input
    state = KernelState(
        nngp=nngp,
        ntk=ntk,
        var1=var1.reshape(n, *spatial),
        var2=var2.reshape(n, *spatial),
        width=width,
        spatial=spatial,
        full_spatial=True,
        diagonal=True,
        self_pairs=(self1, self2),
        side1=side1,
        side2=side2,
    )
    return state, m


def _gram(fa: torch.Tensor, fb: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor,
          selfs: list) -> torch.Tensor:
    """``(N, P, P)``: ``fa[ia[k]]ᵀ fb[ib[k]]`` for the pairs, then ``f[i]ᵀ f[i]`` for each
    ``(f, index)`` of ``selfs`` (features ``(n, K, P)``).

    When the pairs fill most of the grid of their distinct examples (the engine's square
    blocks and triangles), all of them meet in one matrix product (``ua`` rows by ``ub``
    columns) from which the pairs are gathered: no features gathered per pair and one
    large product instead of many small ones. Otherwise (e.g. the pairs ``(i, i)`` of
    ``diagonal=True``) one small product per pair."""
    ua, la = torch.unique(ia, return_inverse=True)
    ub, lb = torch.unique(ib, return_inverse=True)
    k, p = fa.shape[1], fa.shape[2]
    if ua.numel() * ub.numel() <= 3 * ia.numel():
        left = fa[ua].transpose(1, 2).reshape(-1, k)                 # (|ua|·P, K)
        right = fb[ub].permute(1, 0, 2).reshape(k, -1)               # (K, |ub|·P)
        block = (left @ right).view(ua.numel(), p, ub.numel(), p)
        parts = [block[la, :, lb, :]]
    else:
        parts = [torch.bmm(fa[ia].transpose(1, 2), fb[ib])]
    for f, index in selfs:
        if index.numel():
            g = f[index]
            parts.append(torch.bmm(g.transpose(1, 2), g))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _take(side: dict | None, index: torch.Tensor) -> dict | None:
    return None if side is None else {k: v[index] for k, v in side.items()}


def _cat(sides: list) -> dict | None:
    if any(s is None for s in sides):
        return None
    return {k: torch.cat([s[k] for s in sides]) for k in sides[0]}


def run_pairs(
    layer, xa, xb, ia, ib, *, want_ntk: bool, side_a: dict | None = None, side_b: dict | None = None
) -> tuple[KernelState, int]:
    """The output state of ``layer`` on the pairs of :func:`pair_state`."""
    state, m = pair_state(xa, xb, ia, ib, want_ntk=want_ntk, side_a=side_a, side_b=side_b)
    if layer is not None:  # None: the whole architecture was folded into the inputs
        state = layer.apply_kernel(state)
    if isinstance(state, tuple):
        raise ShapeError(
            f"the architecture ends with {len(state)} branches; merge them with "
            "FanInSum() or FanInConcat()"
        )
    return state, m


def swap_pairs(t: torch.Tensor, state: KernelState) -> torch.Tensor:
    """``K[k, p', p]`` from ``K[k, p, p']`` (the kernel of the swapped pairs), flat layout."""
    if not state.full_spatial:
        return t
    d = len(state.spatial)
    return t.permute(0, *range(1 + d, 1 + 2 * d), *range(1, 1 + d))


def max_chunk_pairs(per_pair: int, budget: int, entries_per_pair: int) -> int:
    """Pairs per chunk: within the budget and about cache-sized (at least 1)."""
    return chunk_pairs(per_pair, budget, _CACHE_CHUNK_ENTRIES // max(1, entries_per_pair))


def block_side(max_pairs: int) -> int:
    """Largest ``b`` with ``b² + 2b`` pairs (a square block and its self pairs) in a chunk."""
    b = max(1, math.isqrt(max_pairs + 1) - 1)
    return b


class _Output:
    """Accumulates chunk results into the ``(n1, n2, ...)`` (or ``(n, ...)``) outputs."""

    def __init__(self, n1: int, n2: int | None, want_ntk: bool, want_nngp: bool = True) -> None:
        self.n1, self.n2, self.want_ntk, self.want_nngp = n1, n2, want_ntk, want_nngp
        self.nngp = self.ntk = self.var1 = self.var2 = None
        self.started = False

    def add(self, state: KernelState, m: int, ia, ib, symmetric: bool) -> None:
        cross = slice(0, m)
        if not self.started:
            self.started = True
            rest = tuple(state.nngp.shape[1:])
            lead = (self.n1,) if self.n2 is None else (self.n1, self.n2)
            self.nngp = state.nngp.new_empty(lead + rest) if self.want_nngp else None
            self.ntk = state.nngp.new_empty(lead + rest) if self.want_ntk else None
            self.var1 = state.var1.new_empty((self.n1, *state.var1.shape[1:]))
            n_cols = self.n1 if self.n2 is None or symmetric else self.n2
            self.var2 = self.var1 if symmetric else state.var2.new_empty((n_cols, *state.var2.shape[1:]))
        for out, res in ((self.nngp, state.nngp), (self.ntk, state.ntk)):
            if out is None:
                continue
            if self.n2 is None:
                out[ia] = res[cross]
                continue
            out[ia, ib] = res[cross]
            if symmetric:
                out[ib, ia] = swap_pairs(res[cross], state)
        self.var1[ia] = state.var1[cross]
        self.var2[ib] = state.var2[cross]

    def kernel(self, diagonal: bool) -> Kernel:
        return Kernel(nngp=self.nngp, ntk=self.ntk, var1=self.var1, var2=self.var2, diagonal=diagonal)


def evaluate_pairs(
    layer,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    want_ntk: bool,
    diagonal: bool,
    per_pair: int,
    budget: int,
    side1: dict | None = None,
    side2: dict | None = None,
    want_nngp: bool = True,
) -> Kernel:
    """``layer``'s kernels on ``(x1, x2)`` chunk by chunk; see the module docstring.

    ``per_pair``: estimated bytes of temporaries per pair (self pairs included in the
    count); a chunk holds at most ``budget // per_pair`` pairs. ``side1``/``side2``:
    per-example side information of ``x1``/``x2`` (e.g. masks).
    """
    sides = {"side_a": side1, "side_b": side1 if x2 is None else side2}
    layer, x1, x2 = fold(layer, x1, x2, side1, side2)
    entries = math.prod(x1.shape[2:]) ** 2
    max_pairs = max_chunk_pairs(per_pair, budget, entries)
    device = x1.device
    n1 = x1.shape[0]
    symmetric = x2 is None
    if diagonal:
        out = _Output(n1, None, want_ntk, want_nngp)
        rows = max_pairs if symmetric else max(1, max_pairs // 3)
        for r0 in range(0, n1, rows):
            idx = torch.arange(r0, min(n1, r0 + rows), device=device)
            state, m = run_pairs(layer, x1, x2, idx, idx, want_ntk=want_ntk, **sides)
            out.add(state, m, idx, idx, symmetric)
        return out.kernel(diagonal=True)
    n2 = n1 if symmetric else x2.shape[0]
    out = _Output(n1, n2, want_ntk, want_nngp)
    if symmetric:
        side = block_side(max_pairs)
        tiles = grid(n1, n1, side, symmetric=True)
    else:
        rows = min(n1, block_side(max_pairs))
        tiles = grid(n1, n2, rows, min(n2, max(rows, (max_pairs - rows) // (rows + 1))))
    for t in tiles:
        if t.diagonal:  # the upper triangle of a diagonal block, pairs (i, j) with i <= j
            ia, ib = torch.triu_indices(t.r1 - t.r0, t.r1 - t.r0, device=device) + t.r0
        else:
            ia, ib = _grid(t.r0, t.r1, t.c0, t.c1, device)
        state, m = run_pairs(layer, x1, x2, ia, ib, want_ntk=want_ntk, **sides)
        out.add(state, m, ia, ib, symmetric)
    return out.kernel(diagonal=False)


def _grid(r0: int, r1: int, c0: int, c1: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(r0, r1, device=device)
    cols = torch.arange(c0, c1, device=device)
    return rows.repeat_interleave(c1 - c0), cols.repeat(r1 - r0)


def pair_block(
    layer, a: torch.Tensor, b: torch.Tensor | None, *, want_ntk: bool, diagonal: bool = False,
    side_a: dict | None = None, side_b: dict | None = None,
) -> KernelState:
    """One ``(len(a), len(b))`` block as a pairwise state (for :func:`engine.kernel_block`).

    ``nngp``/``ntk`` ``(ra, rb, *rest)``, ``var1 (ra, ...)``, ``var2 (rb, ...)``; with
    ``diagonal=True`` the pairs ``(a_i, b_i)``: ``(ra, *rest)``.
    """
    layer, a, b = fold(layer, a, b, side_a, side_b)
    ra = a.shape[0]
    if diagonal:
        idx = torch.arange(ra, device=a.device)
        state, m = run_pairs(layer, a, b, idx, idx, want_ntk=want_ntk, side_a=side_a, side_b=side_b)
        return state.replace(
            nngp=state.nngp[:m],
            ntk=None if state.ntk is None else state.ntk[:m],
            var1=state.var1[:m],
            var2=state.var1[:m] if b is None else state.var2[:m],
            self_pairs=None,
            side1=side_a,
            side2=side_a if b is None else side_b,
            same=b is None,
        )
    rb = ra if b is None else b.shape[0]
    ia, ib = _grid(0, ra, 0, rb, a.device)
    state, m = run_pairs(layer, a, b, ia, ib, want_ntk=want_ntk, side_a=side_a, side_b=side_b)
    rest = tuple(state.nngp.shape[1:])
    var_rest = tuple(state.var1.shape[1:])
    var1 = state.var1[:m].reshape(ra, rb, *var_rest)[:, 0]
    var2 = state.var2[:m].reshape(ra, rb, *var_rest)[0]
    return state.replace(
        nngp=state.nngp[:m].reshape(ra, rb, *rest),
        ntk=None if state.ntk is None else state.ntk[:m].reshape(ra, rb, *rest),
        var1=var1,
        var2=var1 if b is None else var2,
        diagonal=False,
        self_pairs=None,
        side1=side_a,
        side2=side_a if b is None else side_b,
        same=b is None,
    )
