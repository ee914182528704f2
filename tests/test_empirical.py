"""nk.empirical_ntk: every method against a naive per-example autograd loop, and each other.

The reference :func:`naive_jacobian` uses nothing but ``torch.autograd.grad`` on one example
and one output at a time (no torch.func, no hooks), so it shares no code path with ntkit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk
from conftest import WeightUsedOutside
from ntkit.empirical import empirical_ntk, plan_empirical_ntk
from ntkit.errors import MemoryBudgetError, ModelError, ParameterError, ShapeError
from ntkit.theory import TwoLayerNet, one_d_finite_kernel

METHODS = ["jacobian", "ntk_vp", "structured", "auto"]
F64 = torch.float64



def naive_jacobian(model: nn.Module, x: torch.Tensor, params=None) -> torch.Tensor:
    """``(n, o, P)``: one ``autograd.grad`` per example and output."""
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    rows = []
    for xi in x:
        out = model(xi[None]).reshape(-1)
        per_output = []
        for o in range(out.numel()):
            grads = torch.autograd.grad(out[o], params, retain_graph=True, allow_unused=True)
            per_output.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                         for g, p in zip(grads, params)]))
        rows.append(torch.stack(per_output))
    return torch.stack(rows).detach()


def naive_full(model, x1, x2, params=None) -> torch.Tensor:
    j1 = naive_jacobian(model, x1, params)
    j2 = j1 if x2 is None else naive_jacobian(model, x2, params)
    return torch.einsum("iap,jbp->ijab", j1, j2)


class Residual(nn.Module):
    """A residual MLP: h + Linear(tanh(h))."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 12)
        self.block = nn.Sequential(nn.Tanh(), nn.Linear(12, 12))
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(torch.relu(h + self.block(h)))


class WithBuffers(nn.Module):
    """A frozen input normalization held in buffers, an MLP and BatchNorm (eval mode)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.linspace(-1, 1, 4))
        self.register_buffer("scale", torch.linspace(0.5, 2, 4))
        self.net = nn.Sequential(nn.Linear(4, 10), nn.ELU(), nn.Linear(10, 2))
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(self.net((x - self.shift) * self.scale))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2),
                         nn.Flatten(), nn.Linear(8, 2))


def with_buffers():
    torch.manual_seed(3)
    model = WithBuffers()
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return model.eval()


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)), (4,)),
    "cnn": (cnn, (1, 5, 5)),
    "residual": (Residual, (4,)),
    "buffers": (with_buffers, (4,)),
}


@pytest.fixture(params=sorted(MODELS))
def case(request):
    torch.manual_seed(0)
    make, shape = MODELS[request.param]
    model = make().double()
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(5, *shape, generator=g, dtype=F64)
    x2 = torch.randn(3, *shape, generator=g, dtype=F64)
    return request.param, model, x1, x2


def test_all_methods_and_outputs_equal_the_naive_loop(case):
    _, model, x1, x2 = case
    reference = naive_full(model, x1, x2)
    scale = reference.abs().max()
    for method in METHODS:
        full = empirical_ntk(model, x1, x2, output="full", method=method, batch_size=2)
        trace = empirical_ntk(model, x1, x2, output="trace", method=method)
        diag = empirical_ntk(model, x1, x2, output="diagonal", method=method, batch_size=3)
        assert full.shape == (5, 3, *reference.shape[2:]) and full.dtype == F64
        torch.testing.assert_close(full, reference, rtol=0, atol=1e-10 * scale)
        torch.testing.assert_close(trace, full.diagonal(dim1=2, dim2=3).sum(-1), rtol=0,
                                   atol=1e-10 * scale)
        torch.testing.assert_close(diag, full.diagonal(dim1=2, dim2=3), rtol=0, atol=1e-10 * scale)


def test_structured_applies_to_the_acceptance_models(case):
    _, model, x1, x2 = case
    plan = plan_empirical_ntk(model, x1, x2, output="full")
    assert plan.structured_reason is None and set(plan.costs) == {"jacobian", "ntk_vp", "structured"}
    assert plan.method == min(plan.costs, key=plan.costs.get)


def test_symmetric_half_equals_explicit_pair_and_is_psd(case):
    _, model, x1, _ = case
    x1 = torch.cat([x1, x1[:2] * 0.5])
    for method in ("jacobian", "ntk_vp", "structured"):
        k = empirical_ntk(model, x1, method=method, batch_size=3, output="full")
        explicit = empirical_ntk(model, x1, x1.clone(), method=method, output="full")
        torch.testing.assert_close(k, explicit, rtol=0, atol=1e-12 * explicit.abs().max())
        flat = k.permute(0, 2, 1, 3).reshape(k.shape[0] * k.shape[2], -1)
        assert torch.equal(flat, flat.T)
        eig = torch.linalg.eigvalsh(flat)
        assert eig.min() >= -1e-10 * eig.max()
        trace = empirical_ntk(model, x1, method=method, batch_size=2)
        assert torch.equal(trace, trace.T)
        torch.testing.assert_close(trace, k.diagonal(dim1=2, dim2=3).sum(-1), rtol=0,
                                   atol=1e-12 * explicit.abs().max())


def test_blocks_and_memory_budget_do_not_change_the_result():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4)).double()
    x = torch.randn(11, 6, dtype=F64)
    whole = empirical_ntk(model, x, output="full", method="jacobian", batch_size=11)
    for method in ("jacobian", "ntk_vp", "structured"):
        budget = 40_000 if method == "structured" else 60_000  # (one block of 11 fits 60 kB)
        small = plan_empirical_ntk(model, x, output="full", method=method, memory_budget=budget)
        assert small.block < 11  # the budget forces several blocks
        blocked = empirical_ntk(model, x, output="full", method=method, memory_budget=budget)
        torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-12 * whole.abs().max())
    with pytest.raises(MemoryBudgetError, match="memory_budget"):
        empirical_ntk(model, x, method="jacobian", memory_budget=1000)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_structured_layer_geometries_against_naive():
    """Padding modes, stride, dilation, groups, Conv1d/3d, sequences, shared weights."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(5, 5), nn.Linear(5, 2), nn.Linear(5, 5)
            self.c.weight = self.a.weight  # tied across two layers, and `a` is called twice

        def forward(self, x):
            return self.b(torch.tanh(self.c(torch.tanh(self.a(torch.tanh(self.a(x)))))))

    class Sequence(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.out = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):  # (n, T, 4): the inner layer acts at every time step
            return self.out(torch.relu(self.inner(x)).mean(1))

    torch.manual_seed(0)
    cases = [
        (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                       nn.Conv2d(4, 6, (3, 2), stride=(2, 1), dilation=(1, 2), groups=2), nn.Tanh(),
                       nn.Conv2d(6, 4, 2, padding="same", bias=False), nn.Flatten(),
                       nn.Linear(4 * 3 * 4, 2)), (2, 7, 6)),
        (nn.Sequential(nn.Conv1d(3, 4, 3, padding=2, padding_mode="circular"), nn.ReLU(),
                       nn.Conv1d(4, 2, 2, stride=2), nn.Flatten(), nn.Linear(10, 2)), (3, 9)),
        (nn.Sequential(nn.Conv3d(1, 2, 2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 2)),
         (1, 3, 3, 3)),
        (Shared(), (5,)),
        (Sequence(), (5, 4)),
    ]
    for model, shape in cases:
        model = model.double()
        x1, x2 = torch.randn(3, *shape, dtype=F64), torch.randn(2, *shape, dtype=F64)
        reference = naive_full(model, x1, x2)
        for output in ("full", "trace"):
            k = empirical_ntk(model, x1, x2, output=output, method="structured")
            want = reference if output == "full" else reference.diagonal(dim1=2, dim2=3).sum(-1)
            torch.testing.assert_close(k, want, rtol=0, atol=1e-10 * want.abs().max())


def test_structured_normalization_layers_against_naive():
    """Affine parameters of BatchNorm (eval), LayerNorm (over several axes) and GroupNorm."""
    torch.manual_seed(0)
    bn_cnn = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                           nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4), nn.Tanh(), nn.Flatten(),
                           nn.Linear(16, 3))
    for p in bn_cnn.parameters():  # move γ, β away from (1, 0)
        p.data.add_(0.3 * torch.randn_like(p))
    bn_cnn[1].running_mean.uniform_(-1, 1)
    bn_cnn[1].running_var.uniform_(0.5, 2)
    ln_seq = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Unflatten(2, (2, 3)),
                           nn.LayerNorm((2, 3)), nn.Flatten(), nn.Linear(18, 2))
    for model, shape in ((bn_cnn.eval(), (2, 4, 4)), (ln_seq, (3, 4))):
        model = model.double()
        x1, x2 = torch.randn(3, *shape, dtype=F64), torch.randn(2, *shape, dtype=F64)
        assert plan_empirical_ntk(model, x1, x2).structured_reason is None
        reference = naive_full(model, x1, x2)
        for output in ("full", "trace"):
            k = empirical_ntk(model, x1, x2, output=output, method="structured")
            want = reference if output == "full" else reference.diagonal(dim1=2, dim2=3).sum(-1)
            torch.testing.assert_close(k, want, rtol=0, atol=1e-10 * want.abs().max())


def test_structured_gram_and_jacobian_forms_agree():
    """A wide-kernel convolution with few positions uses the Gram form; check it is exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 3, 2), nn.Flatten()).double()
    x = torch.randn(4, 8, 4, 4, dtype=F64)
    from ntkit.empirical._params import prepare
    from ntkit.empirical.structured import StructuredMethod

    method = StructuredMethod(prepare(model, None, x[:2]), x[:2], 4, 4, "full")
    assert "gram" in {t.form for t in method.terms}  # else this test checks nothing new
    reference = naive_full(model, x, None)
    for output in ("full", "diagonal"):
        k = empirical_ntk(model, x, output=output, method="structured")
        want = reference if output == "full" else reference.diagonal(dim1=2, dim2=3)
        torch.testing.assert_close(k, want, rtol=0, atol=1e-10 * want.abs().max())


def test_ntkit_built_networks_use_their_scales():
    """arch.build modules (NTK parameterization: W_std/√fan_in in forward)."""
    arch = nk.serial(nk.Dense(16, W_std=1.7, b_std=0.3), nk.Erf(), nk.Dense(3, W_std=0.8, b_std=0.2))
    model = arch.build((5,), seed=0)
    x = torch.randn(4, 5, dtype=F64)
    reference = naive_full(model, x, None)
    for method in ("structured", "auto"):
        torch.testing.assert_close(empirical_ntk(model, x, output="full", method=method), reference,
                                   rtol=0, atol=1e-12 * reference.abs().max())
    standard = nk.serial(nk.Dense(8, W_std=1.3, b_std=0.1, parameterization="standard"), nk.ReLU(),
                         nk.Dense(2, parameterization="standard")).build((5,), seed=1)
    torch.testing.assert_close(empirical_ntk(standard, x, method="structured"),
                               naive_full(standard, x, None).diagonal(dim1=2, dim2=3).sum(-1),
                               rtol=1e-12, atol=0)


def test_ntkit_conv_networks():
    conv = pytest.importorskip("ntkit.infinite.conv")
    pooling = pytest.importorskip("ntkit.infinite.pooling")
    arch = nk.serial(conv.Conv(4, (3, 3), padding="same", W_std=1.4, b_std=0.2), nk.ReLU(),
                     conv.Conv(3, (2, 2), padding="valid"), pooling.Flatten(), nk.Dense(2))
    model = arch.build((2, 4, 4), seed=0)
    x = torch.randn(3, 2, 4, 4, dtype=F64)
    assert plan_empirical_ntk(model, x).structured_reason is None
    reference = naive_full(model, x, None).diagonal(dim1=2, dim2=3).sum(-1)
    torch.testing.assert_close(empirical_ntk(model, x, method="structured"), reference,
                               rtol=0, atol=1e-12 * reference.abs().max())


def test_fallback_when_structure_does_not_hold():
    class TimeMajor(nn.Module):
        """Puts the batch on the second axis before a Linear layer."""

        def __init__(self):
            super().__init__()
            self.inner, self.out = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):  # (n, 2, 4) -> (2, n, 4)
            return self.out(torch.relu(self.inner(x.transpose(0, 1))).sum(0))

    torch.manual_seed(0)
    cases = [
        (WeightUsedOutside(), (4,), "used outside"),
        (TimeMajor(), (2, 4), "other examples"),
        (nn.Sequential(nn.PReLU(), nn.PReLU()), (4,), "no selected parameter"),
    ]
    for model, shape, reason in cases:
        model = model.double()
        x = torch.randn(2, *shape, dtype=F64)  # 2 examples: TimeMajor's first axis has length 2
        plan = plan_empirical_ntk(model, x)
        assert plan.method in ("jacobian", "ntk_vp") and reason in plan.structured_reason
        with pytest.raises(ModelError, match="structured.*" + reason):
            empirical_ntk(model, x, method="structured")
        reference = naive_full(model, x, None).diagonal(dim1=2, dim2=3).sum(-1)
        torch.testing.assert_close(empirical_ntk(model, x), reference, rtol=1e-12, atol=0)


def test_auto_picks_the_cheapest_estimate_and_structured_on_stacks():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                        nn.Linear(128, 10)).double()
    x = torch.randn(32, 16, dtype=F64)
    for output in ("trace", "full"):
        plan = plan_empirical_ntk(mlp, x, output=output)
        assert plan.method == "structured"
        assert plan.costs["structured"] * 5 < min(plan.costs["jacobian"], plan.costs["ntk_vp"])
    small_cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                              nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10)).double()
    plan = plan_empirical_ntk(small_cnn, torch.randn(16, 1, 8, 8, dtype=F64), output="full")
    assert plan.method == "structured" and plan.method == min(plan.costs, key=plan.costs.get)
    # A net of PReLUs alone falls back to the cheaper of the two general methods.
    prelu = nn.Sequential(nn.PReLU(16), nn.PReLU()).double()
    plan = plan_empirical_ntk(prelu, x, output="full")
    assert set(plan.costs) == {"jacobian", "ntk_vp"} and plan.method == min(plan.costs, key=plan.costs.get)


def test_params_selection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    x = torch.randn(5, 4, dtype=F64)
    first = [model[0].weight, model[0].bias]
    reference = naive_full(model, x, None, params=first)
    for params in (["0.weight", "0.bias"], "0", ["0"], first,
                   lambda name, p: name.startswith("0.")):
        for method in ("structured", "jacobian", "ntk_vp"):
            k = empirical_ntk(model, x, output="full", params=params, method=method)
            torch.testing.assert_close(k, reference, rtol=0, atol=1e-12 * reference.abs().max())
    # frozen parameters are skipped by default, but can be selected by name
    model[2].requires_grad_(False)
    torch.testing.assert_close(empirical_ntk(model, x, output="full"), reference, rtol=1e-12, atol=0)
    everything = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert not torch.allclose(empirical_ntk(model, x, params=everything),
                              empirical_ntk(model, x))
    model[2].requires_grad_(True)
    # weight without its bias, and a bias alone, through the structured path
    for names in (["2.weight"], ["0.bias"], ["0.weight", "2.bias"]):
        chosen = [dict(model.named_parameters())[n] for n in names]
        ref = naive_full(model, x, None, params=chosen)
        k = empirical_ntk(model, x, output="full", params=names, method="structured")
        torch.testing.assert_close(k, ref, rtol=0, atol=1e-12 * ref.abs().max())


def test_lecture_one_d_net_formula_equals_autograd():
    """(1/m) Σ σ(b_i x)σ(b_i x') + (1/m) Σ a_i² x x' σ'(b_i x)σ'(b_i x') = empirical NTK."""
    xs = torch.tensor([-2.0, -0.5, 0.3, 1.1, 1.7], dtype=F64)
    for activation in ("relu", "erf", "tanh"):
        net = TwoLayerNet(1, 64, activation=activation, seed=2)
        formula = one_d_finite_kernel(xs, None, net.a.detach(), net.B.detach()[:, 0], activation)
        for method in ("jacobian", "ntk_vp", "auto"):
            k = empirical_ntk(net, xs[:, None], method=method)
            torch.testing.assert_close(k, formula, rtol=0, atol=1e-12 * formula.abs().max())
        full = empirical_ntk(net, xs[:, None], xs[:3, None], output="full")
        assert full.shape == (5, 3, 1, 1)  # a scalar-output model (n,) has o = 1


def test_float32_numpy_inputs_and_output_layouts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 6), nn.Unflatten(1, (2, 3)))
    x = np.random.default_rng(0).standard_normal((4, 3))  # float64 NumPy, float32 model
    reference = naive_full(model, torch.as_tensor(x, dtype=torch.float32), None)
    assert reference.shape == (4, 4, 6, 6)  # outputs (n, 2, 3) flatten to o = 6
    for method in ("jacobian", "ntk_vp", "structured"):
        k = empirical_ntk(model, x, output="full", method=method)
        assert k.dtype == torch.float32
        torch.testing.assert_close(k, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


def test_works_under_no_grad_and_returns_no_graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x = torch.randn(4, 3, dtype=F64)
    reference = naive_full(model, x, None).diagonal(dim1=2, dim2=3).sum(-1)
    with torch.no_grad():
        for method in METHODS:
            k = empirical_ntk(model, x, method=method)
            assert not k.requires_grad
            torch.testing.assert_close(k, reference, rtol=1e-12, atol=0)


def test_model_is_left_untouched():
    torch.manual_seed(0)
    model = with_buffers().double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    empirical_ntk(model, torch.randn(4, 4, dtype=F64), method="jacobian")
    empirical_ntk(model, torch.randn(4, 4, dtype=F64), params="net", method="structured")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(not m._forward_hooks for m in model.modules())


class Lambda(nn.Module):
    """A parameterized wrapper around a function of the input."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.w = nn.Parameter(torch.ones(3, dtype=F64))

    def forward(self, x):
        return self.fn(x * self.w)


class CountingNet(nn.Module):
    """Counts its calls in a buffer: an impure forward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1).double()
        self.register_buffer("calls", torch.zeros((), dtype=F64))

    def forward(self, x):
        self.calls += 1
        return self.lin(x)


def test_bad_inputs_give_clear_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    x = torch.randn(4, 3, dtype=F64)
    with pytest.raises(ShapeError, match="same example shape"):
        empirical_ntk(model, x, torch.randn(2, 5, dtype=F64))
    with pytest.raises(ParameterError, match="selects no parameter"):
        empirical_ntk(model, x, params=lambda n, p: False)
    with pytest.raises(ParameterError, match="unknown parameter"):
        empirical_ntk(model, x, params=["nope"])
    with pytest.raises(ParameterError, match="not a parameter of this model"):
        empirical_ntk(model, x, params=[torch.zeros(2)])
    with pytest.raises(ModelError, match="batch axis"):
        empirical_ntk(Lambda(lambda z: z.sum()), x)
    with pytest.raises(ModelError, match="batch axis"):
        empirical_ntk(Lambda(lambda z: z.sum(0)), x)  # (3,) for 4 examples
    with pytest.raises(ModelError, match="no floating-point parameters"):
        empirical_ntk(nn.ReLU(), x)
    with pytest.raises(ModelError, match=r"torch\.nn\.Module"):
        empirical_ntk(lambda z: z, x)
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    with pytest.raises(ModelError, match=r"model\.eval\(\)") as info:
        empirical_ntk(bn, x)
    assert "track_running_stats=False" not in str(info.value)  # it cannot work in training mode
    empirical_ntk(bn.eval(), x)  # fine once in eval mode
    with pytest.raises(ModelError, match=r"eval\(\)"):
        empirical_ntk(nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1)).double(), x)
    with pytest.raises(ModelError, match="changed buffer 'calls'"):
        empirical_ntk(CountingNet(), x)
    with pytest.raises(ModelError, match="draws random numbers"):
        empirical_ntk(Lambda(lambda z: z + torch.rand_like(z)), x)  # random, no Dropout module
    coupled = Lambda(lambda z: z - z.mean(0))  # batch statistics without BatchNorm
    with pytest.raises(ModelError, match="depends on the other examples"):
        empirical_ntk(coupled, x)
    with pytest.raises(ModelError, match="failed"):
        empirical_ntk(model, torch.randn(4, 7, dtype=F64))
    with pytest.raises(ParameterError, match="output"):
        empirical_ntk(model, x, output="all")
    with pytest.raises(ParameterError, match="method"):
        empirical_ntk(model, x, method="fast")
    with pytest.raises(ParameterError, match="batch_size"):
        empirical_ntk(model, x, batch_size=0)
    with pytest.raises(nk.errors.NonFiniteError):
        empirical_ntk(model, torch.full((2, 3), float("nan"), dtype=F64))
