"""The structured path through ``nn.MultiheadAttention`` (in-projection and ``out_proj`` as
linear layers, :mod:`ntkit.empirical._attention`) and through parameters outside supported
layers (per-example Jacobians), against a naive autograd loop in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit as nk
from autograd_reference import per_example_jacobian
from ntkit.empirical.core import _plan
from ntkit.empirical.traceable import traceable

F64 = torch.float64


class TimeMajorAttention(nn.Module):
    """Linear → self-attention on (L, N, E) with a float causal mask and a padding mask →
    mean over positions → Linear; a learned offset added directly (outside any layer)."""

    def __init__(self, cross: bool = False):
        super().__init__()
        self.cross = cross
        self.inp = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.offset = nn.Parameter(0.1 * torch.randn(8))
        self.out = nn.Linear(8, 2)

    def forward(self, x):  # (n, L, 3)
        h = (self.inp(x) + self.offset).transpose(0, 1)  # (L, n, 8)
        length = h.shape[0]
        causal = torch.triu(torch.full((length, length), float("-inf"), dtype=h.dtype), 1)
        pad = x[:, :, 0] > 0.5  # padding read from the data (per example)
        pad[:, 0] = False
        key = h.flip(0) if self.cross else h
        a, _ = self.attn(h, key, key, attn_mask=causal, key_padding_mask=pad)
        return self.out(a.mean(0))


def _terms(model, x):
    with torch.enable_grad(), traceable(model):
        runner = _plan(model, x, None, "trace", "structured", None, None, None, None, None)[4]
    return {t.names[0]: t.kind if t.kind != "rest" else "rest:" + t.form for t in runner.terms}


def test_attention_layers_are_structured_terms_and_exact():
    torch.manual_seed(0)
    model = TimeMajorAttention().double().eval()
    x = torch.randn(5, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    kinds = _terms(model, x)
    assert kinds["attn.in_proj_weight"] == "affine" and kinds["attn.out_proj.weight"] == "affine"
    # a parameter added directly by the forward: given once per example, one backward
    assert kinds["offset"] == "rest:batched"
    jac = per_example_jacobian(model, x)
    full = torch.einsum("iop,jqp->ijoq", jac, jac)
    for output, want in (("full", full), ("trace", full.diagonal(dim1=2, dim2=3).sum(-1)),
                         ("diagonal", full.diagonal(dim1=2, dim2=3))):
        got = nk.empirical_ntk(model, x, output=output, method="structured")
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    cross = nk.empirical_ntk(model, x[:2], x[2:], method="structured")
    torch.testing.assert_close(cross, full.diagonal(dim1=2, dim2=3).sum(-1)[:2, 2:], rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("batch_first", [True, False])
def test_need_weights_and_layouts_match_torch(batch_first):
    """The replaced forward returns torch's outputs and attention weights."""
    from ntkit.empirical._attention import attention_forward

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(6, 3, batch_first=batch_first).double().eval()
    x = torch.randn(2, 4, 6, dtype=F64)
    if not batch_first:
        x = x.transpose(0, 1)  # (L, N, E)
    mask = torch.rand(4, 4) > 0.7
    mask.fill_diagonal_(False)
    pad = torch.tensor([[False, False, False, True], [False] * 4])
    for kw in (dict(attn_mask=mask, key_padding_mask=pad), dict(average_attn_weights=False), {}):
        want = mha(x, x, x, **kw)
        got = attention_forward(mha, lambda inp, out: out, x, x, x, **kw)
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)


def test_cross_attention_falls_back():
    torch.manual_seed(0)
    model = TimeMajorAttention(cross=True).double().eval()
    x = torch.randn(4, 3, 3, dtype=F64)
    plan = nk.empirical.plan_empirical_ntk(model, x)
    assert "cross-attention" in plan.structured_reason and plan.method != "structured"
    jac = per_example_jacobian(model, x)
    torch.testing.assert_close(nk.empirical_ntk(model, x), torch.einsum("iop,jop->ij", jac, jac),
                               rtol=1e-10, atol=1e-12)


def test_parameters_outside_layers_by_either_route():
    """A PReLU weight cannot be given once per example (per-example Jacobians by vmap); a
    per-feature scale multiplied in the forward can (one batched backward). Both exact."""

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.act = nn.PReLU()
            self.scale = nn.Parameter(torch.rand(4) + 0.5)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.act(self.lin(x)) * self.scale)

    torch.manual_seed(0)
    model = Mixed().double()
    x = torch.randn(5, 3, dtype=F64)
    kinds = _terms(model, x)
    assert kinds["act.weight"] == "rest:vmap" and kinds["scale"] == "rest:batched"
    jac = per_example_jacobian(model, x)
    full = torch.einsum("iop,jqp->ijoq", jac, jac)
    torch.testing.assert_close(nk.empirical_ntk(model, x, output="full", method="structured"), full,
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(nk.empirical_ntk(model, x, output="diagonal_batch", method="structured"),
                               full.diagonal(dim1=2, dim2=3).sum(-1).diagonal(), rtol=1e-10, atol=1e-12)
