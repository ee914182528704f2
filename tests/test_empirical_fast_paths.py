"""The structured path's speed devices change nothing but speed.

- symmetric diagonal blocks cut into row chunks (only chunk pairs on/above the diagonal);
- model checks remembered per model structure (:mod:`ntkit.empirical._memo`);
- float32 products rerouted to oneDNN (:mod:`ntkit._fast_matmul`).

Each is compared with the path that does not use it: method="jacobian" (no chunks, no
memo), a fresh check, and torch's own ``mm``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import WeightUsedOutside
from ntkit import _fast_matmul
from ntkit.empirical import _params, empirical_ntk, plan_empirical_ntk, structured
from ntkit.empirical.jacobian import Accumulator
from ntkit.errors import ModelError

F64 = torch.float64


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 12), nn.Tanh(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2),
                        nn.Flatten(), nn.Linear(8, 2))
    return {"mlp": (mlp.double(), (3,)), "cnn": (cnn.double(), (1, 5, 5))}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("output", ["trace", "full", "diagonal"])
def test_symmetric_chunks_equal_the_plain_product(monkeypatch, name, output):
    model, shape = _models()[name]
    x = torch.randn(11, *shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    reference = empirical_ntk(model, x, output=output, method="jacobian")
    monkeypatch.setattr(structured, "SYMMETRIC_CHUNK_FLOPS", 0)
    monkeypatch.setattr(structured, "SYMMETRIC_CHUNK_MIN", 1)
    monkeypatch.setattr(structured, "SYMMETRIC_CHUNKS", 4)  # 11 examples: chunks of 2 and 3
    calls = []
    plain = Accumulator.mirror
    monkeypatch.setattr(Accumulator, "mirror",
                        lambda acc, r0, r1, c0, c1: calls.append((r1 - r0, c1 - c0))
                        or plain(acc, r0, r1, c0, c1))
    chunked = empirical_ntk(model, x, output=output, method="structured")
    groups = plan_empirical_ntk(model, x, output=output, method="structured").output_groups
    # chunks of 2, 3, 3, 3 examples: the 6 chunk pairs above the diagonal are mirrored (once
    # per group of outputs)
    assert sorted(calls) == sorted([(2, 3)] * 3 * groups + [(3, 3)] * 3 * groups)
    torch.testing.assert_close(chunked, reference, rtol=1e-10, atol=1e-12)
    assert torch.equal(chunked, chunked.transpose(0, 1) if output != "full"
                       else chunked.permute(1, 0, 3, 2))


class _Counter:
    def __init__(self, monkeypatch):
        self.verify = self.probe = 0
        verify, probe = structured.StructuredMethod._verify, _params._probe

        def counted_verify(method, x):
            self.verify += 1
            return verify(method, x)

        def counted_probe(*args):
            self.probe += 1
            return probe(*args)

        monkeypatch.setattr(structured.StructuredMethod, "_verify", counted_verify)
        monkeypatch.setattr(_params, "_probe", counted_probe)


def test_checks_run_once_per_structure(monkeypatch):
    count = _Counter(monkeypatch)
    model, shape = _models()["mlp"]
    x = torch.randn(6, *shape, dtype=F64)
    first = empirical_ntk(model, x, method="structured")
    assert (count.verify, count.probe) == (1, 1)
    with torch.no_grad():  # new weight values, same structure: no new checks, new kernel
        for p in model.parameters():
            p.mul_(1.5)
    again = empirical_ntk(model, x[:4], method="structured")  # other n: same checks apply
    assert (count.verify, count.probe) == (1, 1)
    torch.testing.assert_close(again, empirical_ntk(model, x[:4], method="jacobian"),
                               rtol=1e-10, atol=0)
    assert not torch.allclose(again, first[:4, :4])
    # anything the checks depend on runs them again
    empirical_ntk(model, x, method="structured", params=["0"])  # other selection
    assert count.verify == 2
    empirical_ntk(model, torch.randn(3, 1, 3, dtype=F64).reshape(3, 3), method="structured")
    assert count.verify == 2  # same example shape
    model.train(False)
    empirical_ntk(model, x, method="structured")  # training flag changed
    assert count.verify == 3
    model[2] = nn.Linear(12, 12).double()  # a new submodule
    empirical_ntk(model, x, method="structured")
    assert count.verify == 4


def test_memo_does_not_keep_models_alive():
    import gc
    import weakref

    from ntkit.empirical import _memo

    model = nn.Linear(3, 2).double()  # the model is itself the layer the memo describes
    empirical_ntk(model, torch.randn(4, 3, dtype=F64), method="structured")
    assert model in _memo._MEMO
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_remembered_refusal_still_refuses(monkeypatch):
    count = _Counter(monkeypatch)
    model = WeightUsedOutside().double()
    x = torch.randn(3, 4, dtype=F64)
    for _ in range(2):
        with pytest.raises(ModelError, match="used outside"):
            empirical_ntk(model, x, method="structured")
    assert count.verify == 1


@pytest.fixture
def forced_route(monkeypatch):
    """oneDNN route on (if this torch has it), counting its calls."""
    if _fast_matmul._works(_fast_matmul._onednn, torch.float32) is False:
        pytest.skip("this torch build has no oneDNN linear op")
    calls = []

    def counted(a, b):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return _fast_matmul._onednn(a, b)

    monkeypatch.setenv("NTKIT_FAST_MATMUL", "1")
    monkeypatch.setitem(_fast_matmul._ROUTES, torch.float32, counted)
    _fast_matmul.route.cache_clear()
    assert _fast_matmul.route(torch.float32) is counted
    calls.clear()  # the route's own test products
    yield calls
    _fast_matmul.route.cache_clear()


def test_matmul_route_equals_mm(forced_route):
    g = torch.Generator().manual_seed(0)
    for m, k, n in [(128, 256, 64), (300, 129, 77), (64, 1024, 32)]:
        a = torch.randn(m, k, generator=g)
        b = torch.randn(n, k, generator=g).T  # a transposed view, as in Gram products
        exact = (a.double() @ b.double()).float()
        fast = _fast_matmul.matmul(a, b)
        scale = float(exact.abs().max())
        assert float((fast - exact).abs().max()) <= 1e-5 * scale
    assert len(forced_route) == 3
    a64 = torch.randn(128, 256, dtype=F64)
    assert torch.equal(_fast_matmul.matmul(a64, a64.T), a64 @ a64.T)  # float64: torch's own mm
    a = torch.randn(128, 256, requires_grad=True)
    _fast_matmul.matmul(a, a.detach().T).sum().backward()  # needs a gradient: plain mm
    assert len(forced_route) == 3 and a.grad is not None


def test_dispatch_mode_reroutes_backward_products(forced_route):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128))
    x = torch.randn(96, 64)

    def grads():
        out = model(x)
        return torch.autograd.grad(out.square().sum(), list(model.parameters()))

    plain = grads()
    assert not forced_route
    with _fast_matmul.fast_matmuls():
        fast = grads()
    assert forced_route  # forward addmm and backward mm went to the route
    for p, f in zip(plain, fast):
        torch.testing.assert_close(f, p, rtol=1e-4, atol=1e-4 * float(p.abs().max()))
    model.double()
    x = x.double()
    plain = grads()
    with _fast_matmul.fast_matmuls():
        fast = grads()
    assert all(torch.equal(a, b) for a, b in zip(plain, fast))


def test_float32_structured_kernel_with_the_route(forced_route):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 5))
    x = torch.randn(40, 32)
    fast = empirical_ntk(model, x, output="full", method="structured")
    assert forced_route
    exact = empirical_ntk(model.double(), x.double(), output="full", method="jacobian")
    torch.testing.assert_close(fast.double(), exact, rtol=1e-4, atol=1e-4 * float(exact.abs().max()))
