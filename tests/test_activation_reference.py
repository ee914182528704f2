"""Acceptance table for issue 13: activation kernels against an independent high-precision reference.

Rows: activations × variances (closed forms 1e-30 … 1e30 in both dtypes and 1e±250 in float64,
quadrature 1e-4 … 1e4) × correlations (−1, −0.999999, 0, 0.5, 0.999999, 1, self pairs), with
equal variances and with ``q11 = 4 q22``. The reference values come from
``tests/data/make_activation_reference.py`` (mpmath at 60+ digits for the closed forms; nested
adaptive scipy quadrature, checked in both integration orders, for the others), computed from
the exact float inputs stored in the fixture.

Tolerances: closed forms ``1e-10`` relative in float64; quadrature ``tol = 1e-8`` (the
documented default) relative to the Cauchy–Schwarz scale ``√(E[φ(u)²]E[φ(v)²])`` (the values
of odd activations vanish at ρ = 0); float32 ``1e-5`` (relative for closed forms, down to the
smallest normal number; to the scale for quadrature).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ntkit as nk

ROWS = json.loads((Path(__file__).parent / "data" / "activation_reference.json").read_text())
LAYERS = {
    "relu": nk.ReLU,
    "leaky_relu": lambda: nk.LeakyReLU(0.1),
    "abs": nk.Abs,
    "abrelu": lambda: nk.ABReLU(-0.4, 1.3),
    "erf": nk.Erf,
    "tanh": nk.Tanh,
    "sigmoid": nk.Sigmoid,
    "gelu": nk.GELU,
    "softplus": nk.Softplus,
    "silu": lambda: nk.Activation(torch.nn.functional.silu, name="silu"),  # autograd derivative
}
TOL = {("closed", torch.float64): 1e-10, ("quadrature", torch.float64): 1e-8,
       ("closed", torch.float32): 1e-5, ("quadrature", torch.float32): 1e-5}


def test_fixture_covers_the_table():
    names = {r["activation"] for r in ROWS}
    assert names == set(LAYERS)
    labels = {r["label"].split(",")[0] for r in ROWS}
    assert {"self", "rho=-1.0", "rho=-0.999999", "rho=0.0", "rho=0.5", "rho=0.999999", "rho=1.0"} <= labels
    for name in names:
        qs = {float.fromhex(r["q22"]) for r in ROWS if r["activation"] == name}
        assert min(qs) <= 1.01e-4 and max(qs) >= 0.99e4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_kernels_match_high_precision_reference(name, dtype):
    rows = [r for r in ROWS if r["activation"] == name and (dtype == torch.float64 or r["float32"])]
    kind = rows[0]["kind"]
    tol = TOL[kind, dtype]

    def column(key):
        return torch.tensor([float.fromhex(r[key]) for r in rows], dtype=dtype)

    nngp, dot = LAYERS[name]().expectations(column("q11"), column("q22"), column("q12"), True)
    floor = torch.finfo(dtype).smallest_normal
    failures = []
    for k, r in enumerate(rows):
        for key, got in (("nngp", nngp[k]), ("dot", dot[k])):
            ref = r[key]
            scale = r[f"scale_{key}"] if kind == "quadrature" else max(abs(ref), floor)
            err = abs(float(got) - ref) / scale
            if not err <= tol:
                failures.append(f"{key} {r['label']} q11={float.fromhex(r['q11']):.3g} "
                                f"q22={float.fromhex(r['q22']):.3g}: {float(got)!r} vs {ref!r} ({err:.1e})")
    assert not failures, f"{len(failures)} of {2 * len(rows)} beyond {tol}:\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("c", [10.0**k for k in range(-15, 16, 2)] + [1e15])
def test_bias_free_relu_ntk_scales_exactly_in_float32(c):
    # NTK(c·x) = c²·NTK(x) for a bias-free ReLU net (positive homogeneity), every c where
    # the result fits float32.
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    arch = nk.serial(nk.Dense(64, W_std=2**0.5), nk.ReLU(), nk.Dense(64, W_std=2**0.5), nk.ReLU(),
                     nk.Dense(1))
    base = arch.kernel(x, dtype=torch.float32, get="ntk").double()
    scaled = arch.kernel(x * c, dtype=torch.float32, get="ntk").double() / (c * c)
    assert torch.allclose(scaled, base, rtol=1e-6, atol=0)


def test_no_degree_returns_a_non_finite_kernel():
    from ntkit.infinite.quadrature import MAX_DEGREE, gaussian_expectation

    one = torch.tensor([10.0], dtype=torch.float64)
    d = torch.tanh
    for degree in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 187, 200, MAX_DEGREE):
        for q12 in (one, 0.5 * one):
            v = gaussian_expectation(d, d, one, one, q12, degree=degree)
            assert bool(torch.isfinite(v).all()), degree
    x = torch.tensor([[1.0, 0.0], [0.5, 0.866]])
    for degree in (1, 7, 40):
        k = nk.serial(nk.Dense(1, W_std=20**0.5), nk.Tanh(degree=degree)).kernel(x)
        assert bool(torch.isfinite(k.ntk).all()) and bool(torch.isfinite(k.nngp).all())
    for degree in (MAX_DEGREE + 1, 1000, 5000, 10_000):
        with pytest.raises(nk.NtkitError, match=str(MAX_DEGREE)):
            nk.Tanh(degree=degree)


def test_issue_tanh_example_is_accurate_now():
    # Tanh at pre-activation variance 10 (issue 13): compare with the reference-grade degree.
    x = [[1.0, 0.0], [0.5, 0.866]]
    got = nk.serial(nk.Dense(1, W_std=20**0.5), nk.Tanh()).kernel(x)
    ref = nk.serial(nk.Dense(1, W_std=20**0.5), nk.Tanh(degree=24)).kernel(x)
    assert torch.allclose(got.ntk, ref.ntk, rtol=1e-8, atol=0)
    assert torch.allclose(got.nngp, ref.nngp, rtol=1e-8, atol=0)


def test_overflowing_activation_raises_with_the_fix():
    arch = nk.serial(nk.Dense(1, W_std=40.0), nk.Activation(torch.exp, name="exp"))
    with pytest.raises(nk.NtkitError, match="rescale"):
        arch.kernel(torch.ones(2, 1, dtype=torch.float64))


def test_tolerance_is_validated():
    with pytest.raises(nk.NtkitError, match="tol"):
        nk.Tanh(tol=0.0)
