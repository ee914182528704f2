"""Structured empirical NTK for networks whose parameters all sit in affine layers.

For an affine layer ``z = s_W·W a + s_b·b`` used once per forward on ``(n, features)``
inputs, ``∂f_o/∂W = s_W g_o aᵀ`` and ``∂f_o/∂b = s_b g_o``, where ``g_o = ∂f_o/∂z``. Hence
its NTK contribution is ``(s_W² <a, a'> + s_b²) · <g_o, g'_o'>``: products of an input Gram
and a back-propagated output Gram, never a per-example Jacobian (the "structured
derivatives" idea of Novak et al. 2022). ``O`` backward passes give every ``g_o``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..finite import NTKDense


def _scales(module: nn.Module) -> tuple[float, float]:
    """``(s_W, s_b)`` of the layer's forward in terms of its stored parameters."""
    if isinstance(module, NTKDense) and module.parameterization == "ntk":
        return float(module.W_std) / math.sqrt(module.in_features), float(module.b_std or 0.0)
    return 1.0, 1.0


def supported_layers(model: nn.Module, selected: dict) -> list[tuple[str, nn.Module]] | None:
    """The affine layers holding every selected parameter, or ``None`` if some is elsewhere."""
    layers = []
    covered = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, NTKDense)):
            own = [f"{name}.{p}" if name else p for p in ("weight", "bias")]
            if any(k in selected for k in own):
                layers.append((name, module))
                covered.update(k for k in own if k in selected)
    return layers if covered == set(selected) else None


def structured_features(model, layers, selected, x):
    """Per layer: input activations ``(n, in)`` and output gradients ``(O, n, out)``.

    ``None`` if the structure does not hold (a layer called twice, or on non-2-D inputs).
    """
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    handles = []
    for name, module in layers:
        def hook(mod, args, out, name=name):
            calls[name] = calls.get(name, 0) + 1
            inputs[name] = args[0].detach()
            out.retain_grad()
            outputs[name] = out
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            x = x.detach()
            # Gradients must reach the layer outputs; make the weights require grad locally.
            flags = {k: p.requires_grad for k, p in model.named_parameters()}
            for k, p in model.named_parameters():
                p.requires_grad_(k in selected or flags[k])
            try:
                out = model(x)
            finally:
                for k, p in model.named_parameters():
                    p.requires_grad_(flags[k])
            out = out.reshape(x.shape[0], -1)
            if any(c != 1 for c in calls.values()) or any(v.ndim != 2 for v in inputs.values()):
                return None
            grads = {name: [] for name, _ in layers}
            for o in range(out.shape[1]):
                for t in outputs.values():
                    t.grad = None
                out[:, o].sum().backward(retain_graph=o + 1 < out.shape[1])
                for name, t in outputs.items():
                    grads[name].append(t.grad.detach().clone())
    finally:
        for h in handles:
            h.remove()
    return {name: (inputs[name], torch.stack(grads[name])) for name, _ in layers}


def structured_block(layers, selected, feats1, feats2, full: bool) -> torch.Tensor:
    """The NTK block from the captured features of rows and columns."""
    total = None
    for name, module in layers:
        a1, g1 = feats1[name]
        a2, g2 = feats2[name]
        s_w, s_b = _scales(module)
        prefix = f"{name}." if name else ""
        left = torch.zeros(a1.shape[0], a2.shape[0], dtype=a1.dtype, device=a1.device)
        if prefix + "weight" in selected:
            left = left + (s_w * s_w) * (a1 @ a2.T)
        if prefix + "bias" in selected and module.bias is not None:
            left = left + s_b * s_b
        if full:
            gram = torch.einsum("aiw,bjw->ijab", g1, g2)
            term = left[:, :, None, None] * gram
        else:
            flat1 = g1.permute(1, 0, 2).reshape(g1.shape[1], -1)
            flat2 = g2.permute(1, 0, 2).reshape(g2.shape[1], -1)
            term = left * (flat1 @ flat2.T)
        total = term if total is None else total + term
    return total
