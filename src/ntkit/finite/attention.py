"""Finite self-attention that :class:`ntkit.infinite.attention.GlobalSelfAttention` builds.

NTK parameterization, the formulas of :mod:`ntkit.infinite.attention` (neural-tangents'
``GlobalSelfAttention``; Hron et al. 2020). Inputs are channels first, ``(n, C, *S)``;
masks are boolean ``(n, *S)`` with ``True`` = position absent.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ShapeError


def attention_weights(logits: torch.Tensor, mechanism: str, mask: torch.Tensor | None) -> torch.Tensor:
    """``mech(logits)`` over the last axis (the keys); ``mask (…, P)`` True = absent key.

    Absent keys get weight 0: ``-inf`` before the softmax, 0 after the other mechanisms.
    """
    if mask is not None:
        mask = mask.unsqueeze(-2)
        if mechanism == "softmax":
            logits = logits.masked_fill(mask, float("-inf"))
        else:
            logits = logits.masked_fill(mask, 0.0)
    if mechanism == "softmax":
        return torch.softmax(logits, dim=-1)
    if mechanism == "abs":
        return logits.abs()
    if mechanism == "relu":
        return logits.clamp(min=0)
    return logits



class GlobalSelfAttentionModule(nn.Module):
    """Multi-head self-attention over all positions, NTK parameterization.

    Built from a :class:`~ntkit.infinite.attention.GlobalSelfAttention` ``layer`` for
    ``in_channels`` input channels at ``spatial`` positions; ``pos_cov`` is the position
    covariance ``R (P, P)`` of the embeddings (``None``: no embeddings). Parameters, all
    ``N(0, 1)``: ``key (H, C_k, d_k)``, ``query`` (only without linear scaling),
    ``value (H, C_v, d_v)``, ``out (H·d_v, C_out)``, ``bias (C_out,)``, ``pos_emb (P, C)``
    (``C_k``/``C_v`` count the concatenated embedding channels where they are fed).
    ``forward(x, mask=None)``: ``x (n, C, *S)``, ``mask (n, *S)`` bool, True = absent key.
    Returns ``(n, C_out, *S)``. The formulas are those of :mod:`ntkit.infinite.attention`.
    """

    takes_mask = True

    def __init__(self, in_channels: int, layer, *, spatial, pos_cov, generator, dtype) -> None:
        super().__init__()
        self.in_channels, self.spatial = in_channels, tuple(spatial)
        self.linear_scaling = layer.linear_scaling
        self.mechanism = layer.attention_mechanism
        self.pos_emb_type, self.val_pos_emb = layer.pos_emb_type, layer.val_pos_emb
        self.qk_std = layer.W_query_std * layer.W_key_std
        self.ov_std = layer.W_out_std * layer.W_value_std
        self.b_std = layer.b_std
        heads, d_k, d_v = layer.n_heads, layer.n_chan_key, layer.n_chan_val
        c_keys = c_vals = in_channels
        if self.pos_emb_type == "concat":
            c_keys += in_channels
            if self.val_pos_emb:
                c_vals += in_channels

        def draw(*shape):
            return nn.Parameter(torch.randn(*shape, generator=generator, dtype=dtype))

        p = math.prod(self.spatial)
        self.key = draw(heads, c_keys, d_k)
        self.query = None if self.linear_scaling else draw(heads, c_keys, d_k)
        self.value = draw(heads, c_vals, d_v)
        self.out = draw(heads * d_v, layer.n_chan_out)
        self.bias = draw(layer.n_chan_out) if self.b_std is not None else None
        self.pos_emb = draw(p, in_channels) if self.pos_emb_type != "none" else None
        if pos_cov is not None and not torch.equal(pos_cov, torch.eye(p, dtype=pos_cov.dtype)):
            self.register_buffer("pos_factor", torch.linalg.cholesky(pos_cov.to(dtype)))
        else:
            self.pos_factor = None
        self.d_k = d_k

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, c = x.shape[:2]
        if x.ndim < 3 or c != self.in_channels or tuple(x.shape[2:]) != self.spatial:
            raise ShapeError(
                f"GlobalSelfAttention module expects inputs (n, {self.in_channels}, "
                f"{', '.join(map(str, self.spatial))}), got {tuple(x.shape)}"
            )
        tokens = x.reshape(n, c, -1).transpose(1, 2)  # (n, P, C)
        flat_mask = None if mask is None else mask.reshape(n, -1)
        keys_in = vals_in = tokens
        if self.pos_emb is not None:
            emb = self.pos_emb if self.pos_factor is None else self.pos_factor @ self.pos_emb
            emb = emb.expand(n, *emb.shape)
            if flat_mask is not None:
                emb = emb.masked_fill(flat_mask[..., None], 0.0)
            keys_in = tokens + emb if self.pos_emb_type == "sum" else torch.cat([tokens, emb], dim=-1)
            if self.val_pos_emb:
                vals_in = keys_in
        keys = torch.einsum("npc,hcd->hnpd", keys_in, self.key)
        queries = keys if self.query is None else torch.einsum("npc,hcd->hnpd", keys_in, self.query)
        scale = self.d_k if self.linear_scaling else math.sqrt(self.d_k)
        logits = queries @ keys.transpose(-1, -2) * (self.qk_std / (keys_in.shape[-1] * scale))
        weights = attention_weights(logits, self.mechanism, flat_mask)
        values = torch.einsum("npc,hcd->hnpd", vals_in, self.value)
        heads = (weights @ values).permute(1, 2, 0, 3).reshape(n, tokens.shape[1], -1)  # (n, P, H·d_v)
        norm = self.ov_std / math.sqrt(heads.shape[-1] * vals_in.shape[-1])
        out = heads @ self.out * norm
        if self.bias is not None:
            out = out + self.b_std * self.bias
        return out.transpose(1, 2).reshape(n, -1, *self.spatial)
