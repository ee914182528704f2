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
gets no gradient. A parameter may be shared by
several such layers or used by one layer several times. Before first use (once per model
structure and input layout: :mod:`._memo`), the decomposition is verified on two probe
examples against autograd: the layer cotangents of one example must not reach the other,
and a random directional derivative of the outputs with respect to the selected parameters,
by forward mode through the model, must equal the one rebuilt from the captured inputs and
cotangents. A parameter used outside these layers, a layer that mixes
examples, or any other mismatch makes the path inapplicable (``auto`` then falls back to
another method; ``method="structured"`` raises ModelError saying why).
"""

from __future__ import annotations

import torch
from torch import nn

from .._fast_matmul import fast_matmuls_for
from ..errors import ModelError
from ..tiling import Tile, assemble, even_bounds, walk
from ._blocks import swap
from ._layer_adapters import Geometry, NotApplicableError, module_geometry
from ._memo import recall, remember
from ._params import Problem
from ._structured_features import add_gram, slice_features, term_features
from ._structured_plan import StructuredPlan, copy_terms
from .jacobian import Accumulator

__all__ = ["NotApplicableError", "StructuredMethod"]

#: The symmetric diagonal block is cut into row chunks only past this many flops (below,
#: one product is faster than several smaller ones), into at most ``SYMMETRIC_CHUNKS``
#: chunks of at least ``SYMMETRIC_CHUNK_MIN`` examples.
SYMMETRIC_CHUNK_FLOPS = 4e8
SYMMETRIC_CHUNKS = 8
SYMMETRIC_CHUNK_MIN = 32


class StructuredMethod(StructuredPlan):
    """``method="structured"``; raises :class:`NotApplicableError` from the constructor."""

    name = "structured"
    #: its block with itself skips its own lower half (:meth:`pair`): no need for the
    #: caller to cut symmetric kernels into several blocks
    symmetric_pairs = True

    def __init__(self, problem: Problem, probe: torch.Tensor, n1: int, n2: int, output: str) -> None:
        self.problem = problem
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
        self._choose_forms(n1, n2, output)

    # ------------------------------------------------------------------ per block
    def features(self, x: torch.Tensor) -> list:
        """Captured inputs and cotangents of every term, for a block ``x (b, ...)``."""
        with fast_matmuls_for(self.problem.selected.values()):
            return self._features(x)

    def _features(self, x: torch.Tensor) -> list:
        out, inputs, probes = self._forward(x, self.problem.selected)
        if [len(c) for c in inputs] != self.calls:
            raise ModelError(
                "the forward calls its layers a different number of times for different inputs; "
                "use method='jacobian' or 'ntk_vp'"
            )
        flat = [d for per in probes for d in per]
        o, b = self.problem.n_out, x.shape[0]
        basis = torch.eye(o, dtype=out.dtype, device=out.device)[:, None, :].expand(o, b, o)
        try:
            if o == 1:  # one backward of a scalar (grad_outputs would make torch import sympy: ≈ 1 s)
                grads = [None if g is None else g[None]
                         for g in torch.autograd.grad(out.sum(), flat, allow_unused=True)]
            else:
                grads = torch.autograd.grad(out, flat, grad_outputs=basis, is_grads_batched=True,
                                            allow_unused=True)
        except RuntimeError:  # a backward formula without a batching rule: one pass per output
            rows = [torch.autograd.grad(out[:, k].sum(), flat, retain_graph=k + 1 < o,
                                        allow_unused=True) for k in range(o)]
            grads = [None if r[0] is None else torch.stack(r) for r in zip(*rows)]
        grads = [torch.zeros((o, *d.shape), dtype=d.dtype, device=d.device) if g is None else g.detach()
                 for g, d in zip(grads, flat)]
        it = iter(grads)
        per_call = [[next(it) for _ in per] for per in probes]
        terms = []
        for term in self.terms:
            form = "jac" if term.kind in ("bias", "scale") else term.form
            feats = term_features(self.geometries, term, inputs, per_call, form)
            if form == "gram":  # contiguous once here, not at every pair
                feats = tuple(t.contiguous() for t in feats)
            terms.append((form, feats))
        return b, terms

    def pair(self, f1: tuple, f2: tuple, output: str) -> torch.Tensor:
        """The kernel block of two feature blocks: ``(b1, b2)``, ``(b1, b2, o, o)`` or ``(b1, b2, o)``.

        A block with itself (``f1 is f2``, on the diagonal of a symmetric kernel) is symmetric:
        when its products are large it is cut into row chunks of examples and only the chunk
        pairs on and above the diagonal are computed (about ``(k+1)/2k`` of the flops).
        """
        chunks = self._self_chunks(f1, output) if f1 is f2 else 1
        if chunks == 1:
            return self._pair(f1, f2, output)
        b = f1[0]
        bounds = even_bounds(b, chunks)
        tiles = walk(bounds, bounds, symmetric=True)
        parts = {t.r0: slice_features(f1, t.r0, t.r1) for t in tiles if t.diagonal}

        def compute(t: Tile):
            return (self._pair(parts[t.r0], parts[t.c0], output),)

        def outputs(first):
            return [first[0].new_empty((b, b, *first[0].shape[2:]))]

        # the caller symmetrizes the whole block: its diagonal chunks are written as computed
        (out,) = assemble(tiles, compute, outputs, symmetric=True, symmetrize_diagonal=False,
                          swap=lambda part: swap(part, output))
        return out

    def self_diagonal(self, f: tuple) -> torch.Tensor:
        """``(b,)``: ``Σ_o |∂f_o(x_i)/∂w|²`` per example of a feature block, no pairs of
        different examples (Gram terms: ``Σ_{p,q} <ã_p, ã_q> Σ_{o,c} g[o,c,p] g[o,c,q]``)."""
        b, terms = f
        total = None
        for form, d in terms:
            if form == "jac":
                part = d.square().sum((1, 2))
            else:
                a, g = d  # (b, G, P, K), (b, o, G, C, P)
                G, P = a.shape[1], a.shape[2]
                gram_a = torch.bmm(a.reshape(b * G, P, -1), a.reshape(b * G, P, -1).transpose(1, 2))
                h = g.transpose(1, 2).reshape(b * G, -1, P)
                gram_g = torch.bmm(h.transpose(1, 2), h)
                part = (gram_a * gram_g).reshape(b, -1).sum(1)
            total = part if total is None else total + part
        return total

    def _self_chunks(self, f: tuple, output: str) -> int:
        """Row chunks for the symmetric block of ``f`` with itself (1: not worth cutting)."""
        b, terms = f
        o = self.problem.n_out
        o_pair = o * o if output == "full" else o
        flops = 0
        for (form, _), term in zip(terms, self.terms):
            s = term.shape
            if form == "gram":
                flops += 2 * b * b * s["G"] * s["P"] ** 2 * (s["K"] + o_pair * s["C"])
            else:
                flops += 2 * b * b * o_pair * s["G"] * s["C"] * s["K"]
        if flops < SYMMETRIC_CHUNK_FLOPS:
            return 1
        return max(1, min(SYMMETRIC_CHUNKS, b // SYMMETRIC_CHUNK_MIN))

    def _pair(self, f1: tuple, f2: tuple, output: str) -> torch.Tensor:
        (b1, terms1), (b2, terms2) = f1, f2
        like = terms1[0][1] if terms1[0][0] == "jac" else terms1[0][1][0]
        acc = Accumulator(output, b1, b2, self.problem.n_out, like)
        for (form, d1), (_, d2) in zip(terms1, terms2):
            if form == "jac":
                acc.add_jacobians(d1, d2)
            else:
                add_gram(acc, *d1, *d2)
        return acc.result()

    # ------------------------------------------------------------------ memory
    def feature_bytes(self, b: int) -> int:
        """Bytes of the stored features of ``b`` examples plus the hooked forward/backward."""
        p = self.problem
        stored = 0
        for term in self.terms:
            s = term.shape
            if term.form == "gram" and term.kind not in ("bias", "scale"):
                stored += s["G"] * s["P"] * s["K"] + p.n_out * s["G"] * s["C"] * s["P"]
            else:
                stored += p.n_out * s["G"] * s["C"] * s["K"]
        scratch = (3 + 2 * p.n_out) * p.act_numel
        return b * (stored + scratch) * p.itemsize

    def pair_bytes(self, b1: int, b2: int, output: str) -> int:
        o = self.problem.n_out
        o_pair = o * o if output == "full" else o
        temp = 0
        for term in self.terms:
            if term.form == "gram" and term.kind not in ("bias", "scale"):
                s = term.shape
                temp = max(temp, s["G"] * s["P"] * s["P"] * (2 + o_pair))
        return b1 * b2 * (2 * o_pair + temp) * self.problem.itemsize
