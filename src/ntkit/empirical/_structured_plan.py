"""Planning and verification of the structured path.

:class:`StructuredPlan` maps each selected parameter to the supported layers that own it (one
:class:`Term` per weight, lone bias or normalization scale), checks the decomposition against
autograd on probe examples, and picks per weight term the Gram form or the per-layer
Jacobian, whichever needs fewer flops (see :mod:`ntkit.empirical.structured`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ._attention import attention_forward
from ._layer_adapters import Geometry, NotApplicableError, module_geometry
from ._params import Problem
from ._structured_features import term_features


@dataclass
class Term:
    """One kernel summand: a weight (with its own layer's bias folded in), a lone bias, or
    the per-channel scale of a normalization layer."""

    kind: str  # "affine" | "weight" | "bias" | "scale" | "rest" (a parameter outside them)
    names: tuple[str, ...]  # selected parameter names it covers: (weight[, bias]) or (bias,)
    uses: list[tuple[int, int]]  # (module index, call index) of every use
    form: str = "jac"  # "gram" | "jac" (weights); biases always "jac"; rest: "batched" | "vmap"
    shape: dict = field(default_factory=dict)  # G, P, K, C, R (raw input entries) after the probe
    #: what a feature block keeps: "jac" (per-example Jacobians) or "ag" (inputs, cotangents)
    store: str = "jac"


def copy_terms(terms: list[Term]) -> list[Term]:
    """Independent copies (``form`` and ``shape`` are set per call)."""
    return [Term(t.kind, t.names, list(t.uses), t.form, dict(t.shape), t.store) for t in terms]


#: A parameter outside supported layers is tried once per example with up to this many
#: singleton axes after the batch axis (to broadcast like the tensor it is added to).
BATCHED_LEADS = 4


class StructuredPlan:
    """The setup half of :class:`~ntkit.empirical.structured.StructuredMethod`.

    Attributes set by a subclass before :meth:`_plan`: ``problem`` (:class:`Problem`) and the
    empty lists ``modules``, ``module_names`` and ``geometries`` that :meth:`_plan` fills.
    """

    problem: Problem
    modules: list[nn.Module]
    module_names: list[str]
    geometries: list[Geometry]
    terms: list[Term]
    n_out: int  # outputs whose features are computed (a range of the model's outputs)

    def _plan(self) -> list[Term]:
        """Map each selected parameter to the supported layers that own it."""
        model, selected = self.problem.model, self.problem.selected
        name_of = {id(p): k for k, p in model.named_parameters() if k in selected}
        owners: dict[str, list[tuple[int, str]]] = {k: [] for k in selected}
        index: dict[int, int] = {}
        elsewhere: set[str] = set()  # parameters of other modules (or other attributes)
        for mname, module in model.named_modules(remove_duplicate=False):
            for attr, p in module._parameters.items():
                if p is None or id(p) not in name_of:
                    continue
                geo = module_geometry(module)
                if geo is None or attr not in (geo.weight_attr, geo.bias_attr):
                    elsewhere.add(name_of[id(p)])
                    continue
                attr = "weight" if attr == geo.weight_attr else "bias"
                if id(module) not in index:
                    index[id(module)] = len(self.modules)
                    self.modules.append(module)
                    self.module_names.append(mname)
                    self.geometries.append(geo)
                entry = (index[id(module)], attr)
                if entry not in owners[name_of[id(p)]]:
                    owners[name_of[id(p)]].append(entry)
        terms: list[Term] = []
        merged: set[str] = set()
        for name, own in owners.items():
            if not own or own[0][1] != "weight" or any(a != "weight" for _, a in own):
                continue
            mods = sorted({m for m, _ in own})
            norms = [self.geometries[m].kind == "norm" for m in mods]
            if any(norms):
                if not all(norms):
                    raise NotApplicableError(f"parameter {name!r} is shared by different layer types")
                terms.append(Term("scale", (name,), [(m, -1) for m in mods]))
                continue
            bias = getattr(self.modules[mods[0]], self.geometries[mods[0]].bias_attr, None)
            bias_name = name_of.get(id(bias)) if bias is not None else None
            if len(mods) == 1 and bias_name is not None and owners[bias_name] == [(mods[0], "bias")]:
                terms.append(Term("affine", (name, bias_name), [(mods[0], -1)]))
                merged.add(bias_name)
            else:
                terms.append(Term("weight", (name,), [(m, -1) for m in mods]))
        for name, own in owners.items():
            if name in merged or not own or any(t.names[0] == name for t in terms):
                continue
            if any(a != "bias" for _, a in own):
                raise NotApplicableError(f"parameter {name!r} is both a weight and a bias")
            terms.append(Term("bias", (name,), [(m, -1) for m, _ in own]))
        rest = tuple(k for k, own in owners.items() if not own)
        if len(rest) == len(owners):
            example = sorted(elsewhere)[0] if elsewhere else rest[0]
            raise NotApplicableError(
                f"no selected parameter belongs to a supported layer (e.g. {example!r}); the "
                "structured path supports nn.Linear, nn.Conv1d/2d/3d, ntkit's Dense/Conv layers, "
                "nn.Embedding, the in-projection of nn.MultiheadAttention (self-attention) and the "
                "affine parameters of BatchNorm (eval), LayerNorm and GroupNorm"
            )
        for name in rest:  # used by other modules or directly by a forward (see _verify)
            size = selected[name].numel()
            terms.append(Term("rest", (name,), [], "vmap", dict(G=1, C=1, K=size, P=1, R=0)))
        return terms

    def _forward(self, x: torch.Tensor, selected: dict) -> tuple[torch.Tensor, list, list]:
        """Run the model with hooks: returns ``(outputs (b, o), inputs, probes)`` where
        ``inputs[m]``/``probes[m]`` list each call of module ``m``."""
        inputs: list[list[torch.Tensor]] = [[] for _ in self.modules]
        probes: list[list[torch.Tensor]] = [[] for _ in self.modules]
        handles, replaced = [], []
        for i, module in enumerate(self.modules):
            def record(x, out, i=i):
                inputs[i].append(x.detach().clone())
                delta = torch.zeros_like(out, requires_grad=True)
                probes[i].append(delta)
                return out + delta

            def hook(mod, args, out, record=record):
                if not args or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
                    raise NotApplicableError(
                        f"layer {type(mod).__name__} was called without one tensor input"
                    )
                return record(args[0], out)

            if self.geometries[i].attention:
                module.forward = functools.partial(attention_forward, module, record)
                replaced.append(module)
            else:
                handles.append(module.register_forward_hook(hook))
        try:
            with torch.enable_grad():
                out = self.problem.f(selected, x)
        finally:
            for h in handles:
                h.remove()
            for module in replaced:
                del module.forward
        return out, inputs, probes

    def _verify(self, x: torch.Tensor) -> list[int]:
        """Check the decomposition against autograd on the probe examples; return call counts.

        With ``u`` a random combination of the first example's outputs, one backward pass
        gives the layers' cotangents: those of the other examples must vanish (each layer
        treats examples independently, batch axis first). Then the derivative of ``u·f``
        along a random direction ``V`` of the selected parameters (rank one per weight,
        ``V_W = r sᵀ``) is computed twice: as ``⟨∇_w(u·f), V⟩`` by autograd through the
        model, and from the first example's captured layer inputs and cotangents as
        ``Σ_p (rᵀ g_p)(sᵀ ã_p)``. A parameter used outside its layers, or a layer computing
        something else than modelled, makes them differ (with probability one).
        """
        problem = self.problem
        out, inputs, probes = self._forward(x, problem.selected)
        calls = [len(c) for c in inputs]
        for term in self.terms:
            if term.kind == "rest":
                continue
            term.uses = [(m, c) for m, _ in term.uses for c in range(calls[m])]
            if not term.uses:
                raise NotApplicableError(f"the layer holding {term.names[0]!r} is never called")
            term.shape["R"] = sum(inputs[m][c][0].numel() for m, c in term.uses)
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
            if term.kind == "rest":  # not rebuilt from layers: no direction along it
                continue
            if term.kind in ("bias", "scale"):
                jac = term_features(self.geometries, term, inputs, per_call, "jac", keep=0).reshape(-1)
                name = term.names[0]
                if jac.numel() != problem.selected[name].numel():
                    raise NotApplicableError(f"parameter {name!r} does not fit its layer's shape")
                v = draw(jac.numel())
                tangents[name] = v.reshape(problem.selected[name].shape)
                part = float(jac @ v)
            else:
                a, g = term_features(self.geometries, term, inputs, per_call, "gram", keep=0)
                a, g = a[0], g[0, 0]  # (G, P, K), (G, C, P)
                G, _, K = a.shape
                C = g.shape[1]
                k_w = K - 1 if term.kind == "affine" else K
                weight = problem.selected[term.names[0]]
                if weight.numel() != G * C * k_w:
                    raise NotApplicableError(f"parameter {term.names[0]!r} does not fit its layer's shape")
                r, s_vec = draw(G, C), draw(k_w)
                direction = r.reshape(-1, 1) * s_vec  # (G·C, K) like a Linear weight
                if self.geometries[term.uses[0][0]].transposed:  # an embedding table (K, C)
                    direction = direction.T
                tangents[term.names[0]] = direction.reshape(weight.shape)
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

        # <∇_w (u·f), V> by reverse mode (plain autograd: torch.func's transforms import
        # torch._dynamo on first use, seconds of start-up)
        leaves = [problem.selected[k].detach().requires_grad_() for k in names]
        with torch.enable_grad():
            grads = torch.autograd.grad(combined(*leaves), leaves, allow_unused=True)
        true = sum(float((g * tangents[k]).sum()) for g, k in zip(grads, names)
                   if g is not None and k in tangents)
        if abs(rebuilt - true) > tol * (scale + abs(true)) + torch.finfo(out.dtype).tiny:
            raise NotApplicableError(
                "the gradients of the selected parameters are not explained by their layers' "
                "inputs and outputs (a parameter used outside its module's forward?)"
            )
        true_grads = dict(zip(names, grads))
        for term in self.terms:
            if term.kind == "rest":
                term.form = "vmap"
                for lead in range(BATCHED_LEADS):  # (b, 1, ..., 1, *shape): where it broadcasts
                    term.shape["lead"] = lead
                    if self._batched_ok(term, x, out, weights, true_grads[term.names[0]], tol):
                        term.form = "batched"
                        break
        return calls

    def batched_leaf(self, term: Term, b: int) -> torch.Tensor:
        """A leaf ``(b, 1, ..., 1, *shape)`` (``term.shape["lead"]`` ones) holding the rest
        term's parameter once per example."""
        value = self.problem.selected[term.names[0]].detach()
        shape = (b, *(1,) * term.shape.get("lead", 0), *value.shape)
        return value.reshape(shape[1:]).unsqueeze(0).expand(shape).clone().requires_grad_()

    def _batched_ok(self, term: Term, x, out: torch.Tensor, weights: torch.Tensor,
                    true: torch.Tensor | None, tol: float) -> bool:
        """Whether the forward works unchanged with parameter ``name`` given once per
        example (``(b, *shape)``, as an offset added to a batched tensor broadcasts), so that
        one batched backward gives its per-example gradients ("batched" rest term).

        Checked on the probe: the same outputs, the gradient of the first example's
        combination ``u·f`` zero on the other examples' copies and equal, on the first
        one's, to the parameter's own gradient (autograd through the unchanged forward).
        """
        problem, out, name = self.problem, out.detach(), term.names[0]
        leaf = self.batched_leaf(term, len(x))
        try:
            with torch.enable_grad():
                again = problem.f({**problem.selected, name: leaf}, x)
                (g,) = torch.autograd.grad((again * weights).sum(), leaf, allow_unused=True)
        except Exception:  # the forward cannot take it (shape errors, ...): per-example Jacobians
            return False
        size = float(out.abs().max()) + torch.finfo(out.dtype).tiny
        if again.shape != out.shape or float((again.detach() - out).abs().max()) > tol * size:
            return False
        g = torch.zeros_like(leaf) if g is None else g
        true = torch.zeros_like(leaf[0]) if true is None else true.reshape(leaf.shape[1:])
        scale = float(true.abs().max()) + float(g.abs().max()) + torch.finfo(out.dtype).tiny
        others = float(g[1:].abs().max()) if g.shape[0] > 1 else 0.0
        return float((g[0] - true).abs().max()) <= tol * scale and others <= tol * scale

    def _choose_forms(self, n1: int, n2: int, output: str) -> None:
        """Per weight term: Gram form or per-layer Jacobian, whichever needs fewer flops; and
        what a feature block keeps: the per-example Jacobians when they take less memory than
        the layer's inputs and cotangents (and are contracted as such), else those."""
        o = self.n_out
        o_pair = o * o if output == "full" else o
        pairs, examples = n1 * n2, n1 + n2
        for term in self.terms:
            if term.kind in ("bias", "scale", "rest"):
                term.store = "jac"
                continue
            s = term.shape
            G, P, K, C = s["G"], s["P"], s["K"], s["C"]
            gram = pairs * G * P * P * (2 * K + 2 * o_pair * C + 2 * o_pair)
            jac = examples * 2 * o * G * C * P * K + pairs * 2 * o_pair * G * C * K
            term.form = "gram" if gram <= jac else "jac"
            kept_a = s["R"] if len(term.uses) == 1 else G * P * K
            small = o * G * C * K <= kept_a + o * G * C * P
            term.store = "jac" if term.form == "jac" and small else "ag"
