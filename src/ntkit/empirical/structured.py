"""Structured derivatives: the NTK of affine layers from input and cotangent Grams.

An affine layer computes, at each output position ``p``, ``z[c, p] = s_W Σ_k W[c, k] a[p, k] +
s_b b[c]`` where ``a[p]`` is the input (a dense layer: one position, or one per leading axis
of a sequence) or the input patch under the kernel window (a convolution). With the
back-propagated cotangents ``g_o[c, p] = ∂f_o/∂z[c, p]``, the layer's share of the NTK is

    Θ(x, x')_{o o'} = Σ_{p, q} <ã(x)[p], ã(x')[q]> · Σ_c g_o(x)[c, p] g_{o'}(x')[c, q],

with ``ã = (s_W a, s_b)`` (the bias is the weight of a constant input column). For a dense
layer (one position) this is an elementwise product of the ``(n1, n2)`` input Gram and the
cotangent Gram: per-example Jacobians never exist (Novak et al. 2022, "Fast finite width
neural tangent kernel", implementation 3, "structured derivatives"). For layers with many
positions, ntkit picks per layer the cheaper of that Gram form and the per-example Jacobian
of the layer alone, ``J[o, c, k] = Σ_p g_o[c, p] ã[p, k]``.

Layer inputs are captured by forward hooks; cotangents for all ``o`` outputs come from one
batched backward pass through zero "probe" tensors added to each layer output.

Supported: ``nn.Linear``, ``nn.Conv1d/2d/3d`` (any padding mode, stride, dilation, groups),
ntkit's ``NTKDense``/``NTKConv`` (both parameterizations), and the per-channel affine
parameters ``y = γ ⊙ x̂ + β`` of ``BatchNorm`` (eval mode, running statistics), ``LayerNorm``
and ``GroupNorm``, whose Jacobians ``Σ_p g_o[c, p] x̂[c, p]`` and ``Σ_p g_o[c, p]`` are formed
per example (they have one entry per channel), and ``nn.Embedding`` (without ``max_norm`` or
``scale_grad_by_freq``): a lookup is the linear map ``z[p] = Wᵀ onehot(ids[p])``, so its
input Gram is the count of equal tokens, ``Σ_{p,q} [ids_p = ids'_q]``, and the padding row
gets no gradient; and the in-projection (``in_proj_weight``/``in_proj_bias``) and
``out_proj`` of a self-attention ``nn.MultiheadAttention`` (:mod:`._attention`). A parameter
may be shared by several such layers or used by one layer several times. Parameters that
belong to no supported layer (a positional table added in ``forward``, a PReLU slope, an
LSTM's weights) are "rest" terms: given once per example when the forward broadcasts them
against the batch (one batched backward gives their per-example gradients), else by
per-example Jacobians (:class:`~ntkit.empirical.jacobian.JacobianMethod`). Before first use
(once per model structure and input layout: :mod:`._memo`), the decomposition is verified on
two probe examples against autograd: the layer cotangents of one example must not reach the
other, a random directional derivative of the outputs with respect to the supported layers'
parameters must equal the one rebuilt from the captured inputs and cotangents, and a rest
term given once per example must reproduce the outputs and the parameter's gradient. A
supported layer's parameter also used outside it, a layer that mixes examples, a model with
no supported layer, or any other mismatch makes the path inapplicable (``auto`` then falls
back to another method; ``method="structured"`` raises ModelError saying why).

Memory: see :class:`StructuredMethod` (micro-batches, what a block keeps, chunked pairs,
output groups; docs/DESIGN.md, "Structured empirical NTK").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from .._fast_matmul import fast_matmuls_for
from ..budget import DEFAULT_MEMORY_BUDGET
from ..errors import ModelError
from ..tiling import even_bounds
from ._layer_adapters import Geometry, NotApplicableError, module_geometry
from ._memo import recall, remember
from ._params import Problem
from ._spares import Block, Spares
from ._structured_features import (
    Stored,
    add_gram,
    block_cotangents,
    gram_rows,
    jacobian_chunks,
    self_gram_diagonal,
    slice_features,
    store_features,
)
from ._structured_plan import StructuredPlan, copy_terms
from .jacobian import Accumulator, JacobianMethod

__all__ = ["NotApplicableError", "StructuredMethod", "slice_features"]

#: The symmetric diagonal block is cut into row chunks only past this many flops (below,
#: one product is faster than several smaller ones), into at most ``SYMMETRIC_CHUNKS``
#: chunks of at least ``SYMMETRIC_CHUNK_MIN`` examples.
SYMMETRIC_CHUNK_FLOPS = 4e8
SYMMETRIC_CHUNKS = 8
SYMMETRIC_CHUNK_MIN = 32
#: Rows of a panel of Jacobian products of a block with itself (whole row chunks merged):
#: one panel of 64 rows against the columns from it on ran 10-20% faster than two of 32
#: (float32, one core; the saving of the lower half shrinks from 56% to 62% of the products).
PANEL_ROWS = 64
#: Shares of the memory budget: the forward/backward of one micro-batch of examples, and
#: the chunked temporaries of one pair of blocks (Gram sub-blocks, Jacobian pieces).
SCRATCH_SHARE = 8
PAIR_SHARE = 4
#: The least share of the budget left to a pair's temporaries when they are cut to let a
#: symmetric kernel be one block (:meth:`StructuredMethod.fits_once`).
PAIR_MIN_SHARE = 32


class StructuredMethod(StructuredPlan):
    """``method="structured"``; raises :class:`NotApplicableError` from the constructor.

    ``budget`` (bytes) bounds the scratch of one forward/backward pass (examples are run in
    micro-batches of :meth:`micro_batch`) and the temporaries of one pair of blocks.
    :meth:`set_outputs` restricts the features to a range of outputs (``trace`` and
    ``diagonal`` kernels are sums/stacks over outputs: computing them a few outputs at a time
    keeps the features of many more examples in memory).
    """

    name = "structured"
    #: its block with itself skips its own lower half (:meth:`pair`): no need for the
    #: caller to cut symmetric kernels into several blocks
    symmetric_pairs = True

    def __init__(self, problem: Problem, probe: torch.Tensor, n1: int, n2: int, output: str,
                 budget: int | None = None) -> None:
        self.problem = problem
        self.budget = DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
        self.outputs = (0, problem.n_out)
        #: memory of freed feature blocks (:mod:`._spares`) and of the Jacobian pieces of a
        #: pair (both sides), reused by the next block and the next pair
        self._spares = Spares()
        self._scratch: tuple[list, list] = ([], [])
        self._pair_cap: tuple[int, int] | None = None  # (outputs, bytes): fits_once
        known = recall(problem.model, problem.key, "structured")
        if isinstance(known, str):
            raise NotApplicableError(known)
        if known is None:
            self.modules: list[nn.Module] = []
            self.module_names: list[str] = []
            self.geometries: list[Geometry] = []
            try:
                self.terms = self._plan()
                self.calls = self._verify(probe)
            except NotApplicableError as err:
                remember(problem.model, problem.key, "structured", str(err))
                raise
            # names, not modules: the memo must not hold the model (its weak key) alive
            known = (list(self.module_names), copy_terms(self.terms), self.calls)
            remember(problem.model, problem.key, "structured", known)
        else:  # verified before for this structure (same module objects): reuse it
            self.module_names, terms, self.calls = known
            named = dict(problem.model.named_modules(remove_duplicate=False))
            self.modules = [named[name] for name in self.module_names]
            self.geometries = [module_geometry(m) for m in self.modules]
            self.terms = copy_terms(terms)
        self.n1, self.n2, self.output = n1, n2, output
        self._choose_forms(n1, n2, output)

    # ------------------------------------------------------------------ outputs
    @property
    def n_out(self) -> int:
        """Outputs of the current range (:meth:`set_outputs`)."""
        return self.outputs[1] - self.outputs[0]

    def set_outputs(self, lo: int, hi: int) -> None:
        """Compute features (and kernels) for outputs ``lo:hi`` only."""
        self.outputs = (lo, hi)
        self._choose_forms(self.n1, self.n2, self.output)

    # ------------------------------------------------------------------ per block
    @property
    def pair_limit(self) -> int:
        """Bytes for the chunked temporaries of one pair of blocks: the budget's share, or
        less for a kernel planned as one block (:meth:`fits_once`)."""
        limit = max(self.budget // PAIR_SHARE, 1)
        if self._pair_cap is not None and self.n_out <= self._pair_cap[0]:
            limit = min(limit, self._pair_cap[1])
        return limit

    def fits_once(self, n: int, output: str, budget: int) -> bool:
        """Whether a symmetric kernel of ``n`` examples can be one block with the current
        outputs: its features plus the temporaries of the block with itself within
        ``budget``. Those temporaries may be cut below their share (``budget /
        PAIR_SHARE``), down to ``budget / PAIR_MIN_SHARE``, to make room for the features
        (more outputs per group, fewer forward passes); the cut applies to every group of
        at most these many outputs (whose features are no larger)."""
        self._pair_cap = None
        features = self.feature_bytes(n)
        if features + self.pair_bytes(n, n, output, same=True) <= budget:
            return True
        o_pair = self.n_out ** 2 if output == "full" else self.n_out
        room = budget - features - 2 * n * n * o_pair * self.problem.itemsize
        if room < budget // PAIR_MIN_SHARE:
            return False
        self._pair_cap = (self.n_out, room)
        return True

    def micro_batch(self) -> int:
        """Examples per forward/backward pass (its scratch within the budget's share)."""
        return max(1, (self.budget // SCRATCH_SHARE) // max(self._scratch_per_example(), 1))

    def features(self, x) -> tuple:
        """Captured inputs and cotangents (or per-layer Jacobians) of every term, for a
        block ``x`` of ``b`` examples, run in micro-batches."""
        b, step = len(x), self.micro_batch()
        if b <= step:
            return b, Block(self._micro_features(x))
        out = Block()
        for start in range(0, b, step):
            part = self._micro_features(x[start : start + step])
            if not out:
                out.extend(self._empty_block(part, b, out))
            for (_, whole), (_, d) in zip(out, part):
                _copy_into(whole, d, start)
        return b, out

    def _empty_block(self, part: list, b: int, block: Block) -> list:
        """Uninitialized containers for ``b`` examples shaped like one micro-batch's
        features ``part``, in memory of freed blocks where it fits (:mod:`._spares`)."""
        likes = [t for _, d in part for t in ((d.a, d.g) if isinstance(d, Stored) else (d,))]
        shapes = [(b, *t.shape[1:]) for t in likes]
        flat = self._spares.buffers([(math.prod(s), t) for s, t in zip(shapes, likes)], block)
        views = iter(zip(flat, shapes))
        out = []
        for store, d in part:
            if isinstance(d, Stored):
                a, g = next(views), next(views)
                d = Stored(a[0].view(a[1]), block_cotangents(*g, d.geo), d.geo, d.term)
            else:
                d = next(views)
                d = d[0].view(d[1])
            out.append((store, d))
        return out

    def _micro_features(self, x) -> list:
        with fast_matmuls_for(self.problem.selected.values()):
            feats = self._features(x)
        return [("jac", self._rest_jacobians(x, term.names)) if f is None else f
                for term, f in zip(self.terms, feats)]

    def _rest_jacobians(self, x, names: tuple[str, ...]) -> torch.Tensor:
        """``(b, o, P_rest)``: per-example Jacobians of the parameters outside supported
        layers, by :class:`~ntkit.empirical.jacobian.JacobianMethod` on the current outputs."""
        lo, hi = self.outputs
        sub = _OutputRange(**{f.name: getattr(self.problem, f.name) for f in fields(Problem)}, lo=lo)
        sub.n_out = hi - lo
        method = JacobianMethod(sub, x[: min(2, len(x))])
        method.groups = [list(names)]
        return torch.cat(method.jacobians(x, 0), dim=2).detach()

    def _output_cotangents(self, out: torch.Tensor, flat: list) -> list:
        """``(o, b, *shape)``: the cotangents of the current outputs with respect to each tensor
        of ``flat`` (``None`` where no output depends on it), by one batched backward pass
        (measured as fast as one pass per output on a transformer, faster on a ResNet), or
        one pass per output where a backward formula has no batching rule."""
        lo, hi = self.outputs
        o, b = hi - lo, len(out)
        try:
            if o == 1:  # one backward of a scalar (grad_outputs would make torch import sympy: ≈ 1 s)
                return [None if g is None else g[None]
                        for g in torch.autograd.grad(out[:, lo].sum(), flat, allow_unused=True)]
            basis = torch.eye(self.problem.n_out, dtype=out.dtype, device=out.device)[lo:hi]
            basis = basis[:, None, :].expand(o, b, self.problem.n_out)
            return list(torch.autograd.grad(out, flat, grad_outputs=basis, is_grads_batched=True,
                                            allow_unused=True))
        except RuntimeError:  # a backward formula without a batching rule: one pass per output
            rows = [torch.autograd.grad(out[:, k].sum(), flat, retain_graph=k + 1 < hi,
                                        allow_unused=True) for k in range(lo, hi)]
            # (a tensor that one output does not reach is reached by none)
            return [None if r[0] is None else torch.stack(r) for r in zip(*rows)]

    def _features(self, x) -> list:
        batched = {t.names[0]: self.batched_leaf(t, len(x)) for t in self.terms
                   if t.kind == "rest" and t.form == "batched"}
        out, inputs, probes = self._forward(x, {**self.problem.selected, **batched})
        if [len(c) for c in inputs] != self.calls:
            raise ModelError(
                "the forward calls its layers a different number of times for different inputs; "
                "use method='jacobian' or 'ntk_vp'"
            )
        flat = [d for per in probes for d in per] + list(batched.values())
        lo, hi = self.outputs
        o, b = hi - lo, len(x)
        grads = self._output_cotangents(out, flat)
        grads = [torch.zeros((o, *d.shape), dtype=d.dtype, device=d.device) if g is None else g.detach()
                 for g, d in zip(grads, flat)]
        it = iter(grads)
        per_call = [[next(it) for _ in per] for per in probes]
        # parameters given once per example: their gradients are per-example Jacobians
        rest = {k: next(it).transpose(0, 1).reshape(b, o, -1) for k in batched}
        return [(("jac", rest[term.names[0]]) if term.names[0] in rest else None) if term.kind == "rest"
                else store_features(self.geometries, term, inputs, per_call, term.store)
                for term in self.terms]

    def pair(self, f1: tuple, f2: tuple, output: str) -> torch.Tensor:
        """The kernel block of two feature blocks: ``(b1, b2)``, ``(b1, b2, o, o)`` or ``(b1, b2, o)``.

        Gram terms are added over a grid of example chunks small enough for their
        temporaries; a block with itself (``f1 is f2``, on the diagonal of a symmetric kernel)
        computes only the chunk pairs on and above the diagonal and mirrors the rest.
        Jacobian terms are one product per row chunk against all columns from that chunk on
        (a block with itself: the same upper chunk pairs, in fewer and larger products), or
        one product for the whole block of two different blocks.
        """
        (b1, terms1), (b2, terms2) = f1, f2
        same = f1 is f2
        first = terms1[0][1]
        acc = Accumulator(output, b1, b2, self.n_out, first if terms1[0][0] == "jac" else first.g)
        rows = self._chunk_rows(f1, f2, output)
        bounds1 = even_bounds(b1, math.ceil(b1 / rows))
        bounds2 = bounds1 if same else even_bounds(b2, math.ceil(b2 / rows))
        tiles = [(r0, r1, c0, c1) for r0, r1 in bounds1 for c0, c1 in bounds2 if not same or c0 >= r0]
        # Jacobian panels: runs of whole row chunks (so that mirroring the chunk pairs stays
        # right), of at least PANEL_ROWS rows (smaller products ran at a lower rate)
        merge = max(1, math.ceil(PANEL_ROWS / max(rows, 1)))
        panels = [(bounds1[k][0], bounds1[min(k + merge, len(bounds1)) - 1][1], bounds1[k][0], b1)
                  for k in range(0, len(bounds1), merge)] if same else [(0, b1, 0, b2)]
        limit = self.pair_limit if same else self.pair_limit // 2
        scratch1, scratch2 = self._scratch  # Jacobian pieces of both sides, memory reused by the terms
        for term, (store, d1), (_, d2) in zip(self.terms, terms1, terms2):
            if store == "jac":
                pieces = [(d1, d2)]
            elif term.form == "jac":
                flat = output == "trace"  # pieces in the order that is fastest to form
                pieces = ((j, j) for j in jacobian_chunks(d1, limit, scratch1, flat=flat)) if same else zip(
                    jacobian_chunks(d1, limit, scratch1, max(b1, b2), flat),
                    jacobian_chunks(d2, limit, scratch2, max(b1, b2), flat))
            else:
                for r0, r1, c0, c1 in tiles:
                    add_gram(acc.part(r0, r1, c0, c1), d1.patches(r0, r1), d1.g[r0:r1],
                             d2.patches(c0, c1), d2.g[c0:c1])
                continue
            for j1, j2 in pieces:
                for r0, r1, c0, c1 in panels:
                    acc.part(r0, r1, c0, c1).add_jacobians(j1[r0:r1], j2[c0:c1])
        if same:
            for r0, r1, c0, c1 in tiles:
                if c0 != r0:
                    acc.mirror(r0, r1, c0, c1)
        return acc.result()

    def self_diagonal(self, f: tuple) -> torch.Tensor:
        """``(b,)``: ``Σ_o |∂f_o(x_i)/∂w|²`` per example of a feature block, no pairs of
        different examples (Gram terms: ``Σ_{p,q} <ã_p, ã_q> Σ_{o,c} g[o,c,p] g[o,c,q]``)."""
        _, terms = f
        total, scratch = None, self._scratch[0]
        for term, (store, d) in zip(self.terms, terms):
            if store == "jac":
                part = d.square().sum((1, 2))
            elif term.form == "jac":
                part = sum(j.reshape(len(j), -1).square().sum(1)
                           for j in jacobian_chunks(d, self.pair_limit, scratch, flat=True))
            else:
                part = self_gram_diagonal(d)
            total = part if total is None else total + part
        return total

    def _chunk_rows(self, f1: tuple, f2: tuple, output: str) -> int:
        """Examples per chunk of the pair grid: small enough for every Gram term's
        temporaries and, for a large block with itself, for the symmetric saving."""
        (b1, terms1), (b2, terms2) = f1, f2
        rows = max(b1, b2)
        for term, (store, d1), (_, d2) in zip(self.terms, terms1, terms2):
            if store == "ag" and term.form == "gram":
                rows = min(rows, gram_rows(d1, d2, output, self.n_out, self.pair_limit))
        if f1 is f2 and self._pair_flops(b1, output) >= SYMMETRIC_CHUNK_FLOPS:
            chunks = max(1, min(SYMMETRIC_CHUNKS, b1 // SYMMETRIC_CHUNK_MIN))
            rows = min(rows, math.ceil(b1 / chunks))
        return max(1, rows)

    def _pair_flops(self, b: int, output: str) -> float:
        o = self.n_out
        o_pair = o * o if output == "full" else o
        flops = 0.0
        for term in self.terms:
            s = term.shape
            if term.form == "gram" and term.kind not in ("bias", "scale"):
                flops += 2 * b * b * s["G"] * s["P"] ** 2 * (s["K"] + o_pair * s["C"])
            else:
                flops += 2 * b * b * o_pair * s["G"] * s["C"] * s["K"]
        return flops

    # ------------------------------------------------------------------ memory
    def _stored_per_example(self) -> int:
        """Entries kept per example by :meth:`features`."""
        o = self.n_out
        stored = 0
        for term in self.terms:
            s = term.shape
            if term.store == "jac":
                stored += o * s["G"] * s["C"] * s["K"]
            else:
                a = s["R"] if len(term.uses) == 1 else s["G"] * s["P"] * s["K"]
                stored += a + o * s["G"] * s["C"] * s["P"]
        return stored

    def _scratch_per_example(self) -> int:
        """Bytes of one example's hooked forward/backward (cotangents of every output, the
        graph, per-layer Jacobians formed from patches) and its features before copying."""
        p = self.problem
        patches = max((t.shape["G"] * t.shape["P"] * t.shape["K"] for t in self.terms
                       if t.store == "jac" and t.kind not in ("bias", "scale", "rest")), default=0)
        # parameters outside supported layers: vmap(jacrev) holds about two Jacobians and the
        # activations per output (as JacobianMethod counts them)
        rest = sum(2 * (t.shape["K"] + p.act_numel) * self.n_out for t in self.terms
                   if t.kind == "rest" and t.form == "vmap")
        entries = (3 + self.n_out) * p.act_numel + patches + rest + self._stored_per_example()
        return entries * p.itemsize

    def feature_bytes(self, b: int) -> int:
        """Bytes of the stored features of ``b`` examples plus one micro-batch's scratch."""
        scratch = min(b, self.micro_batch()) * self._scratch_per_example()
        return b * self._stored_per_example() * self.problem.itemsize + scratch

    def pair_bytes(self, b1: int, b2: int, output: str, same: bool = False) -> int:
        """Bytes of one pair of blocks: two kernel blocks and the temporaries (Jacobian
        pieces of both sides, or of one for a block with itself: ``same``), at most
        :attr:`pair_limit`."""
        o = self.n_out
        o_pair = o * o if output == "full" else o
        temp = 0  # one pair's temporaries unchunked (chunks keep them under pair_limit)
        for term in self.terms:
            s = term.shape
            if term.store == "ag" and term.form == "gram":
                extra = o_pair if output != "trace" else 1
                temp = max(temp, s["G"] * s["P"] ** 2 * (3 + extra) * b1 * b2)
            elif term.store == "ag":
                temp = max(temp, (b1 if same else b1 + b2) * o * s["G"] * s["C"] * s["K"])
        item = self.problem.itemsize
        return 2 * b1 * b2 * o_pair * item + min(temp * item, self.pair_limit)


def _copy_into(whole, part, start: int) -> None:
    if isinstance(whole, Stored):
        whole.a[start : start + len(part)] = part.a
        whole.g[start : start + len(part)] = part.g
    else:
        whole[start : start + part.shape[0]] = part


@dataclass
class _OutputRange(Problem):
    """A problem whose outputs are ``lo : lo + n_out`` of another's."""

    lo: int = 0

    def f(self, selected: dict[str, torch.Tensor], x) -> torch.Tensor:
        return self.output(selected, x).reshape(len(x), -1)[:, self.lo : self.lo + self.n_out]
