"""``nn.MultiheadAttention`` seen by the structured path: two linear maps around attention.

Self-attention (``query is key is value``) with packed projection weights computes
(torch's ``F.multi_head_attention_forward``; Vaswani et al. 2017, eq. 1 and §3.2.2)

    [q, k, v] = x W_inᵀ + b_in                      (one linear map, 3E outputs per position)
    head_h = softmax(q_h k_hᵀ / √d + mask) v_h      (d = E / heads)
    y = concat_h(head_h) W_outᵀ + b_out             (``out_proj``, an ``nn.Linear``)

so ``in_proj_weight``/``in_proj_bias`` are a linear layer applied at every position, whose
input ``x`` and output cotangents the structured path records, and ``out_proj`` is called as
the module it is (its hooks fire). :func:`attention_forward` is that computation, written so
that the in-projection's output passes through a ``record`` callback; it is used only while
the structured path captures features, and its result is checked against torch's own
forward by the path's verification (:mod:`._structured_plan`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ._layer_adapters import NotApplicableError


def supported(module: nn.Module) -> bool:
    """Whether :func:`attention_forward` computes this module's forward."""
    return (type(module).forward is nn.MultiheadAttention.forward
            and "forward" not in module.__dict__
            and module._qkv_same_embed_dim and module.in_proj_weight is not None
            and module.bias_k is None and not module.add_zero_attn
            and (module.dropout == 0.0 or not module.training))


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)
    return mask.to(dtype)


def attention_forward(module: nn.MultiheadAttention, record: Callable, query, key, value,
                      key_padding_mask=None, need_weights=True, attn_mask=None,
                      average_attn_weights=True, is_causal=False):
    """``module(query, key, value, ...)`` with the in-projection's output passed through
    ``record(x (N, L, E), projection (N, L, 3E)) -> projection``."""
    if not (query is key and key is value):
        raise NotApplicableError("nn.MultiheadAttention with different query, key and value "
                                 "(cross-attention) is not covered by the structured path")
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint")
    batched = query.dim() == 3
    x = query if batched else query.unsqueeze(1)
    if batched and module.batch_first:
        x = x.transpose(0, 1)
    x = x.transpose(0, 1)  # (N, L, E): examples first
    n, length, e = x.shape
    heads = module.num_heads
    d = e // heads
    proj = record(x, F.linear(x, module.in_proj_weight, module.in_proj_bias))
    q, k, v = (t.reshape(n, length, heads, d).transpose(1, 2) for t in proj.chunk(3, dim=-1))
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)  # (N, H, L, L)
    mask = _additive(attn_mask, scores.dtype)
    if mask is not None:
        scores = scores + (mask.reshape(n, heads, length, length) if mask.dim() == 3 else mask)
    pad = _additive(key_padding_mask, scores.dtype)
    if pad is not None:
        scores = scores + pad.reshape(n, 1, 1, length)
    attn = torch.softmax(scores, dim=-1)
    out = torch.matmul(attn, v).transpose(1, 2).reshape(n, length, e)
    out = module.out_proj(out)
    out = out.transpose(0, 1)  # (L, N, E)
    if batched and module.batch_first:
        out = out.transpose(0, 1)
    if not batched:
        out = out.squeeze(1)
    if not need_weights:
        return out, None
    weights = attn.mean(dim=1) if average_attn_weights else attn
    return out, weights if batched else weights.squeeze(0)
