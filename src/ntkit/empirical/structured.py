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
per example (they have one entry per channel). A parameter may be shared by
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

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import jvp
from torch.nn import functional as F

from .._fast_matmul import fast_matmuls, matmul
from ..errors import ModelError
from ..finite import NTKDense
from ._blocks import swap
from ._memo import recall, remember
from ._params import Problem
from .jacobian import Accumulator

try:  # ntkit's convolution modules (optional: not every checkout has them)
    from ..finite_conv import NTKConv, pad_images
except ImportError:  # pragma: no cover
    NTKConv = pad_images = None

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


#: The symmetric diagonal block is cut into row chunks only past this many flops (below,
#: one product is faster than several smaller ones), into at most ``SYMMETRIC_CHUNKS``
#: chunks of at least ``SYMMETRIC_CHUNK_MIN`` examples.
SYMMETRIC_CHUNK_FLOPS = 4e8
SYMMETRIC_CHUNKS = 8
SYMMETRIC_CHUNK_MIN = 32


class NotApplicableError(Exception):
    """The structured path does not apply to this model; ``str(err)`` says why."""


@dataclass
class _Geometry:
    """How a supported module turns its input into patches ``(b, G, P, K)``."""

    kind: str  # "linear" | "conv" | "norm"
    w_scale: float
    b_scale: float
    groups: int = 1
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    pad: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: norm layers: the normalized input ``x̂ (b, C, P)`` the scale multiplies
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: channels on the trailing axes (dense and LayerNorm) rather than on axis 1
    channels_last: int = 0


def _geometry(module: nn.Module) -> _Geometry | None:
    """The geometry of a supported module, ``None`` for any other module."""
    kind = type(module)
    if isinstance(module, nn.Linear) and kind.forward is nn.Linear.forward:
        return _Geometry("linear", 1.0, 1.0)
    if isinstance(module, NTKDense) and kind.forward is NTKDense.forward:
        if module.parameterization == "standard":
            return _Geometry("linear", 1.0, 1.0)
        b_std = 0.0 if module.b_std is None else float(module.b_std)
        return _Geometry("linear", float(module.W_std) / math.sqrt(module.in_features), b_std)
    for conv in _CONVS:
        if isinstance(module, conv) and kind.forward is conv.forward:
            pads = tuple(module._reversed_padding_repeated_twice)
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode

            def pad(x, pads=pads, mode=mode):
                return F.pad(x, pads, mode=mode) if any(pads) else x

            return _Geometry("conv", 1.0, 1.0, module.groups, tuple(module.kernel_size),
                             tuple(module.stride), tuple(module.dilation), pad)
    if NTKConv is not None and isinstance(module, NTKConv) and kind.forward is NTKConv.forward:
        d = len(module.kernel_size)

        def pad_ntk(x, m=module):
            return pad_images(x, m.kernel_size, m.stride, m.padding)

        scales = (1.0, 1.0)
        if module.parameterization != "standard":
            b_std = 0.0 if module.b_std is None else float(module.b_std)
            scales = (float(module.W_std) / math.sqrt(module.fan_in), b_std)
        return _Geometry("conv", *scales, 1, tuple(module.kernel_size), tuple(module.stride),
                         (1,) * d, pad_ntk)
    return _norm_geometry(module)


def _norm_geometry(module: nn.Module) -> _Geometry | None:
    """Normalization layers whose affine parameters act per channel on ``x̂``.

    ``y = γ ⊙ x̂ + β``: ``∂f_o/∂γ_c = Σ_p g_o[c, p] x̂[c, p]`` and ``∂f_o/∂β_c = Σ_p g_o[c, p]``.
    BatchNorm only with running statistics in eval mode (other modes mix examples and are
    refused before this point).
    """
    kind = type(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and kind.forward is (
        nn.modules.batchnorm._BatchNorm.forward
    ):
        if module.training or module.running_mean is None:
            return None

        def bn(x, m=module):
            shape = (1, -1) + (1,) * (x.ndim - 2)
            xhat = (x - m.running_mean.reshape(shape)) * torch.rsqrt(m.running_var.reshape(shape) + m.eps)
            return xhat.reshape(x.shape[0], x.shape[1], -1)

        return _Geometry("norm", 1.0, 1.0, normalize=bn)
    if isinstance(module, nn.LayerNorm) and kind.forward is nn.LayerNorm.forward:
        k = len(module.normalized_shape)

        def ln(x, m=module, k=k):
            xhat = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
            return xhat.reshape(x.shape[0], -1, math.prod(x.shape[x.ndim - k:])).transpose(1, 2)

        return _Geometry("norm", 1.0, 1.0, normalize=ln, channels_last=k)
    if isinstance(module, nn.GroupNorm) and kind.forward is nn.GroupNorm.forward:

        def gn(x, m=module):
            xhat = F.group_norm(x, m.num_groups, None, None, m.eps)
            return xhat.reshape(x.shape[0], x.shape[1], -1)

        return _Geometry("norm", 1.0, 1.0, normalize=gn)
    return None


def _patches(x: torch.Tensor, geo: _Geometry) -> torch.Tensor:
    """Layer input → scaled patches ``(b, G, P, K)`` (``K`` ordered like ``weight.flatten(1)``)."""
    b = x.shape[0]
    if geo.kind == "linear":
        x = x.reshape(b, 1, -1, x.shape[-1])
        return x * geo.w_scale if geo.w_scale != 1.0 else x
    d = len(geo.kernel)
    if x.ndim != 2 + d:
        raise NotApplicableError(f"a convolution received input of shape {tuple(x.shape)}, not (b, C, ...)")
    x = geo.pad(x)
    for i, (k, s, dil) in enumerate(zip(geo.kernel, geo.stride, geo.dilation)):
        x = x.unfold(2 + i, dil * (k - 1) + 1, s)
    if any(dil > 1 for dil in geo.dilation):
        x = x[(..., *(slice(None, None, dil) for dil in geo.dilation))]
    positions = math.prod(x.shape[2 : 2 + d])
    x = x.permute(0, *range(2, 2 + d), 1, *range(2 + d, 2 + 2 * d))  # (b, *L, C, *k)
    x = x.reshape(b, positions, geo.groups, -1).transpose(1, 2)
    return x * geo.w_scale if geo.w_scale != 1.0 else x.contiguous()


def _cotangents(grad: torch.Tensor, geo: _Geometry) -> torch.Tensor:
    """``∂f_o/∂z`` as ``(o, b, *z_shape)`` → ``(b, o, G, C, P)``."""
    o, b = grad.shape[:2]
    if geo.kind == "linear" or geo.channels_last:
        channels = math.prod(grad.shape[grad.ndim - max(1, geo.channels_last):])
        g = grad.reshape(o, b, -1, channels).permute(1, 0, 3, 2)
        return g.reshape(b, o, 1, channels, -1)
    return grad.reshape(o, b, geo.groups, grad.shape[2] // geo.groups, -1).transpose(0, 1)


@dataclass
class _Term:
    """One kernel summand: a weight (with its own layer's bias folded in), a lone bias, or
    the per-channel scale of a normalization layer."""

    kind: str  # "affine" | "weight" | "bias" | "scale"
    names: tuple[str, ...]  # selected parameter names it covers: (weight[, bias]) or (bias,)
    uses: list[tuple[int, int]]  # (module index, call index) of every use
    form: str = "jac"  # "gram" | "jac" (weights); biases always "jac"
    shape: dict = field(default_factory=dict)  # G, P, K, C after the probe


def _copy_terms(terms: list[_Term]) -> list[_Term]:
    """Independent copies (``form`` and ``shape`` are set per call)."""
    return [_Term(t.kind, t.names, list(t.uses), t.form, dict(t.shape)) for t in terms]


class StructuredMethod:
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
            self.geometries: list[_Geometry] = []
            try:
                self.terms = self._plan()
                self.calls = self._verify(probe)
            except NotApplicableError as err:
                remember(problem.model, problem.key, "structured", str(err))
                raise
            # names, not modules: the memo must not hold the model (its weak key) alive
            known = (list(self.module_names), _copy_terms(self.terms), self.calls)
            remember(problem.model, problem.key, "structured", known)
        else:  # verified before for this structure (same module objects): reuse it
            self.module_names, terms, self.calls = known
            named = dict(problem.model.named_modules(remove_duplicate=False))
            self.modules = [named[name] for name in self.module_names]
            self.geometries = [_geometry(m) for m in self.modules]
            self.terms = _copy_terms(terms)
        self._choose_forms(n1, n2, output)

    # ------------------------------------------------------------------ setup
    def _plan(self) -> list[_Term]:
        """Map each selected parameter to the supported layers that own it."""
        model, selected = self.problem.model, self.problem.selected
        name_of = {id(p): k for k, p in model.named_parameters() if k in selected}
        owners: dict[str, list[tuple[int, str]]] = {k: [] for k in selected}
        index: dict[int, int] = {}
        for mname, module in model.named_modules(remove_duplicate=False):
            for attr, p in module._parameters.items():
                if p is None or id(p) not in name_of:
                    continue
                geo = _geometry(module)
                if geo is None or attr not in ("weight", "bias"):
                    raise NotApplicableError(
                        f"parameter {name_of[id(p)]!r} belongs to {type(module).__name__} "
                        f"{mname!r}; the structured path supports nn.Linear, nn.Conv1d/2d/3d, "
                        "ntkit's Dense/Conv layers and the affine parameters of BatchNorm (eval), "
                        "LayerNorm and GroupNorm"
                    )
                if id(module) not in index:
                    index[id(module)] = len(self.modules)
                    self.modules.append(module)
                    self.module_names.append(mname)
                    self.geometries.append(geo)
                entry = (index[id(module)], attr)
                if entry not in owners[name_of[id(p)]]:
                    owners[name_of[id(p)]].append(entry)
        terms: list[_Term] = []
        merged: set[str] = set()
        for name, own in owners.items():
            if not own or own[0][1] != "weight" or any(a != "weight" for _, a in own):
                continue
            mods = sorted({m for m, _ in own})
            norms = [self.geometries[m].kind == "norm" for m in mods]
            if any(norms):
                if not all(norms):
                    raise NotApplicableError(f"parameter {name!r} is shared by different layer types")
                terms.append(_Term("scale", (name,), [(m, -1) for m in mods]))
                continue
            bias = getattr(self.modules[mods[0]], "bias", None)
            bias_name = name_of.get(id(bias)) if bias is not None else None
            if len(mods) == 1 and bias_name is not None and owners[bias_name] == [(mods[0], "bias")]:
                terms.append(_Term("affine", (name, bias_name), [(mods[0], -1)]))
                merged.add(bias_name)
            else:
                terms.append(_Term("weight", (name,), [(m, -1) for m in mods]))
        for name, own in owners.items():
            if name in merged or any(t.names[0] == name for t in terms):
                continue
            if any(a != "bias" for _, a in own):
                raise NotApplicableError(f"parameter {name!r} is both a weight and a bias")
            terms.append(_Term("bias", (name,), [(m, -1) for m, _ in own]))
        return terms

    def _forward(self, x: torch.Tensor, selected: dict) -> tuple[torch.Tensor, list, list]:
        """Run the model with hooks: returns ``(outputs (b, o), inputs, probes)`` where
        ``inputs[m]``/``probes[m]`` list each call of module ``m``."""
        inputs: list[list[torch.Tensor]] = [[] for _ in self.modules]
        probes: list[list[torch.Tensor]] = [[] for _ in self.modules]
        handles = []
        for i, module in enumerate(self.modules):
            def hook(mod, args, out, i=i):
                if not args or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
                    raise NotApplicableError(
                        f"layer {type(mod).__name__} was called without one tensor input"
                    )
                inputs[i].append(args[0].detach().clone())
                delta = torch.zeros_like(out, requires_grad=True)
                probes[i].append(delta)
                return out + delta
            handles.append(module.register_forward_hook(hook))
        try:
            with torch.enable_grad():
                out = self.problem.f(selected, x)
        finally:
            for h in handles:
                h.remove()
        return out, inputs, probes

    def _verify(self, x: torch.Tensor) -> list[int]:
        """Check the decomposition against autograd on the probe examples; return call counts.

        With ``u`` a random combination of the first example's outputs, one backward pass
        gives the layers' cotangents: those of the other examples must vanish (each layer
        treats examples independently, batch axis first). Then the derivative of ``u·f``
        along a random direction ``V`` of the selected parameters (rank one per weight,
        ``V_W = r sᵀ``) is computed twice: by forward mode (``torch.func.jvp``) through the
        model, and from the first example's captured layer inputs and cotangents as
        ``Σ_p (rᵀ g_p)(sᵀ ã_p)``. A parameter used outside its layers, or a layer computing
        something else than modelled, makes them differ (with probability one).
        """
        problem = self.problem
        out, inputs, probes = self._forward(x, problem.selected)
        calls = [len(c) for c in inputs]
        for term in self.terms:
            term.uses = [(m, c) for m, _ in term.uses for c in range(calls[m])]
            if not term.uses:
                raise NotApplicableError(f"the layer holding {term.names[0]!r} is never called")
        b = x.shape[0]
        for per in inputs:
            for t in per:
                if t.ndim < 2 or t.shape[0] != b:
                    raise NotApplicableError("a layer receives inputs whose first axis is not the batch")
        flat = [d for per in probes for d in per]
        gen = torch.Generator(device="cpu").manual_seed(0)

        def draw(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen, dtype=out.dtype).to(out.device)

        weights = torch.zeros(b, problem.n_out, dtype=out.dtype, device=out.device)
        weights[0] = draw(problem.n_out).abs() + 0.5
        grads = torch.autograd.grad((out * weights).sum(), flat, allow_unused=True)
        cot = iter(grads)
        per_call = [[next(cot) for _ in per] for per in probes]
        tol = 10 * math.sqrt(torch.finfo(out.dtype).eps)
        for per, dl in zip(per_call, probes):
            for i, (g, d) in enumerate(zip(per, dl)):
                if g is None:
                    per[i] = torch.zeros_like(d)[None]
                    continue
                if b > 1 and float(g[1:].abs().max()) > tol * float(g.abs().max()):
                    raise NotApplicableError(
                        "a layer's output for one example depends on other examples"
                    )
                per[i] = g[None]
        # random directions: rank one for weights, plain vectors for biases and scales
        tangents: dict[str, torch.Tensor] = {}
        rebuilt, scale = 0.0, 0.0
        for term in self.terms:
            if term.kind in ("bias", "scale"):
                jac = self._term_features(term, inputs, per_call, "jac", keep=0).reshape(-1)
                name = term.names[0]
                if jac.numel() != problem.selected[name].numel():
                    raise NotApplicableError(f"parameter {name!r} does not fit its layer's shape")
                v = draw(jac.numel())
                tangents[name] = v.reshape(problem.selected[name].shape)
                part = float(jac @ v)
            else:
                a, g = self._term_features(term, inputs, per_call, "gram", keep=0)
                a, g = a[0], g[0, 0]  # (G, P, K), (G, C, P)
                G, _, K = a.shape
                C = g.shape[1]
                k_w = K - 1 if term.kind == "affine" else K
                weight = problem.selected[term.names[0]]
                if weight.numel() != G * C * k_w:
                    raise NotApplicableError(f"parameter {term.names[0]!r} does not fit its layer's shape")
                r, s_vec = draw(G, C), draw(k_w)
                tangents[term.names[0]] = (r.reshape(-1, 1) * s_vec).reshape(weight.shape)
                left = torch.einsum("gcp,gc->gp", g, r)
                part = float((left * (a[:, :, :k_w] @ s_vec)).sum())
                if term.kind == "affine":
                    r_b = draw(G, C)
                    tangents[term.names[1]] = r_b.reshape(problem.selected[term.names[1]].shape)
                    part += float((torch.einsum("gcp,gc->gp", g, r_b) * a[:, :, k_w]).sum())
            rebuilt += part
            scale += abs(part)
        names = list(problem.selected)

        def combined(*w: torch.Tensor) -> torch.Tensor:
            return (problem.f(dict(zip(names, w)), x) * weights).sum()

        _, true = jvp(combined, tuple(problem.selected.values()), tuple(tangents[k] for k in names))
        true = float(true)
        if abs(rebuilt - true) > tol * (scale + abs(true)) + torch.finfo(out.dtype).tiny:
            raise NotApplicableError(
                "the gradients of the selected parameters are not explained by their layers' "
                "inputs and outputs (a parameter used outside its module's forward?)"
            )
        return calls

    def _choose_forms(self, n1: int, n2: int, output: str) -> None:
        """Per weight term: Gram form or per-layer Jacobian, whichever needs fewer flops."""
        o = self.problem.n_out
        o_pair = o * o if output == "full" else o
        pairs, examples = n1 * n2, n1 + n2
        for term in self.terms:
            if term.kind in ("bias", "scale"):
                continue
            s = term.shape
            G, P, K, C = s["G"], s["P"], s["K"], s["C"]
            gram = pairs * G * P * P * (2 * K + 2 * o_pair * C + 2 * o_pair)
            jac = examples * 2 * o * G * C * P * K + pairs * 2 * o_pair * G * C * K
            term.form = "gram" if gram <= jac else "jac"

    # ------------------------------------------------------------------ per block
    def _term_features(self, term, inputs, grads, form, keep=None):
        """Features of one term from captured inputs and cotangents ``(o, b, *z)`` per call."""
        a_parts, g_parts = [], []
        bias_only = term.kind in ("bias", "scale")
        for m, c in term.uses:
            geo = self.geometries[m]
            g = _cotangents(grads[m][c] if keep is None else grads[m][c][:, keep : keep + 1], geo)
            if term.kind == "scale":  # Σ_p g[o, c, p] x̂[c, p]
                x = inputs[m][c] if keep is None else inputs[m][c][keep : keep + 1]
                xhat = geo.normalize(x)
                g_parts.append(torch.einsum("iogcp,icp->iogc", g, xhat))
                continue
            if bias_only:
                g_parts.append(g.sum(-1) * geo.b_scale)
                continue
            x = inputs[m][c] if keep is None else inputs[m][c][keep : keep + 1]
            a = _patches(x, geo)
            if term.kind == "affine":
                ones = a.new_full((*a.shape[:3], 1), geo.b_scale)
                a = torch.cat([a, ones], dim=3)
            a_parts.append(a)
            g_parts.append(g)
        if bias_only:
            g = sum(g_parts[1:], g_parts[0])
            term.shape.update(G=g.shape[2], C=g.shape[3], K=1, P=1)
            return g.reshape(g.shape[0], g.shape[1], -1)
        if len({a.shape[1:2] + a.shape[3:] for a in a_parts}) > 1:
            raise NotApplicableError(f"the uses of {term.names[0]!r} have different shapes")
        a = torch.cat(a_parts, dim=2) if len(a_parts) > 1 else a_parts[0]
        g = torch.cat(g_parts, dim=4) if len(g_parts) > 1 else g_parts[0]
        b, o, G, C, P = g.shape
        term.shape.update(G=G, C=C, K=a.shape[3], P=P)
        if form == "gram":
            return a, g
        K = a.shape[3]
        j = torch.bmm(g.transpose(1, 2).reshape(b * G, o * C, P), a.reshape(b * G, P, K))
        return j.view(b, G, o, C, K).transpose(1, 2).reshape(b, o, G * C * K)

    def features(self, x: torch.Tensor) -> list:
        """Captured inputs and cotangents of every term, for a block ``x (b, ...)``."""
        with fast_matmuls():
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
            feats = self._term_features(term, inputs, per_call, form)
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
        bounds = [(b * i // chunks, b * (i + 1) // chunks) for i in range(chunks)]
        parts = [_slice_features(f1, i0, i1) for i0, i1 in bounds]
        out = None
        for i, (i0, i1) in enumerate(bounds):
            for j in range(i, chunks):
                j0, j1 = bounds[j]
                block = self._pair(parts[i], parts[j], output)
                if out is None:
                    out = block.new_empty((b, b, *block.shape[2:]))
                out[i0:i1, j0:j1] = block
                if j > i:
                    out[j0:j1, i0:i1] = swap(block, output)
        return out

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
                _add_gram(acc, *d1, *d2)
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


def _slice_features(f: tuple, start: int, stop: int) -> tuple:
    """The features of examples ``start:stop`` of a block (every tensor is batch-first)."""
    _, terms = f
    return stop - start, [(form, d[start:stop] if form == "jac" else tuple(t[start:stop] for t in d))
                          for form, d in terms]


def _add_gram(acc: Accumulator, a1, g1, a2, g2) -> None:
    """Add ``Σ_{p,q} <a1_p, a2_q> Σ_c g1[o, c, p] g2[o', c, q]`` (module docstring) to ``acc``.

    ``a (b, G, P, K)``, ``g (b, o, G, C, P)``.
    """
    b1, o, G, C, P = g1.shape
    b2, Q = g2.shape[0], g2.shape[4]
    K = a1.shape[3]
    if G == 1 and P == 1 and Q == 1:  # dense layer: elementwise product of two Grams
        gram_a = matmul(a1.reshape(b1, K), a2.reshape(b2, K).T)
        h1, h2 = g1.reshape(b1, o, C), g2.reshape(b2, o, C)
        if acc.output == "trace":
            acc.data.addcmul_(gram_a, matmul(h1.reshape(b1, -1), h2.reshape(b2, -1).T))
        elif acc.output == "full":
            gram_g = matmul(h1.reshape(b1 * o, C), h2.reshape(b2 * o, C).T).view(b1, o, b2, o)
            acc.data.addcmul_(gram_g, gram_a[:, None, :, None])
        else:
            acc.data.addcmul_(torch.bmm(h1.transpose(0, 1), h2.permute(1, 2, 0)), gram_a[None])
        return
    gram_a = torch.bmm(a1.transpose(0, 1).reshape(G, b1 * P, K),
                       a2.transpose(0, 1).reshape(G, b2 * Q, K).transpose(1, 2)).view(G, b1, P, b2, Q)
    if acc.output == "trace":
        h1 = g1.permute(2, 0, 4, 1, 3).reshape(G, b1 * P, o * C)
        h2 = g2.permute(2, 0, 4, 1, 3).reshape(G, b2 * Q, o * C)
        gram_g = torch.bmm(h1, h2.transpose(1, 2)).view(G, b1, P, b2, Q)
        acc.data += torch.einsum("gipjq,gipjq->ij", gram_g, gram_a)
    elif acc.output == "full":
        h1 = g1.permute(2, 0, 1, 4, 3).reshape(G, b1 * o * P, C)
        h2 = g2.permute(2, 0, 1, 4, 3).reshape(G, b2 * o * Q, C)
        gram_g = torch.bmm(h1, h2.transpose(1, 2)).view(G, b1, o, P, b2, o, Q)
        acc.data += torch.einsum("giopjrq,gipjq->iojr", gram_g, gram_a)
    else:
        h1 = g1.permute(1, 2, 0, 4, 3).reshape(o * G, b1 * P, C)
        h2 = g2.permute(1, 2, 0, 4, 3).reshape(o * G, b2 * Q, C)
        gram_g = torch.bmm(h1, h2.transpose(1, 2)).view(o, G, b1, P, b2, Q)
        acc.data += torch.einsum("ogipjq,gipjq->oij", gram_g, gram_a)
