"""The structured path's memory devices change nothing but memory and speed.

Each combination of what a feature block keeps (per-layer Jacobians, or layer inputs and
cotangents) and how a term is contracted (per-layer Jacobians formed a few channels at a
time, or input/cotangent Grams over sub-blocks of examples), run in micro-batches, with the
outputs in several groups, under a budget small enough to force every chunking, against a
naive autograd loop (one ``torch.autograd.grad`` per example and output) in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit as nk
from autograd_reference import per_example_jacobian
from ntkit.empirical import _blocks, _structured_plan, core, structured
from ntkit.empirical.jacobian import Accumulator

F64 = torch.float64


def _model():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, padding=1)
    return nn.Sequential(conv, nn.Tanh(), nn.Conv2d(4, 3, 3, stride=2), nn.BatchNorm2d(3).eval(),
                         nn.Flatten(), nn.Linear(12, 3)).double().eval()


def _one_at_a_time(runner, n, n_examples, symmetric, output, *args):
    if output == "full":  # cross-output products: never split
        return 1
    runner.set_outputs(0, 1)
    return runner.problem.n_out


def _force(monkeypatch, store, form):
    choose = _structured_plan.StructuredPlan._choose_forms

    def forced(self, n1, n2, output):
        choose(self, n1, n2, output)
        for term in self.terms:
            if term.kind not in ("bias", "scale"):
                term.store, term.form = store, form

    monkeypatch.setattr(_structured_plan.StructuredPlan, "_choose_forms", forced)


@pytest.mark.parametrize("store,form", [pytest.param("jac", "jac", marks=pytest.mark.slow), ("ag", "jac"),
                                        pytest.param("ag", "gram", marks=pytest.mark.slow)])
def test_chunked_structured_equals_the_naive_loop(monkeypatch, store, form):
    model = _model()
    x = torch.randn(9, 2, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    jac = per_example_jacobian(model, x)
    expected = {"trace": torch.einsum("iop,jop->ij", jac, jac),
                "diagonal": torch.einsum("iop,jop->ijo", jac, jac),
                "full": torch.einsum("iop,jqp->ijoq", jac, jac)}
    expected["diagonal_batch"] = expected["trace"].diagonal()
    _force(monkeypatch, store, form)
    mirrored = []
    mirror = Accumulator.mirror
    monkeypatch.setattr(Accumulator, "mirror", lambda acc, *b: mirrored.append(b) or mirror(acc, *b))
    for output, want in expected.items():
        # micro-batches, Jacobian pieces and Gram sub-blocks of a few examples
        budget = 150_000 if output == "full" else 60_000
        monkeypatch.setattr(core, "_output_groups", _one_at_a_time)  # summed or stacked
        plan = nk.empirical.plan_empirical_ntk(model, x, output=output, method="structured",
                                               memory_budget=budget)
        assert plan.output_groups == (1 if output == "full" else 3)
        got = nk.empirical_ntk(model, x, output=output, method="structured", memory_budget=budget)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        cross = nk.empirical_ntk(model, x[:4], x[4:], output=output, method="structured",
                                 memory_budget=budget) if output != "diagonal_batch" else None
        if cross is not None:
            torch.testing.assert_close(cross, want[:4, 4:], rtol=1e-10, atol=1e-12)
        for panel in (1, 4):  # one block, its pairs with itself in row chunks (panels of 1 or 2)
            with monkeypatch.context() as m:
                m.setattr(structured, "SYMMETRIC_CHUNK_FLOPS", 0)
                m.setattr(structured, "SYMMETRIC_CHUNK_MIN", 2)
                m.setattr(structured, "PANEL_ROWS", panel)
                got = nk.empirical_ntk(model, x, output=output, method="structured")
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert mirrored  # pairs of a block with itself: upper chunk pairs, mirrored


def test_micro_batches_and_pieces_are_used(monkeypatch):
    """The budget above does cut the work: several micro-batches, Jacobian pieces of a
    few channels, Gram sub-blocks (a check that the test above tests something)."""
    _force(monkeypatch, "ag", "jac")
    model = _model()
    x = torch.randn(9, 2, 5, 5, dtype=F64)
    sizes = []
    features = structured.StructuredMethod._features
    monkeypatch.setattr(structured.StructuredMethod, "_features",
                        lambda self, xb: sizes.append(len(xb)) or features(self, xb))
    nk.empirical_ntk(model, x, method="structured", memory_budget=60_000)
    assert max(sizes) < 9 and len(sizes) > 2
    from ntkit.empirical import _structured_features as sf

    pieces = []  # (layer kind, pieces of one Jacobian)
    chunks = sf.jacobian_chunks

    def counted(s, limit, scratch=None, rows=None, flat=False):
        out = [j.clone() for j in chunks(s, limit, scratch, rows, flat)]
        pieces.append((s.geo.kind, len(out)))
        return out

    monkeypatch.setattr(structured, "jacobian_chunks", counted)
    monkeypatch.setattr(structured, "PAIR_SHARE", 16)
    nk.empirical_ntk(model, x, method="structured", memory_budget=60_000)
    # the first conv's Jacobian (4 channels) comes in more than one piece, and so does the
    # dense layer's (13 rows of its transposed Jacobian, bias included)
    for kind in ("conv", "linear"):
        assert max(count for k, count in pieces if k == kind) > 1, pieces


class _Lookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(9, 4, padding_idx=0)
        self.out = nn.Linear(4, 3)

    def forward(self, ids):
        return self.out(torch.tanh(self.embed(ids).mean(1)))


def test_embedding_jacobian_by_scatter(monkeypatch):
    """An embedding's per-layer Jacobian (formed from its token ids, whole or a few channels
    at a time; the padding row gets no gradient) equals the naive loop's."""
    torch.manual_seed(0)
    model = _Lookup().double()
    ids = torch.randint(0, 9, (7, 5), generator=torch.Generator().manual_seed(2))
    ids[0, :2] = 0
    jac = per_example_jacobian(model, ids)
    _force(monkeypatch, "ag", "jac")
    for budget in (None, 20_000):
        got = nk.empirical_ntk(model, ids, output="full", method="structured", memory_budget=budget)
        torch.testing.assert_close(got, torch.einsum("iop,jqp->ijoq", jac, jac), rtol=1e-10, atol=1e-12)
        got = nk.empirical_ntk(model, ids[:3], ids[3:], method="structured", memory_budget=budget)
        torch.testing.assert_close(got, torch.einsum("iop,jop->ij", jac[:3], jac[3:]), rtol=1e-10,
                                   atol=1e-12)


def test_one_block_when_all_features_fit_once():
    """A symmetric kernel is one block (each example's features made and held once) when
    its features and that block's temporaries fit the budget, though two blocks' would not."""
    model = _model()
    x = torch.randn(9, 2, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(3))
    budget = None
    for _ in range(5):  # the budget that one block of 9 needs (micro-batches depend on it)
        with torch.enable_grad():
            runner = core._plan(model, x, None, "full", "structured", None, None, None, None, budget)[4]
        need = runner.feature_bytes(9) + runner.pair_bytes(9, 9, "full")
        if need == budget:
            break
        budget = need
    assert _blocks.block_size(runner, 9, "full", need, None) < 9  # two feature blocks: smaller
    plan = nk.empirical.plan_empirical_ntk(model, x, output="full", method="structured", memory_budget=need)
    assert plan.block == 9
    jac = per_example_jacobian(model, x)
    got = nk.empirical_ntk(model, x, output="full", method="structured", memory_budget=need)
    torch.testing.assert_close(got, torch.einsum("iop,jqp->ijoq", jac, jac), rtol=1e-10, atol=1e-12)


def test_jacobian_vmap_over_few_examples_at_a_time(monkeypatch):
    """The Jacobian method's ``vmap`` over one example at a time (a parameter too large for
    more per call) gives the naive loop's kernel, and does run one example per call."""
    from ntkit.empirical import jacobian

    model = _model()
    x = torch.randn(5, 2, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(5))
    want = per_example_jacobian(model, x)
    sizes = []
    nested = jacobian.JacobianMethod._nested
    monkeypatch.setattr(jacobian.JacobianMethod, "_nested",
                        lambda self, xb, names: sizes.append(len(xb)) or nested(self, xb, names))
    monkeypatch.setattr(jacobian, "VMAP_STEP_BYTES", 1)
    got = nk.empirical_ntk(model, x, output="full", method="jacobian")
    torch.testing.assert_close(got, torch.einsum("iop,jqp->ijoq", want, want), rtol=1e-10, atol=1e-12)
    assert sizes.count(1) >= len(x)  # (the first call checks the mode on the two probe examples)


class _Tokens(nn.Module):
    """Dense layers applied at every position of a sequence (cotangents kept channels last,
    Jacobians formed transposed for sums over outputs), after an embedding; an NTK-
    parameterized head (weight and bias scales not 1)."""

    def __init__(self):
        super().__init__()
        from ntkit.finite.dense import NTKDense

        self.embed = nn.Embedding(11, 4, padding_idx=1)
        self.up = nn.Linear(4, 6)
        self.down = nn.Linear(6, 3)
        self.head = NTKDense(3, 3, W_std=1.5, b_std=0.5, parameterization="ntk",
                             generator=torch.Generator().manual_seed(0), dtype=torch.float32)

    def forward(self, ids):
        h = self.down(torch.tanh(self.up(self.embed(ids))))
        return self.head(torch.tanh(h.mean(1) + h[:, 0]))


def test_dense_layers_on_sequences_by_transposed_pieces(monkeypatch):
    """The transposed per-layer Jacobians of dense layers on sequences (whole, or a row of
    ``Jᵀ`` at a time; micro-batches copied into blocks kept channels last)
    give the naive loop's trace, cross kernel and batch diagonal; the full kernel (formed
    untransposed) from such blocks too."""
    torch.manual_seed(0)
    model = _Tokens().double()
    ids = torch.randint(0, 11, (8, 5), generator=torch.Generator().manual_seed(4))
    ids[0, :2] = 1  # padding
    jac = per_example_jacobian(model, ids)
    _force(monkeypatch, "ag", "jac")
    rows = []
    chunks = structured.jacobian_chunks
    monkeypatch.setattr(structured, "jacobian_chunks", lambda s, limit, scratch=None, r=None, flat=False: [
        rows.append((s.geo.kind, flat, j.shape)) or j.clone() for j in chunks(s, limit, scratch, r, flat)])
    trace = torch.einsum("iop,jop->ij", jac, jac)
    for budget, share in ((None, structured.PAIR_SHARE), (20_000, structured.PAIR_SHARE), (20_000, 40)):
        monkeypatch.setattr(structured, "PAIR_SHARE", share)
        got = nk.empirical_ntk(model, ids, method="structured", memory_budget=budget)
        torch.testing.assert_close(got, trace, rtol=1e-10, atol=1e-12)
        got = nk.empirical_ntk(model, ids[:3], ids[3:], method="structured", memory_budget=budget)
        torch.testing.assert_close(got, trace[:3, 3:], rtol=1e-10, atol=1e-12)
        got = nk.empirical_ntk(model, ids, output="diagonal_batch", method="structured", memory_budget=budget)
        torch.testing.assert_close(got, trace.diagonal(), rtol=1e-10, atol=1e-12)
        got = nk.empirical_ntk(model, ids, output="full", method="structured", memory_budget=budget)
        torch.testing.assert_close(got, torch.einsum("iop,jqp->ijoq", jac, jac), rtol=1e-10, atol=1e-12)
    dense = {(flat, shape[1]) for kind, flat, shape in rows if kind == "linear"}
    # whole transposed Jacobians (5 or 7 rows of 6 or 3 channels) and single rows of them
    assert {(True, 30), (True, 21), (True, 6), (True, 3)} <= dense and any(not f for f, _ in dense)


class _TwoHeads(nn.Module):
    """Outputs ``[a0, a1, b0, a2]`` from two heads: an output group can depend on a head for
    some of its outputs only."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(3, 4)
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 1)

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        a = self.a(h)
        return torch.cat([a[:, :2], self.b(h), a[:, 2:]], dim=1)


def test_two_heads_in_micro_batches_and_output_groups(monkeypatch):
    """Micro-batches and output groups of a model with two heads (a head that some outputs
    of a group do not depend on: zero cotangents there) give the naive loop's kernels."""
    torch.manual_seed(0)
    model = _TwoHeads().double()
    x = torch.randn(7, 3, dtype=F64, generator=torch.Generator().manual_seed(6))
    jac = per_example_jacobian(model, x)
    _force(monkeypatch, "ag", "jac")

    def two_groups(runner, *args):
        runner.set_outputs(0, 2)
        return 2

    monkeypatch.setattr(core, "_output_groups", two_groups)
    monkeypatch.setattr(structured.StructuredMethod, "micro_batch", lambda self: 3)
    for output, want in (("trace", torch.einsum("iop,jop->ij", jac, jac)),
                         ("diagonal", torch.einsum("iop,jop->ijo", jac, jac))):
        got = nk.empirical_ntk(model, x, output=output, method="structured")
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_one_block_with_cut_pair_temporaries(monkeypatch):
    """A symmetric kernel whose features fit the budget, but not with the pair temporaries
    at their usual share, is one block with those temporaries cut (every Jacobian piece
    within the cut) and equals the naive loop; without the cut it takes several blocks."""
    torch.manual_seed(0)
    model = _Tokens().double()
    ids = torch.randint(0, 11, (8, 5), generator=torch.Generator().manual_seed(7))
    jac = per_example_jacobian(model, ids)
    _force(monkeypatch, "ag", "jac")
    monkeypatch.setattr(structured.StructuredMethod, "micro_batch", lambda self: 3)
    monkeypatch.setattr(core, "_output_groups", lambda runner, *args: runner.set_outputs(0, 3) or 1)
    with torch.enable_grad():
        runner = core._plan(model, ids, None, "trace", "structured", None, None, None, None, None)[4]
    features = runner.feature_bytes(8)
    kernel = 2 * 8 * 8 * 3 * 8  # two (8, 8) blocks of float64 over 3 outputs
    temps = runner.pair_bytes(8, 8, "trace", same=True) - kernel
    budget = features + kernel + temps // 2
    assert temps // 2 >= budget // structured.PAIR_MIN_SHARE and temps // 2 < budget // structured.PAIR_SHARE
    pieces = []
    chunks = structured.jacobian_chunks

    def sized(s, limit, scratch=None, rows=None, flat=False):
        for j in chunks(s, limit, scratch, rows, flat):
            pieces.append((j.numel() * j.element_size(), limit))
            yield j

    monkeypatch.setattr(structured, "jacobian_chunks", sized)
    plan = nk.empirical.plan_empirical_ntk(model, ids, method="structured", memory_budget=budget)
    assert plan.block == 8
    got = nk.empirical_ntk(model, ids, method="structured", memory_budget=budget)
    torch.testing.assert_close(got, torch.einsum("iop,jop->ij", jac, jac), rtol=1e-10, atol=1e-12)
    assert pieces and all(size <= limit <= temps // 2 for size, limit in pieces)
    monkeypatch.setattr(structured, "PAIR_MIN_SHARE", 1)  # no cut allowed: blocks of fewer examples
    assert nk.empirical.plan_empirical_ntk(model, ids, method="structured", memory_budget=budget).block < 8
