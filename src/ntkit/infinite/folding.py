"""Linear layers at the start of an architecture, applied to each example's features once.

Before the first nonlinearity, the kernels of an architecture are Gram matrices of
per-example features: the input kernel of a pair is ``nngp = fᵢᵀ fⱼ`` with ``f = x/√C``
(``C × P`` for ``P`` positions, docs/DESIGN.md), and the NTK is 0. Each of these layers maps
Gram matrices to Gram matrices of new features, computed from one example at a time:

- ``Dense`` (NTK parameterization, number ``W_std``/``b_std``): ``nngp' = w²·nngp + b²`` is
  the Gram of ``[w·f; b·1]`` (a constant row for the bias), and ``ntk' = nngp' + w²·ntk``
  the Gram of ``[f'; w·t]`` (``t``: the NTK's features);
- ``LayerNorm``: ``nngp'[p, p'] = s(p)·nngp[p, p']·s'(p')`` scales the columns by
  ``s = 1/√(var + eps)``, from the example's own variances (the squared column norms);
- ``GlobalSelfAttention`` (linear scaling, no masks, no positional embedding of the values):
  ``nngp' = OV²·G nngp G'ᵀ`` is the Gram of ``OV·f Gᵀ`` with ``G`` the example's attention
  weights (from ``fᵀ f``, its covariance with itself), ``ntk' = OV²·G (ntk + 2·nngp) G'ᵀ``
  that of ``[OV·t Gᵀ; √2·OV·f Gᵀ]`` (Hron et al. 2020; :mod:`ntkit.infinite.attention`);
- ``Aggregate``: ``A1ᵀ nngp A2`` is the Gram of ``f A`` (Du et al. 2019);
- ``Identity``, ``FanOut``/``parallel``/``FanInSum``: branches keep their own features and
  a sum of kernels is the Gram of the stacked features.

The engine (:mod:`ntkit.infinite.pairs`) then forms each pair's full spatial covariance
from the features (one batched product per kernel) instead of running these layers on
every pair: the per-pair work of the prefix becomes per-example work. The results are
the same kernels (equal up to rounding). Anything else — activations, pooling, masks,
hyperparameters that require gradients, the standard parameterization — ends the prefix.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..errors import NtkitError
from ..finite.attention import attention_weights
from .activations import Identity
from .attention import GlobalSelfAttention, position_covariance
from .combinators import FanInSum, FanOut, ParallelLayer, SerialLayer
from .dense import Dense
from .graph import Aggregate
from .layers import Layer
from .normalization import LayerNorm
from .state import Features


def _number(value) -> bool:
    return value is None or not isinstance(value, torch.Tensor)


def _rows(f: torch.Tensor, value: float) -> torch.Tensor:
    """A constant row ``value`` (the features of a bias) for every example: ``(n, 1, P)``."""
    return f.new_full((f.shape[0], 1, f.shape[2]), value)


def _dense(layer: Dense, f: Features) -> Features | None:
    if layer.parameterization != "ntk" or not (_number(layer.W_std) and _number(layer.b_std)):
        return None
    w = float(layer.W_std)
    nngp = f.nngp * w
    if layer.b_std is not None and layer.b_std != 0:
        nngp = torch.cat([nngp, _rows(nngp, float(layer.b_std))], 1)
    ntk = nngp if f.ntk is None else torch.cat([nngp, f.ntk * w], 1)
    return Features(nngp, ntk, layer.width, f.spatial, fresh=True)


def _layer_norm(layer: LayerNorm, f: Features) -> Features | None:
    axes = layer.resolve_axes(2 + len(f.spatial))
    layer._check_count(f.width, f.spatial, axes)
    var = (f.nngp * f.nngp).sum(1).reshape(-1, *f.spatial)  # (n, *S): each position's variance
    dims = tuple(a - 1 for a in axes if a >= 2)
    if dims:
        var = var.mean(dims, keepdim=True).expand_as(var)
    m = var + layer.eps
    positive = m > 0
    s = torch.where(positive, torch.rsqrt(torch.where(positive, m, 1.0)), 0.0).reshape(-1, 1, f.nngp.shape[2])
    nngp = f.nngp * s
    ntk = nngp if f.ntk is f.nngp else (None if f.ntk is None else f.ntk * s)
    return Features(nngp, ntk, f.width, f.spatial, fresh=False)


def _attention(layer: GlobalSelfAttention, f: Features) -> Features | None:
    if not layer.linear_scaling or layer.val_pos_emb or not f.spatial:
        return None
    own = f.nngp.transpose(1, 2) @ f.nngp  # (n, P, P): each example with itself
    w_x, w_e = layer._weights()
    if layer.pos_emb_type != "none":
        r = position_covariance(f.spatial, layer.pos_emb_p_norm, layer.pos_emb_decay_fn, own.dtype,
                                own.device)
        own = w_x * own + w_e * r
    g = attention_weights(layer.W_query_std * layer.W_key_std * own, layer.attention_mechanism, None)
    ov = layer.W_out_std * layer.W_value_std
    gt = g.transpose(1, 2)
    mixed = (f.nngp @ gt).mul_(ov)
    if f.ntk is f.nngp:  # ntk = nngp: OV²·G (ntk + 2·nngp) G'ᵀ = 3·OV²·G nngp G'ᵀ
        ntk_parts = [mixed * math.sqrt(3.0)]
    elif f.ntk is None:
        ntk_parts = [mixed * math.sqrt(2.0)]
    else:
        ntk_parts = [(f.ntk @ gt).mul_(ov), mixed * math.sqrt(2.0)]
    nngp = mixed
    if layer.b_std is not None and layer.b_std != 0:
        bias = _rows(mixed, layer.b_std)
        nngp = torch.cat([mixed, bias], 1)
        ntk_parts.append(bias)
    return Features(nngp, torch.cat(ntk_parts, 1), layer.n_chan_out, f.spatial, fresh=True)


def _aggregate(f: Features, pattern: torch.Tensor | None) -> Features | None:
    if pattern is None or len(f.spatial) != 1:
        return None
    a = pattern.to(f.nngp.dtype)
    return replace(f, nngp=f.nngp @ a, ntk=None if f.ntk is None else f.ntk @ a)


def _sum(branches: tuple[Features, ...]) -> Features | None:
    if sum(not b.fresh for b in branches) > 1:
        return None  # FanInSum raises its own error
    first = branches[0]
    if any(b.width != first.width or b.spatial != first.spatial for b in branches):
        return None
    nngp = torch.cat([b.nngp for b in branches], 1)
    ntks = [b.ntk for b in branches if b.ntk is not None]
    ntk = torch.cat(ntks, 1) if ntks else None
    return Features(nngp, ntk, first.width, first.spatial, fresh=all(b.fresh for b in branches))


def _fold(layer: Layer, f, pattern):
    """``layer`` applied to features ``f`` (or a tuple of branches), or ``None``."""
    branched = isinstance(f, tuple)
    if isinstance(layer, SerialLayer):
        for sub in layer.layers:
            f = _fold(sub, f, pattern)
            if f is None:
                return None
        return f
    if isinstance(layer, ParallelLayer):
        if not branched or len(f) != len(layer.layers):
            return None
        out = tuple(_fold(sub, b, pattern) for sub, b in zip(layer.layers, f))
        return None if any(o is None or isinstance(o, tuple) for o in out) else out
    if isinstance(layer, FanInSum):
        return _sum(f) if branched else None
    if branched:
        return None
    if isinstance(layer, FanOut):
        return (replace(f, fresh=False),) * layer.n
    if type(layer) is Identity:
        return f
    if type(layer) is Dense:
        return _dense(layer, f)
    if type(layer) is LayerNorm:
        return _layer_norm(layer, f)
    if type(layer) is GlobalSelfAttention:
        return _attention(layer, f)
    if type(layer) is Aggregate:
        return _aggregate(f, pattern)
    return None


def fold_prefix(layer: Layer, x: torch.Tensor, side: dict | None):
    """``(features, rest)``: the longest foldable prefix of ``layer`` applied to ``x``.

    ``x (n, C, *S)``; ``side``: the examples' side information (``"pattern"`` for
    Aggregate; any ``"mask"`` disables folding). The prefix ends with a single state (not
    inside branches). Returns ``(None, layer)`` when no layer folds; ``rest`` is the
    remaining ``serial`` (``None`` when the whole architecture folds). Bad input that a
    layer reports (e.g. LayerNorm over a single entry) ends the prefix there, so that the
    layer itself raises when it runs.
    """
    if x.ndim < 3 or (side and "mask" in side):
        return None, layer
    layers = list(layer.layers) if isinstance(layer, SerialLayer) else [layer]
    pattern = None if not side else side.get("pattern")
    n, width = x.shape[0], x.shape[1]
    f = Features(x.reshape(n, width, -1) / math.sqrt(width), None, width, tuple(x.shape[2:]))
    best, best_done = None, 0
    for done, sub in enumerate(layers, 1):
        try:
            f = _fold(sub, f, pattern)
        except NtkitError:
            f = None
        if f is None:
            break
        if not isinstance(f, tuple):
            best, best_done = f, done
    if best is None:
        return None, layer
    rest = layers[best_done:]
    return best, (SerialLayer(rest) if rest else None)
