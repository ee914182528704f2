"""Blocks of the empirical NTK by Jacobian contraction and by NTK-vector products.

Both return the full block ``(b1, b2, o, o)`` or its trace ``(b1, b2)`` for a pair of example
blocks; :mod:`ntkit.empirical.core` tiles the pair grid.

- Jacobian contraction: per-example Jacobians ``J (b, o, P)`` by ``vmap(jacrev)``, then
  ``J1 J2ᵀ`` — cost ``N·O·[FP] + N²·O²·P``, memory ``b·O·P``.
- NTK-vector products: for each column example and output, ``v = J2ᵀ e`` by a VJP, then the
  column ``J1 v`` by a JVP (forward mode) — cost ``N²·O·[FP]``, never holding ``J1``.
  (Novak et al. 2022, "Fast finite width neural tangent kernel".)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jacrev, jvp, vjp, vmap


def _per_example(fn: Callable, params: dict) -> Callable:
    def single(p: dict, x: torch.Tensor) -> torch.Tensor:
        return fn(p, x[None]).reshape(-1)

    return single


def jacobian(fn: Callable, params: dict, x: torch.Tensor) -> torch.Tensor:
    """Per-example Jacobians flattened to ``(n, o, P)``."""
    jac = vmap(jacrev(_per_example(fn, params)), in_dims=(None, 0))(params, x)
    n = x.shape[0]
    return torch.cat([j.reshape(n, j.shape[1], -1) for j in jac.values()], dim=2)


def contract(j1: torch.Tensor, j2: torch.Tensor, full: bool) -> torch.Tensor:
    """``(b1, b2, o, o)`` if ``full`` else the trace ``(b1, b2)`` of ``J1 J2ᵀ``."""
    if full:
        return torch.einsum("iap,jbp->ijab", j1, j2)
    return j1.reshape(j1.shape[0], -1) @ j2.reshape(j2.shape[0], -1).T


def jacobian_block(fn, params, x1, x2, full: bool) -> torch.Tensor:
    j1 = jacobian(fn, params, x1)
    j2 = j1 if x2 is None else jacobian(fn, params, x2)
    return contract(j1, j2, full)


def ntk_vp_block(fn, params, x1, x2, full: bool) -> torch.Tensor:
    """NTK columns ``J1 (J2ᵀ e_{j,o'})`` for every column example ``j`` and output ``o'``."""
    x2 = x1 if x2 is None else x2
    single = _per_example(fn, params)
    n_out = single(params, x2[0]).numel()
    basis = torch.eye(n_out, dtype=x2.dtype, device=x2.device)

    def column(xj: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        _, pullback = vjp(lambda p: single(p, xj), params)
        (tangent,) = pullback(e)
        _, out = jvp(lambda p: fn(p, x1).reshape(x1.shape[0], -1), (params,), (tangent,))
        return out  # (b1, o)

    per_output = vmap(column, in_dims=(None, 0))
    cols = vmap(per_output, in_dims=(0, None))(x2, basis)  # (b2, o', b1, o)
    block = cols.permute(2, 0, 3, 1)  # (b1, b2, o, o')
    return block if full else block.diagonal(dim1=2, dim2=3).sum(-1)
