"""Global self-attention of infinitely many heads and channels (Hron et al. 2020).

The finite layer (neural-tangents' ``stax.GlobalSelfAttention``, NTK parameterization): for
inputs ``x`` with ``C`` channels at ``P`` positions, ``H`` heads with key/query maps
``W_K, W_Q ∈ R^{C×d_k}`` and value maps ``W_V ∈ R^{C×d_v}`` (all ``N(0, 1)``),

    G_h = mech(QK_std · (x W_Q^h)(x W_K^h)ᵀ / (C·d_k^s)),   s = 1 ("linear scaling") or 1/2,
    f   = [G_1 x W_V^1, …, G_H x W_V^H] W_O · OV_std/√(d_v·H·C) + b_std·b,

with ``QK_std = W_query_std·W_key_std``, ``OV_std = W_out_std·W_value_std``, ``mech`` a
softmax over the key positions, the identity, ``|·|`` or ReLU. With ``linear_scaling=True``
the query and key maps are tied (``W_Q = W_K``) and, as ``C, d_k, d_v·H → ∞``, the attention
weights converge to the deterministic ``G(x)[p, p'] = mech(QK_std·Σ_x[p, p'])`` of the input
covariance ``Σ_x`` of the example with itself (Hron et al. 2020, Sec. 3, "linear scaling";
neural-tangents' kernel). The kernels then map, for the full spatial covariances of a pair,

    nngp' = OV_std²·G(x) nngp G(x')ᵀ + b_std²,
    ntk'  = OV_std²·G(x) ntk G(x')ᵀ + 2·OV_std²·G(x) nngp G(x')ᵀ + b_std²

(the values and the output map each contribute the NNGP term; the key/query gradients
vanish in the limit).

Positional embeddings (``pos_emb_type="sum"``/``"concat"``): random embeddings ``e`` with
position covariance ``R[p, p'] = decay(Σ_axes |p_a − p'_a|^p_norm)`` (``decay=None``: the
identity ``R = I``), shared by all examples and trainable, added to (``"sum"``) or concatenated
with (``"concat"``, as many channels as the input) the inputs of the keys and queries (and of
the values when ``val_pos_emb=True``). Their covariances enter as
``w_x·Σ + w_e·R`` with ``(w_x, w_e) = (1, 1)`` for ``"sum"`` and ``(1/2, 1/2)`` for ``"concat"``.

Masks: absent key positions get weight 0 (``-inf`` before the softmax), so masked positions
are excluded from attention exactly as neural-tangents' ``mask_constant`` mechanism does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import nn

from .._validation import check_choice, check_nonnegative, check_positive_int
from ..errors import ParameterError, ShapeError
from ..finite.attention import GlobalSelfAttentionModule, attention_weights
from .conv import is_zero_constant
from .layers import Layer, Shape, State, require_single
from .pooling import _require_full, _self_indices
from .state import KernelState, absent

MECHANISMS = ("softmax", "identity", "abs", "relu")
POS_EMB_TYPES = ("none", "sum", "concat")


def position_covariance(
    spatial: tuple[int, ...],
    p_norm: float,
    decay_fn: Callable | None,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``R (P, P)``: ``decay(Σ_a |p_a − p'_a|^p_norm)`` over the positions (row-major), or ``I``."""
    p = math.prod(spatial)
    if decay_fn is None:
        return torch.eye(p, dtype=dtype, device=device)
    coords = torch.tensor(list(itertools.product(*[range(n) for n in spatial])), dtype=dtype, device=device)
    dist = (coords[:, None, :] - coords[None, :, :]).abs().pow(p_norm).sum(-1)
    out = decay_fn(dist)
    return torch.as_tensor(out, dtype=dtype, device=device).reshape(p, p)


class Groups:
    """The pairs of a flat pair list grouped by the example whose weights they use.

    ``index (N,)``: for every pair, the row of the weights tensor to use. ``order`` sorts
    the pairs by it, ``bounds`` lists ``(row, start, end)`` of each run in that order.
    When the pairs already come in runs of equal rows (the left examples of the engine's
    pair lists), ``order`` is ``None`` and the runs are used as they are (no gather and
    scatter of the pair tensors).
    """

    def __init__(self, index: torch.Tensor) -> None:
        rows, counts = torch.unique_consecutive(index, return_counts=True)
        self.order = None  # the pairs' own order: runs of equal rows as they come
        if rows.numel() > 2 * torch.unique(rows).numel():  # scattered: sort (gather + scatter)
            self.order = torch.argsort(index, stable=True)
            rows, counts = torch.unique_consecutive(index[self.order], return_counts=True)
        ends = counts.cumsum(0).tolist()
        starts = [0, *ends[:-1]]
        self.bounds = list(zip(rows.tolist(), starts, ends))


def sandwich(g: torch.Tensor, left: Groups, right: Groups, t: torch.Tensor) -> torch.Tensor:
    """``out[k] = g[l_k] @ t[k] @ g[r_k]ᵀ`` for ``t (N, P, P)``, ``g (U, P, P)``.

    Pairs that share an example share its weights, so each example's weights multiply all
    of its pairs in one ``(m·P, P) @ (P, P)`` product (batched ``P×P`` products are many
    times slower for small ``P``).
    """
    p = t.shape[-1]

    def right_multiply(a: torch.Tensor, groups: Groups) -> torch.Tensor:
        """``a[k] @ g[groups_k]ᵀ`` for every ``k``."""
        ordered = (a if groups.order is None else a[groups.order]).contiguous()
        out = torch.empty_like(ordered, memory_format=torch.contiguous_format)
        for row, s, e in groups.bounds:
            torch.matmul(ordered[s:e].reshape(-1, p), g[row].T, out=out[s:e].view(-1, p))
        if groups.order is None:
            return out
        result = torch.empty_like(out)
        result[groups.order] = out
        return result

    u = right_multiply(t, right)                            # t[k] g[r_k]ᵀ
    v = right_multiply(u.transpose(1, 2).contiguous(), left)  # (g[l_k] u[k])ᵀ
    return v.transpose(1, 2)


class GlobalSelfAttention(Layer):
    """Scaled dot-product self-attention over all positions (Hron et al. 2020).

    Inputs ``(n, C, *S)``: sequences ``(n, C, T)``, images ``(n, C, H, W)`` (attention over
    all ``H·W`` positions); output ``(n, n_chan_out, *S)``.

    Args:
        n_chan_out: output channels.
        n_chan_key: key/query channels **per head** (as in neural-tangents; so any
            ``n_heads`` works, no divisibility is needed).
        n_chan_val: value channels per head.
        n_heads: number of heads.
        linear_scaling: ``True`` scales the key-query products by ``1/n_chan_key`` and ties
            the key and query maps, which makes the kernel a closed form (module
            docstring); ``False`` scales by ``1/√n_chan_key`` with independent maps: the
            kernel is a closed form for ``attention_mechanism="identity"`` without
            positional embeddings or masks only (see ``_sqrt_identity``; others raise),
            the finite module exists for all.
        W_key_std, W_query_std: enter the kernel only through their product.
        W_value_std, W_out_std: enter the kernel only through their product.
        b_std: output bias scale (``None``: no bias).
        attention_mechanism: ``"softmax"``, ``"identity"``, ``"abs"`` or ``"relu"``.
        pos_emb_type: ``"none"``, ``"sum"`` or ``"concat"`` (module docstring).
        pos_emb_p_norm, pos_emb_decay_fn: position covariance
            ``decay_fn(Σ_a |p_a − p'_a|^p_norm)`` (a function of a tensor of distances);
            ``None``: the identity (independent embeddings per position).
        val_pos_emb: also feed the positional embeddings to the values.

    Kernel: module docstring; needs the full spatial covariance (evaluated on the pair
    list of :mod:`ntkit.infinite.pairs`, as pooling). The kernel does not depend on the
    channel and head counts, which set the finite module's widths.

    Raises:
        ParameterError: bad counts, stds or names.
        ShapeError: flat ``(n, d)`` inputs (no positions to attend over).
        ParameterError: ``linear_scaling=False`` in :meth:`kernel` with a mechanism other
            than ``"identity"`` or with positional embeddings (no closed form).
    """

    has_parameters = True

    handles_masks = True

    def __init__(
        self,
        n_chan_out: int,
        n_chan_key: int,
        n_chan_val: int,
        n_heads: int,
        linear_scaling: bool = True,
        W_key_std: float = 1.0,
        W_value_std: float = 1.0,
        W_query_std: float = 1.0,
        W_out_std: float = 1.0,
        b_std: float | None = None,
        attention_mechanism: str = "softmax",
        pos_emb_type: str = "none",
        pos_emb_p_norm: float = 2,
        pos_emb_decay_fn: Callable | None = None,
        val_pos_emb: bool = False,
    ) -> None:
        self.n_chan_out = check_positive_int(n_chan_out, "n_chan_out")
        self.n_chan_key = check_positive_int(n_chan_key, "n_chan_key")
        self.n_chan_val = check_positive_int(n_chan_val, "n_chan_val")
        self.n_heads = check_positive_int(n_heads, "n_heads")
        self.linear_scaling = bool(linear_scaling)
        for value, name in ((W_key_std, "W_key_std"), (W_value_std, "W_value_std"),
                            (W_query_std, "W_query_std"), (W_out_std, "W_out_std")):
            check_nonnegative(value, name)
        check_nonnegative(b_std, "b_std", allow_none=True)
        self.W_key_std, self.W_value_std = float(W_key_std), float(W_value_std)
        self.W_query_std, self.W_out_std = float(W_query_std), float(W_out_std)
        self.b_std = None if b_std is None else float(b_std)
        self.attention_mechanism = check_choice(
            str(attention_mechanism).lower(), "attention_mechanism", MECHANISMS)
        self.pos_emb_type = check_choice(str(pos_emb_type).lower(), "pos_emb_type", POS_EMB_TYPES)
        check_nonnegative(pos_emb_p_norm, "pos_emb_p_norm")
        self.pos_emb_p_norm = float(pos_emb_p_norm)
        if pos_emb_decay_fn is not None and not callable(pos_emb_decay_fn):
            raise ParameterError(f"pos_emb_decay_fn must be a function or None, got {pos_emb_decay_fn!r}")
        self.pos_emb_decay_fn = pos_emb_decay_fn
        self.val_pos_emb = bool(val_pos_emb)

    def needs_full_spatial(self) -> bool:
        return True

    # ------------------------------------------------------------------ helpers
    def _weights(self) -> tuple[float, float]:
        """``(w_x, w_e)``: weights of the input and embedding covariances (module docstring)."""
        if self.pos_emb_type == "sum":
            return 1.0, 1.0
        if self.pos_emb_type == "concat":
            return 0.5, 0.5
        return 1.0, 0.0

    def _check_positions(self, spatial: tuple[int, ...]) -> None:
        if not spatial:
            raise ShapeError(
                "GlobalSelfAttention attends over positions but got flat (n, d) inputs with no "
                "positions; give sequences (n, C, T) or images (n, C, H, W) (e.g. "
                "x.reshape(n, C, T), or x[:, :, None] for a single token)"
            )

    # ------------------------------------------------------------------ kernel
    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        self._check_positions(state.spatial)
        if not self.linear_scaling:
            if self.attention_mechanism != "identity":
                raise ParameterError(
                    f"GlobalSelfAttention(linear_scaling=False, attention_mechanism="
                    f"{self.attention_mechanism!r}) has no closed-form infinite-width kernel "
                    "(Hron et al. 2020; neural-tangents raises too); use linear_scaling=True or "
                    "attention_mechanism='identity' (the finite module of every kind is available "
                    "through arch.build)"
                )
            return self._sqrt_identity(state)
        _require_full(state, self)
        i1, i2 = _self_indices(state, self)
        n = state.nngp.shape[0]
        p = math.prod(state.spatial)
        flat = state.nngp.reshape(n, p, p)
        w_x, w_e = self._weights()
        r = None
        if self.pos_emb_type != "none":
            r = position_covariance(state.spatial, self.pos_emb_p_norm, self.pos_emb_decay_fn,
                                    flat.dtype, flat.device)

        # Attention weights of every example that occurs, from its covariance with itself.
        occurring, inverse = torch.unique(torch.cat([i1, i2]), return_inverse=True)
        own = flat[occurring]
        if r is not None:
            own = w_x * own + w_e * r
        mask = absent(state, True)
        mask = None if mask is None else mask.reshape(n, p)[occurring]
        qk = self.W_query_std * self.W_key_std
        g = attention_weights(qk * own, self.attention_mechanism, mask)
        left, right = Groups(inverse[:n]), Groups(inverse[n:])

        def weigh(t: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
            if extra is not None:
                t = w_x * t + w_e * extra
            return sandwich(g, left, right, t)

        ov2 = (self.W_out_std * self.W_value_std) ** 2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        values = r if self.val_pos_emb else None
        mixed = weigh(flat, values).mul_(ov2)  # OV²·G nngp Gᵀ
        nngp = mixed + b2 if b2 else mixed
        ntk = None
        if state.ntk is state.nngp and values is None:
            # ntk = nngp (e.g. after the first Dense): OV²·G ntk Gᵀ is `mixed` itself.
            ntk = mixed * 3.0
            if b2:
                ntk.add_(b2)
        elif state.ntk is not None:
            ntk = mixed * 2.0
            if b2:
                ntk.add_(b2)
            if not is_zero_constant(state.ntk) or values is not None:
                ntk_flat = state.ntk.reshape(n, p, p)
                if is_zero_constant(state.ntk):
                    ntk_flat = torch.zeros((), dtype=flat.dtype, device=flat.device).expand(n, p, p)
                ntk = ntk + ov2 * weigh(ntk_flat, values)
        spatial = state.spatial
        diagonal = nngp.diagonal(dim1=1, dim2=2)
        diag1 = diagonal[i1].reshape(n, *spatial)
        diag2 = diag1 if i2 is i1 else diagonal[i2].reshape(n, *spatial)
        shape = (n, *spatial, *spatial)
        return state.replace(
            nngp=nngp.reshape(shape),
            ntk=None if ntk is None else ntk.reshape(shape),
            var1=diag1,
            var2=diag2,
            width=self.n_chan_out,
            fresh=True,
        )

    def _sqrt_identity(self, state: KernelState) -> KernelState:
        """``1/√d_k`` scaling, identity mechanism (Hron et al. 2020; neural-tangents' form).

        With ``D = Σ_{p,p'} nngp[p, p']²`` (the pair's covariance contracted with itself) and
        ``E = Σ_{p,p'} nngp[p, p']·ntk[p, p']``, ``std = QK_std·OV_std``:
        ``nngp' = std²·D·nngp + b²``, ``ntk' = std²·(2E·nngp + D·(ntk + 4·nngp)) + b²``.
        Only without positional embeddings and masks (they raise).
        """
        if self.pos_emb_type != "none":
            raise ParameterError(
                "GlobalSelfAttention(linear_scaling=False) is implemented without positional "
                "embeddings only; use pos_emb_type='none' or linear_scaling=True"
            )
        if absent(state, True) is not None or absent(state, False) is not None:
            raise ShapeError(
                "GlobalSelfAttention(linear_scaling=False) cannot honour masks; use "
                "linear_scaling=True with masks"
            )
        _require_full(state, self)
        i1, i2 = _self_indices(state, self)
        n = state.nngp.shape[0]
        p = math.prod(state.spatial)
        flat = state.nngp.reshape(n, p, p)
        std2 = (self.W_query_std * self.W_key_std * self.W_out_std * self.W_value_std) ** 2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        d = (flat * flat).sum((1, 2))[:, None, None]
        nngp = flat * (std2 * d) + b2
        ntk = None
        if state.ntk is not None:
            t = state.ntk.reshape(n, p, p)
            e = (flat * t).sum((1, 2))[:, None, None]
            ntk = std2 * (2.0 * e * flat + d * (t + 4.0 * flat)) + b2
        diagonal = nngp.diagonal(dim1=1, dim2=2)
        diag1 = diagonal[i1].reshape(n, *state.spatial)
        diag2 = diag1 if i2 is i1 else diagonal[i2].reshape(n, *state.spatial)
        shape = (n, *state.spatial, *state.spatial)
        return state.replace(
            nngp=nngp.reshape(shape), ntk=None if ntk is None else ntk.reshape(shape),
            var1=diag1, var2=diag2, width=self.n_chan_out, fresh=True,
        )

    # ------------------------------------------------------------------ finite module
    def build_module(
        self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[nn.Module, Shape]:
        if not isinstance(in_shape, tuple):
            raise ShapeError(
                "GlobalSelfAttention received branches; merge them with FanInSum()/FanInConcat() first")
        spatial = tuple(in_shape[1:])
        self._check_positions(spatial)
        r = None
        if self.pos_emb_type != "none":
            r = position_covariance(spatial, self.pos_emb_p_norm, self.pos_emb_decay_fn, dtype)
        module = GlobalSelfAttentionModule(
            in_shape[0], self, spatial=spatial, pos_cov=r, generator=generator, dtype=dtype
        )
        return module, (self.n_chan_out, *spatial)
