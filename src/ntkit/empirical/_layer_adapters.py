"""Module adapters of the structured path: which layers it supports and how they see data.

For each supported module (``nn.Linear``, ``nn.Conv1d/2d/3d``, ntkit's ``NTKDense``/``NTKConv``,
the in-projection of ``nn.MultiheadAttention`` (:mod:`._attention`), the affine parameters of
``BatchNorm`` (eval), ``LayerNorm`` and ``GroupNorm``),
:func:`module_geometry` says how its input becomes scaled patches ``(b, G, P, K)``
(:func:`patches`) and how the cotangents of its output are laid out (:func:`cotangents`);
see :mod:`ntkit.empirical.structured` for the kernel these feed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..finite.conv import NTKConv, pad_images
from ..finite.dense import NTKDense

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class NotApplicableError(Exception):
    """The structured path does not apply to this model; ``str(err)`` says why."""


@dataclass
class Geometry:
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
    #: embeddings: the weight is ``(K, C)`` (rows are looked up), not ``(C, K)``
    transposed: bool = False
    #: embeddings: the table size, the row that gets no gradient, the float dtype
    vocab: int = 0
    padding_idx: int | None = None
    dtype: torch.dtype | None = None
    #: the module's parameter names of the weight and bias
    weight_attr: str = "weight"
    bias_attr: str = "bias"
    #: ``nn.MultiheadAttention``: the in-projection, recorded by a replaced forward
    #: (:mod:`._attention`) rather than by a forward hook
    attention: bool = False


def module_geometry(module: nn.Module) -> Geometry | None:
    """The geometry of a supported module, ``None`` for any other module."""
    kind = type(module)
    if isinstance(module, nn.MultiheadAttention):
        from ._attention import supported

        if not supported(module):
            return None
        return Geometry("linear", 1.0, 1.0, weight_attr="in_proj_weight", bias_attr="in_proj_bias",
                        attention=True)
    if isinstance(module, nn.Linear) and kind.forward is nn.Linear.forward:
        return Geometry("linear", 1.0, 1.0)
    if isinstance(module, NTKDense) and kind.forward is NTKDense.forward:
        if module.parameterization == "standard":
            return Geometry("linear", 1.0, 1.0)
        b_std = 0.0 if module.b_std is None else float(module.b_std)
        return Geometry("linear", float(module.W_std) / math.sqrt(module.in_features), b_std)
    for conv in _CONVS:
        if isinstance(module, conv) and kind.forward is conv.forward:
            pads = tuple(module._reversed_padding_repeated_twice)
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode

            def pad(x, pads=pads, mode=mode):
                return F.pad(x, pads, mode=mode) if any(pads) else x

            return Geometry("conv", 1.0, 1.0, module.groups, tuple(module.kernel_size),
                             tuple(module.stride), tuple(module.dilation), pad)
    if NTKConv is not None and isinstance(module, NTKConv) and kind.forward is NTKConv.forward:
        d = len(module.kernel_size)

        def pad_ntk(x, m=module):
            return pad_images(x, m.kernel_size, m.stride, m.padding)

        scales = (1.0, 1.0)
        if module.parameterization != "standard":
            b_std = 0.0 if module.b_std is None else float(module.b_std)
            scales = (float(module.W_std) / math.sqrt(module.fan_in), b_std)
        return Geometry("conv", *scales, 1, tuple(module.kernel_size), tuple(module.stride),
                         (1,) * d, pad_ntk)
    if isinstance(module, nn.Embedding) and kind.forward is nn.Embedding.forward and (
        module.max_norm is None and not module.scale_grad_by_freq
    ):
        # a lookup is a linear map of the one-hot input: z[p] = Wᵀ onehot(ids[p])
        return Geometry("embedding", 1.0, 0.0, transposed=True, vocab=module.num_embeddings,
                        padding_idx=module.padding_idx, dtype=module.weight.dtype)
    return _norm_geometry(module)


def _norm_geometry(module: nn.Module) -> Geometry | None:
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

        return Geometry("norm", 1.0, 1.0, normalize=bn)
    if isinstance(module, nn.LayerNorm) and kind.forward is nn.LayerNorm.forward:
        k = len(module.normalized_shape)

        def ln(x, m=module, k=k):
            xhat = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
            return xhat.reshape(x.shape[0], -1, math.prod(x.shape[x.ndim - k:])).transpose(1, 2)

        return Geometry("norm", 1.0, 1.0, normalize=ln, channels_last=k)
    if isinstance(module, nn.GroupNorm) and kind.forward is nn.GroupNorm.forward:

        def gn(x, m=module):
            xhat = F.group_norm(x, m.num_groups, None, None, m.eps)
            return xhat.reshape(x.shape[0], x.shape[1], -1)

        return Geometry("norm", 1.0, 1.0, normalize=gn)
    return None


def patches(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Layer input → scaled patches ``(b, G, P, K)`` (``K`` ordered like ``weight.flatten(1)``)."""
    b = x.shape[0]
    if geo.kind == "embedding":  # one-hot rows (b, 1, P, V); the padding row gets no gradient
        onehot = F.one_hot(x.reshape(b, 1, -1).long(), geo.vocab).to(geo.dtype)
        if geo.padding_idx is not None:
            onehot[..., geo.padding_idx] = 0
        return onehot
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


def cotangents(grad: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """``∂f_o/∂z`` as ``(o, b, *z_shape)`` → ``(b, o, G, C, P)``."""
    o, b = grad.shape[:2]
    if geo.kind in ("linear", "embedding") or geo.channels_last:
        channels = math.prod(grad.shape[grad.ndim - max(1, geo.channels_last):])
        g = grad.reshape(o, b, -1, channels).permute(1, 0, 3, 2)
        return g.reshape(b, o, 1, channels, -1)
    return grad.reshape(o, b, geo.groups, grad.shape[2] // geo.groups, -1).transpose(0, 1)
