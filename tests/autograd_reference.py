"""The naive per-example Jacobian: one autograd pass per example and output (test reference)."""

from __future__ import annotations

import torch


def per_example_jacobian(model, x) -> torch.Tensor:
    """``(n, o, P)``: ``∂ model(x_i)_k / ∂θ`` with all parameters flattened in order, by one
    ``torch.autograd.grad`` per example ``i`` and output ``k`` (no batching, no vmap)."""
    params = list(model.parameters())
    rows = []
    for xi in x:
        out = model(xi[None]).reshape(-1)
        rows.append(torch.stack([
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[k], params, retain_graph=True)])
            for k in range(out.numel())]))
    return torch.stack(rows).detach()
