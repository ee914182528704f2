"""Run standard torch layers in a form every autodiff transform can go through.

Some torch layers compute their forward with fused kernels that ``torch.func`` cannot
transform: ``nn.RNN``/``nn.LSTM``/``nn.GRU`` call one ATen op for the whole sequence
(writing into buffers it allocates without the ``vmap`` batch axis, and with no
forward-mode derivative), and ``nn.MultiheadAttention``/``nn.TransformerEncoderLayer`` in
eval mode take a "fast path" (``_native_multi_head_attention``,
``_transformer_encoder_layer_fwd``) with no forward-mode derivative, which also turns
padded positions of a ``TransformerEncoder`` into zeros (nested tensors).

:func:`traceable` is a context manager under which, for the model given:

- every ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` runs :func:`rnn_forward`, the same recurrence
  written with elementwise ops and matrix products (any ``num_layers``, ``bidirectional``,
  ``batch_first``, ``proj_size``, initial states, unbatched inputs; weights read by name,
  so flattened cuDNN-style weights need no special care). It is mathematically the torch
  layer (torch's documentation of ``nn.RNN``/``nn.LSTM``/``nn.GRU``), compared with it on
  every test model to 1e-12; ``PackedSequence`` inputs still go to torch's own forward.
- the multi-head-attention fast path is off (``torch.backends.mha.set_fastpath_enabled``),
  so attention runs ``F.multi_head_attention_forward``: the same function, differentiable
  in both modes, padded positions computed like the others (as in training mode);
- ``F.scaled_dot_product_attention`` uses its math backend (``torch.nn.attention.sdpa_kernel``):
  the fused CPU/CUDA kernels have no forward-mode derivative.

Both are restored on exit. The switch is process-wide while the context is open.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.rnn import PackedSequence

_RNNS = (nn.RNN, nn.LSTM, nn.GRU)


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s RNNs and attention layers run in transformable form."""
    patched = []
    for module in (model.modules() if isinstance(model, nn.Module) else ()):
        if isinstance(module, _RNNS) and "forward" not in module.__dict__ and (
            type(module).forward in (nn.RNN.forward, nn.LSTM.forward, nn.GRU.forward)
        ):
            module.forward = _bound(module)
            patched.append(module)
    mha = getattr(torch.backends, "mha", None)
    before = mha.get_fastpath_enabled() if mha is not None else None
    try:
        if mha is not None:
            mha.set_fastpath_enabled(False)
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(before)
        for module in patched:
            del module.forward


def _bound(module: nn.Module):
    def forward(input, hx=None):
        if isinstance(input, PackedSequence):
            return type(module).forward(module, input, hx)
        return rnn_forward(module, input, hx)

    forward.ntkit_traceable = True  # not a user override (see ntkit.empirical._memo)
    return forward


def _cell(kind: str, nonlinearity: str, x_proj: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None,
          w_hh: torch.Tensor, b_hh: torch.Tensor | None, w_hr: torch.Tensor | None):
    """One time step; ``x_proj = x_t W_ihᵀ + b_ih`` was computed for all steps at once."""
    hh = h @ w_hh.mT  # .mT: also right for per-example (b, out, in) weights
    if b_hh is not None:
        hh = hh + b_hh
    if kind == "LSTM":
        i, f, g, o = (x_proj + hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if w_hr is not None:
            h = h @ w_hr.mT
        return h, c
    if kind == "GRU":
        xr, xz, xn = x_proj.chunk(3, dim=-1)
        hr, hz, hn = hh.chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None
    pre = x_proj + hh
    return (torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)), None


def rnn_forward(module: nn.Module, input: torch.Tensor, hx=None):
    """``nn.RNN``/``nn.LSTM``/``nn.GRU`` forward with elementwise ops and matmuls.

    Same arguments and results as the module's own forward for tensor inputs (batched
    ``(N, L, H_in)`` with ``batch_first`` or ``(L, N, H_in)``, or unbatched ``(L, H_in)``):
    ``(output, h_n)``, or ``(output, (h_n, c_n))`` for an LSTM.
    """
    kind = type(module).__name__ if type(module) in _RNNS else next(
        k.__name__ for k in _RNNS if isinstance(module, k))
    nonlinearity = getattr(module, "nonlinearity", "tanh")
    directions = 2 if module.bidirectional else 1
    proj = getattr(module, "proj_size", 0) or 0
    hidden = proj if proj > 0 else module.hidden_size
    unbatched = input.dim() == 2
    x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if module.batch_first else input)
    steps, batch = x.shape[0], x.shape[1]
    if kind == "LSTM":
        if hx is None:
            h0 = x.new_zeros(module.num_layers * directions, batch, hidden)
            c0 = x.new_zeros(module.num_layers * directions, batch, module.hidden_size)
        else:
            h0, c0 = hx
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
    else:
        h0 = x.new_zeros(module.num_layers * directions, batch, hidden) if hx is None else (
            hx.unsqueeze(1) if unbatched else hx)
        c0 = None
    h_last, c_last = [], []
    layer_in = x
    for layer in range(module.num_layers):
        outs = []
        for d in range(directions):
            sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
            w_ih, w_hh = getattr(module, "weight_ih" + sfx), getattr(module, "weight_hh" + sfx)
            b_ih = getattr(module, "bias_ih" + sfx) if module.bias else None
            b_hh = getattr(module, "bias_hh" + sfx) if module.bias else None
            w_hr = getattr(module, "weight_hr" + sfx) if proj > 0 else None
            x_proj = layer_in @ w_ih.mT
            if b_ih is not None:
                x_proj = x_proj + b_ih
            k = layer * directions + d
            h, c = h0[k], (c0[k] if c0 is not None else None)
            order = range(steps - 1, -1, -1) if d == 1 else range(steps)
            seq = [None] * steps
            for t in order:
                h, c = _cell(kind, nonlinearity, x_proj[t], h, c, w_hh, b_hh, w_hr)
                seq[t] = h
            outs.append(torch.stack(seq))
            h_last.append(h)
            if c is not None:
                c_last.append(c)
        layer_in = torch.cat(outs, dim=-1) if directions == 2 else outs[0]
        if module.dropout and module.training and layer + 1 < module.num_layers:
            layer_in = torch.nn.functional.dropout(layer_in, module.dropout, training=True)
    output = layer_in
    h_n = torch.stack(h_last)
    c_n = torch.stack(c_last) if kind == "LSTM" else None
    if unbatched:
        output, h_n = output.squeeze(1), h_n.squeeze(1)
        c_n = c_n.squeeze(1) if c_n is not None else None
    elif module.batch_first:
        output = output.transpose(0, 1)
    return (output, (h_n, c_n)) if kind == "LSTM" else (output, h_n)
