"""The empirical NTK of the models people use: attention, recurrent nets, embeddings, tuple
and dict inputs/outputs, tied weights — every method against a naive per-example loop.

The reference :func:`naive_jacobian` calls the model's own forward (torch's fused RNN and
attention kernels, not ntkit's transformable forms) on one example at a time and takes one
``torch.autograd.grad`` per output, parameters flattened: it shares no code with ntkit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.empirical import all_outputs, empirical_ntk, plan_empirical_ntk
from ntkit.errors import MemoryBudgetError, ModelError, ShapeError

F64 = torch.float64



def _take(x, i):
    if isinstance(x, dict):
        return {k: v[i : i + 1] for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(v[i : i + 1] for v in x)
    return x[i : i + 1]


def _call(model, x):
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def _n(x):
    if isinstance(x, dict):
        return len(next(iter(x.values())))
    return len(x[0] if isinstance(x, (tuple, list)) else x)


def naive_jacobian(model, x, select=lambda out: out) -> torch.Tensor:
    """``(n, o, P)`` by one ``torch.autograd.grad`` per example and output."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(_n(x)):
        out = select(_call(model, _take(x, i))).reshape(-1)
        per_output = []
        for o in range(out.numel()):
            grads = torch.autograd.grad(out[o], params, retain_graph=True, allow_unused=True)
            per_output.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                         for g, p in zip(grads, params)]))
        rows.append(torch.stack(per_output))
    return torch.stack(rows).detach()


class ModelOutput(OrderedDict):
    """Like Hugging Face's ``ModelOutput``: a dict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


class TinyTransformer(nn.Module):
    """Token ids + attention mask → 2-layer TransformerEncoder → masked mean → logits."""

    def __init__(self, vocab=11, d=8, seq=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(seq, d))
        layer = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids) + self.pos
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        m = attention_mask[..., None].to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1)
        return ModelOutput(logits=self.head(pooled), hidden=h)


class SequenceClassifier(nn.Module):
    def __init__(self, cell, **kwargs):
        super().__init__()
        self.rnn = cell(3, 4, batch_first=True, **kwargs)
        width = 4 * (2 if kwargs.get("bidirectional") else 1)
        self.out = nn.Linear(width, 2)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


class EmbeddingMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, ids):
        return self.out(torch.tanh(self.embed(ids).mean(1)))


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.a, self.b = nn.Linear(6, 2), nn.Linear(6, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.a(h), self.b(h)


class Tied(nn.Module):
    """A tiny language model whose output projection is the embedding table."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.mix = nn.Linear(4, 4)

    def forward(self, ids):
        h = torch.tanh(self.mix(self.embed(ids).mean(1)))
        return nn.functional.linear(h, self.embed.weight)


def _ids(g, n, vocab, seq):
    return torch.randint(0, vocab, (n, seq), generator=g)


def _transformer(g):
    model = TinyTransformer()
    mask = torch.ones(5, 5, dtype=torch.long)
    mask[1, 3:] = 0
    mask[3, 4:] = 0
    x = {"input_ids": _ids(g, 5, 11, 5), "attention_mask": mask}
    return model.eval(), x, "logits"


def _rnn(cell, **kwargs):
    def make(g):
        return SequenceClassifier(cell, **kwargs), torch.randn(5, 4, 3, generator=g), None
    return make


CASES = {
    "transformer": _transformer,
    "lstm": _rnn(nn.LSTM, num_layers=2, bidirectional=True),
    "gru": _rnn(nn.GRU),
    "embedding": lambda g: (EmbeddingMean(), _ids(g, 5, 10, 6), None),
    "two_heads": lambda g: (TwoHeads(), torch.randn(5, 4, generator=g), all_outputs),
    "tied": lambda g: (Tied(), _ids(g, 5, 7, 3), None),
}


def _split(x, a, b):
    if isinstance(x, dict):
        return {k: v[a:b] for k, v in x.items()}
    return x[a:b]


@pytest.fixture(params=sorted(CASES))
def case(request):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model, x, output_fn = CASES[request.param](g)
    model = model.double()
    x = {k: v.double() if v.is_floating_point() else v for k, v in x.items()} if isinstance(x, dict) \
        else (x.double() if x.is_floating_point() else x)
    return request.param, model, x, output_fn


def _select(output_fn):
    if output_fn is None:
        return lambda out: out
    if isinstance(output_fn, str):
        return lambda out: out[output_fn]
    return output_fn


def test_every_method_equals_the_naive_loop(case):
    name, model, x, output_fn = case
    x1, x2 = _split(x, 0, 3), _split(x, 3, 5)
    select = _select(output_fn)
    j1, j2 = naive_jacobian(model, x1, select), naive_jacobian(model, x2, select)
    full_ref = torch.einsum("iap,jbp->ijab", j1, j2)
    sym_ref = torch.einsum("iap,jbp->ijab", j1, j1)
    scale = float(full_ref.abs().max())
    tol = dict(rtol=0, atol=1e-10 * scale)
    plan = plan_empirical_ntk(model, x1, x2, output_fn=output_fn)
    assert plan.method in ("jacobian", "ntk_vp", "structured")
    methods = ["jacobian", "ntk_vp", "auto"]
    # structured applies: supported layers (attention included), the rest by per-example Jacobians
    if name in ("embedding", "two_heads", "transformer", "lstm", "gru"):
        assert plan.structured_reason is None
    if plan.structured_reason is None:
        methods.append("structured")
    for method in methods:
        kw = dict(method=method, output_fn=output_fn)
        full = empirical_ntk(model, x1, x2, output="full", **kw)
        torch.testing.assert_close(full, full_ref, **tol)
        torch.testing.assert_close(empirical_ntk(model, x1, x2, output="trace", **kw),
                                   full_ref.diagonal(dim1=2, dim2=3).sum(-1), **tol)
        torch.testing.assert_close(empirical_ntk(model, x1, x2, output="diagonal", **kw),
                                   full_ref.diagonal(dim1=2, dim2=3), **tol)
        torch.testing.assert_close(empirical_ntk(model, x1, output="full", **kw), sym_ref, **tol)
        batch_diag = empirical_ntk(model, x1, output="diagonal_batch", **kw)
        assert batch_diag.shape == (3,)
        torch.testing.assert_close(batch_diag, j1.square().sum((1, 2)), **tol)


def test_rnn_variants_and_flattened_weights():
    """Multi-layer, bidirectional, projections, ReLU RNN, given initial states, and an LSTM
    whose weights were flattened (``flatten_parameters``)."""

    class WithState(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(3, 5, num_layers=2, proj_size=2)
            self.h0 = nn.Parameter(0.1 * torch.randn(2, 1, 2))
            self.c0 = nn.Parameter(0.1 * torch.randn(2, 1, 5))

        def forward(self, x):  # time-major input (n, T, 3) -> (T, n, 3)
            n = x.shape[0]
            out, (_h, c) = self.rnn(x.transpose(0, 1), (self.h0.expand(-1, n, -1).contiguous(),
                                                       self.c0.expand(-1, n, -1).contiguous()))
            return torch.cat([out[-1], c[-1]], dim=1)

    torch.manual_seed(0)
    relu = SequenceClassifier(nn.RNN, nonlinearity="relu", num_layers=2)
    relu.rnn.flatten_parameters()
    for model in (WithState(), relu, SequenceClassifier(nn.GRU, bidirectional=True, bias=False)):
        model = model.double()
        x = torch.randn(3, 4, 3, dtype=F64)
        j = naive_jacobian(model, x)
        ref = torch.einsum("iap,jbp->ijab", j, j)
        for method in ("jacobian", "ntk_vp"):
            k = empirical_ntk(model, x, output="full", method=method)
            torch.testing.assert_close(k, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))


def test_nngp_vp_and_kernel(case):
    _name, model, x, output_fn = case
    x1, x2 = _split(x, 0, 3), _split(x, 3, 5)
    select = _select(output_fn)
    with torch.no_grad():
        f1 = select(_call(model, x1)).reshape(3, -1)
        f2 = select(_call(model, x2)).reshape(2, -1)
    nngp = nk.empirical_nngp(model, x1, x2, output_fn=output_fn)
    torch.testing.assert_close(nngp, f1 @ f2.T, rtol=1e-12, atol=1e-12 * float((f1 @ f2.T).abs().max()))
    full = empirical_ntk(model, x1, x2, output="full", output_fn=output_fn)
    o = full.shape[-1]
    v = torch.randn(2, o, dtype=F64, generator=torch.Generator().manual_seed(5))
    want = torch.einsum("ijab,jb->ia", full, v)
    got = nk.ntk_vp(model, x1, x2, v, output_fn=output_fn)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10 * float(want.abs().max()))
    kernel = nk.empirical_kernel(model, x1, x2, get=("nngp", "ntk"), output_fn=output_fn)
    assert isinstance(kernel, nk.Kernel)
    torch.testing.assert_close(kernel.ntk, full.diagonal(dim1=2, dim2=3).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kernel.nngp, nngp)
    torch.testing.assert_close(kernel.var1, (f1 * f1).sum(1))


def test_output_selection_and_errors():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model, x, _ = _transformer(g)
    model = model.double()
    with pytest.raises(ModelError, match=r"'logits' \(2, 3\), 'hidden' \(2, 5, 8\).*output_fn="):
        empirical_ntk(model, x)
    by_key = empirical_ntk(model, x, output_fn="logits")
    by_fn = empirical_ntk(model, x, output_fn=lambda out: out.logits)
    torch.testing.assert_close(by_key, by_fn, rtol=1e-12, atol=0)
    with pytest.raises(ModelError, match="output_fn='nope' failed"):
        empirical_ntk(model, x, output_fn="nope")

    @dataclass
    class Out:
        score: torch.Tensor
        note: str = "not a tensor"

    class DataclassModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, scale=1.0):
            return Out(self.lin(x) * scale)

    dc = DataclassModel().double()
    xs = torch.randn(4, 3, dtype=F64)
    k = empirical_ntk(dc, xs, model_kwargs={"scale": 2.0})  # the one tensor field is used
    j = naive_jacobian(dc, xs, lambda out: out.score * 2.0)
    torch.testing.assert_close(k, torch.einsum("iap,jap->ij", j, j), rtol=1e-12, atol=0)
    with pytest.raises(ShapeError, match="different batch sizes"):
        empirical_ntk(model, {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"][:3]},
                      output_fn="logits")
    with pytest.raises(ShapeError, match="model_kwargs"):
        empirical_ntk(dc, (xs, "text"))


class NoGradInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        with torch.no_grad():
            h = torch.tanh(self.a(x))
        return self.b(h)


class CountsCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        self.seen += 1
        return self.lin(x)


def test_impure_forwards_get_errors_naming_the_fix():
    x = torch.randn(4, 3, dtype=F64)
    with pytest.raises(ModelError, match=r"no_grad.*Remove the no_grad block"):
        empirical_ntk(NoGradInside().double(), x)
    with pytest.raises(ModelError, match=r"changed buffer 'seen'.*model\.eval\(\)"):
        empirical_ntk(CountsCalls().double(), x)
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    with pytest.raises(ModelError, match=r"training mode.*model\.eval\(\)"):
        empirical_ntk(bn, x)
    empirical_ntk(bn.eval(), x)


def test_budget_errors_and_parameter_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 40), nn.Tanh(), nn.Linear(40, 30), nn.Tanh(),
                          nn.Linear(30, 4)).double()
    x = torch.randn(7, 6, dtype=F64)
    whole = empirical_ntk(model, x, output="full", method="jacobian")
    # all parameters' Jacobians of one example pair take 227 kB > 200 kB; each tensor fits
    plan = plan_empirical_ntk(model, x, output="full", method="jacobian", memory_budget=200_000)
    assert plan.param_blocks > 1
    blocked = empirical_ntk(model, x, output="full", method="jacobian", memory_budget=200_000)
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-12 * float(whole.abs().max()))
    for method in ("jacobian", "ntk_vp", "structured"):
        with pytest.raises(MemoryBudgetError, match=r"memory_budget is 1000 bytes.*at least \d+ bytes"):
            empirical_ntk(model, x, method=method, memory_budget=1000)
    # auto skips methods that do not fit and still answers
    auto = empirical_ntk(model, x, output="full", memory_budget=200_000)
    torch.testing.assert_close(auto, whole, rtol=0, atol=1e-12 * float(whole.abs().max()))


def test_auto_tries_and_falls_back():
    """A forward that writes into a tensor it allocates cannot run under vmap: auto skips the
    vmapped methods after trying them, and the Jacobian method loops per example."""

    class WritesInPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.prelu = nn.PReLU()

        def forward(self, x):
            out = torch.zeros(x.shape[0], 4, dtype=x.dtype)
            out[:, :] = self.prelu(self.lin(x))
            out.mul_(2.0)
            return out

    torch.manual_seed(0)
    model = WritesInPlace().double()
    x = torch.randn(4, 3, dtype=F64)
    j = naive_jacobian(model, x)
    ref = torch.einsum("iap,jap->ij", j, j)
    plan = plan_empirical_ntk(model, x)
    k = empirical_ntk(model, x)
    torch.testing.assert_close(k, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
    # ntk_vp (cheapest) fails; structured (PReLU's weight by per-example Jacobians) runs
    assert plan.method in ("structured", "jacobian") and "ntk_vp" in plan.failures


def test_monte_carlo_over_a_factory_and_several_counts():
    def factory(seed):
        torch.manual_seed(seed)
        return EmbeddingMean()

    ids = _ids(torch.Generator().manual_seed(2), 3, 10, 4)
    runs = nk.monte_carlo_kernel(factory, ids, n_samples=[4, 16, 64], seed=7, method="jacobian")
    assert isinstance(runs, list) and len(runs) == 3
    alone = nk.monte_carlo_kernel(factory, ids, n_samples=64, seed=7, method="jacobian", get="ntk")
    torch.testing.assert_close(runs[-1].ntk, alone.ntk, rtol=1e-12, atol=0)
    # the 4-sample average is the mean of the first four networks' kernels, per output unit
    first = [factory(7 + s).double().eval() for s in range(4)]
    want = sum(empirical_ntk(m, ids) / 2 for m in first) / 4
    torch.testing.assert_close(runs[0].ntk, want, rtol=1e-12, atol=0)
    outs = [m(ids).detach() for m in first]
    torch.testing.assert_close(runs[0].nngp, sum(f @ f.T / 2 for f in outs) / 4, rtol=1e-12, atol=0)
    assert not torch.allclose(runs[0].ntk, runs[1].ntk)
    arch_runs = nk.monte_carlo_kernel(nk.mlp(2, 16), torch.randn(3, 4), n_samples=[1, 2], get="nngp")
    assert [r.ntk for r in arch_runs] == [None, None] and arch_runs[1].nngp.shape == (3, 3)


def test_linearize_any_model():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model, x, _ = _transformer(g)
    model = model.double()
    lin = nk.linearize(model, output_fn="logits")
    with torch.no_grad():
        torch.testing.assert_close(lin(**x), model(**x).logits, rtol=1e-12, atol=1e-12)
    # one gradient step moves f_lin by -lr · Θ(x, x) · ∂L/∂f exactly (L = Σ f_lin[0, 0])
    before = lin(**x).detach()
    lin(**x)[0, 0].backward()
    with torch.no_grad():
        for p in lin.parameters():
            p -= 1e-3 * p.grad
    after = lin(**x).detach()
    theta = empirical_ntk(model, x, output="full", output_fn="logits")
    want = before - 1e-3 * theta[:, 0, :, 0]
    torch.testing.assert_close(after, want, rtol=0, atol=1e-10 * float(before.abs().max()))
    rnn = SequenceClassifier(nn.GRU).double()
    seq = torch.randn(2, 4, 3, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(nk.linearize(rnn)(seq), rnn(seq), rtol=1e-12, atol=1e-12)


def test_diagonal_batch_of_the_structured_path():
    """Dense (Gram form), convolution (either form) and norm terms, per example only."""
    torch.manual_seed(0)
    mixed = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
                          nn.Conv2d(4, 3, 2), nn.Flatten(), nn.Linear(27, 8), nn.Tanh(),
                          nn.Linear(8, 2)).double()
    # wide kernels on few positions: the Gram form (see test_structured_gram_and_jacobian_forms_agree)
    gram = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 3, 2), nn.Flatten()).double()
    for model, x in ((mixed, torch.randn(5, 2, 4, 4, dtype=F64)), (gram, torch.randn(4, 8, 4, 4, dtype=F64))):
        j = naive_jacobian(model, x)
        want = j.square().sum((1, 2))
        for method in ("structured", "jacobian", "ntk_vp"):
            got = empirical_ntk(model, x, output="diagonal_batch", method=method, batch_size=2)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
