"""The finite modules of issue 17's layers (``arch.build``) against their infinite-width kernels.

- Parameter-free linear layers (SumPool, AvgPool(normalize_edges), GlobalSumPool,
  ImageResize, FanInConcat on a spatial axis): the input kernel ``<x, x'>/C`` passes through
  them exactly, so ``arch.kernel`` equals the Gram matrix of the built module's outputs to
  1e-12 (no sampling).
- Layers with weights (ConvTranspose, ConvLocal, closed-form activations): the empirical
  NTK of built networks, averaged over seeds, approaches ``arch.kernel`` as widths grow.
"""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from conv_reference import empirical_ntk, one_thread


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def _x(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


LINEAR = {
    "sumpool": nk.SumPool((2, 3), (1, 2), "same"),
    "sumpool-circular": nk.SumPool(2, 1, "circular"),
    "avgpool-edges": nk.AvgPool(3, (2, 1), "same", normalize_edges=True),
    "resize-linear": nk.ImageResize((7, 2)),
    "resize-nearest": nk.ImageResize((3, 6), "nearest"),
    "concat-width": nk.serial(nk.FanOut(2), nk.parallel(nk.ImageResize((-1, 3), "nearest"), nk.Identity()),
                              nk.FanInConcat(axis=3)),
}


@pytest.mark.parametrize("name", sorted(LINEAR))
@pytest.mark.parametrize("readout", ["gap", "gsp", "flatten"])
def test_linear_layers_build_exactly_their_kernel(name, readout):
    if name == "concat-width" and readout != "flatten":
        pytest.skip("two unmixed copies of one branch: only their diagonal is known")
    x = _x(5, 3, 4, 5, seed=1)
    head = {"gap": nk.GlobalAvgPool, "gsp": nk.GlobalSumPool, "flatten": nk.Flatten}[readout]()
    arch = nk.serial(LINEAR[name], head)
    out = arch.build(x.shape[1:], seed=0)(x)
    width = out.shape[1] if readout == "flatten" else x.shape[1]
    gram = out @ out.T / width
    torch.testing.assert_close(arch.kernel(x, get="nngp"), gram, rtol=1e-12, atol=1e-14)


WEIGHTED = {
    "convT-same": lambda m: nk.serial(nk.ConvTranspose(m, 3, 2, W_std=1.3, b_std=0.2), nk.ReLU(),
                                      nk.Flatten(), nk.Dense(1)),
    "convT-valid-gap": lambda m: nk.serial(nk.ConvTranspose(m, (2, 3), (2, 1), "valid", b_std=0.1),
                                           nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(1, b_std=0.2)),
    "convlocal": lambda m: nk.serial(nk.ConvLocal(m, 3, W_std=1.4, b_std=0.2), nk.ReLU(),
                                     nk.ConvLocal(m, 2, 2, "valid"), nk.ReLU(), nk.GlobalSumPool(),
                                     nk.Dense(1)),
}


@pytest.mark.parametrize("name", sorted(WEIGHTED))
def test_empirical_ntk_of_built_nets_approaches_the_kernel(name):
    x = _x(3, 2, 3, 3, seed=2)
    errors = []
    for m in (8, 128):
        arch = WEIGHTED[name](m)
        exact = arch.kernel(x, get="ntk")
        errs = [float((empirical_ntk(arch.build(x.shape[1:], seed=s), x) - exact).norm() / exact.norm())
                for s in range(4)]
        errors.append(sum(e * e for e in errs) ** 0.5 / 2)
    small, large = errors
    assert large < 0.15, errors
    assert small / large > 2.0, errors  # 16x the width: 1/√m predicts 4


ACTIVATIONS = ["GELU", "Sin", "Cos", "Rbf", "Exp", "Gaussian", "Sign", "Hermite", "Monomial",
               "RectifiedMonomial", "Polynomial", "Erf"]


def _activation(name):
    return {"Hermite": nk.Hermite(2), "Monomial": nk.Monomial(2),
            "RectifiedMonomial": nk.RectifiedMonomial(2), "Polynomial": nk.Polynomial([0.2, 1.0, 0.3]),
            "Erf": nk.Erf(1.2, 0.8, 0.1),
            "Exp": nk.Exp(1.0, 0.5), "Sin": nk.Sin(1.0, 1.2, 0.3)}.get(name) or getattr(nk, name)()


@pytest.mark.slow
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_closed_form_activation_nets_converge(name):
    """Monte Carlo over finite nets: Dense-φ-Dense-φ-Dense, empirical NTK over 8 seeds."""
    x = _x(4, 3, seed=3) * 0.8
    errors = []
    for m in (16, 512):
        arch = nk.serial(nk.Dense(m, 1.2, 0.1), _activation(name), nk.Dense(m, 1.1, 0.1), _activation(name),
                         nk.Dense(1))
        exact = arch.kernel(x, get="ntk")
        mean = torch.stack([empirical_ntk(arch.build((3,), seed=s), x) for s in range(8)]).mean(0)
        errors.append(float((mean - exact).norm() / exact.norm()))
    # 32x the width: 1/√m predicts a ratio of 5.7 (heavy-tailed φ = relu² converges slowest).
    assert errors[1] < 0.2 and errors[0] / errors[1] > 2.5, errors
