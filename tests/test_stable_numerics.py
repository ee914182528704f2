"""ntkit.infinite.stable: determinant, angle and complements at every representable scale.

Reference: exact rational arithmetic (``fractions``) on the float inputs, so these tests do
not depend on any floating-point path.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import ntkit as nk
from ntkit.infinite import stable

EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23}


def _exact_det(a: float, b: float, c: float, shift: float = 0.0) -> Fraction:
    fa, fb, fc, fs = Fraction(a), Fraction(b), Fraction(c), Fraction(shift)
    return (fa + fs) * (fb + fs) - fc * fc


def _sqrt(f: Fraction) -> float:
    """√f of a non-negative rational of any size, to double precision."""
    if f <= 0:
        return 0.0
    k = (f.numerator.bit_length() - f.denominator.bit_length()) // 2
    return math.ldexp(math.sqrt(float(f / Fraction(4) ** k)), k)


def _cases(dtype):
    exps = range(-300, 301, 37) if dtype == torch.float64 else range(-36, 37, 6)
    rhos = (-1.0, -0.999999, -0.3, 0.0, 0.5, 0.999999, 1.0)
    for e1 in exps:
        for e2 in (e1, e1 + 3, e1 - 2):
            for rho in rhos:
                q11 = 1.7 * 10.0**e1
                q22 = 0.6 * 10.0**e2
                t = torch.tensor([q11, q22], dtype=dtype)
                a, b = float(t[0]), float(t[1])
                if not (math.isfinite(a) and math.isfinite(b)) or a == 0 or b == 0:
                    continue
                c = float(torch.tensor(rho * math.sqrt(a) * math.sqrt(b), dtype=dtype))
                yield a, b, c


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_root_det_matches_exact_arithmetic_at_every_scale(dtype, shift):
    cases = list(_cases(dtype))
    q11 = torch.tensor([c[0] for c in cases], dtype=dtype)
    q22 = torch.tensor([c[1] for c in cases], dtype=dtype)
    q12 = torch.tensor([c[2] for c in cases], dtype=dtype)
    got = stable.root_det(q11, q22, q12, shift=shift)
    assert got.dtype == dtype and bool(torch.isfinite(got).all())
    for k, (a, b, c) in enumerate(cases):
        exact = _exact_det(a, b, c, shift)
        want = _sqrt(exact)
        # det is formed in float64 with error δ <= 3ε64 (q11 q22 + q12²) <= 6ε64 p11 p22 (backward
        # stable); the root then errs by at most min(√δ, δ/(2√det)); plus rounding to dtype.
        root_scale = _sqrt((Fraction(a) + Fraction(shift)) * (Fraction(b) + Fraction(shift)))
        allowed = math.sqrt(6 * 2.0**-52) * root_scale
        if want:
            allowed = min(allowed, 3 * 2.0**-52 * root_scale * (root_scale / want))
        allowed += 2 * EPS[dtype] * want + torch.finfo(dtype).smallest_normal * EPS[dtype]
        g = float(got[k])
        assert abs(g - want) <= allowed, (a, b, c, g, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_self_pairs_are_exact_at_every_scale(dtype):
    top = 300 if dtype == torch.float64 else 37
    q = torch.tensor([10.0**e for e in range(-top, top + 1, 7)], dtype=dtype)
    q = q[q > 0]
    assert bool((stable.root_det(q, q, q) == 0).all())
    assert bool((stable.angle(q, q, q) == 0).all())
    assert bool((stable.difference_variance(q, q, q) == 0).all())
    assert bool((stable.sin_angle(q, q, q) == 0).all())
    assert bool((stable.angle(q, q, -q) == math.pi).all())


def test_correlation_and_complements_are_scale_free():
    q11 = torch.tensor([1e-300, 1.0, 1e300], dtype=torch.float64)
    q22 = torch.tensor([4e-300, 4.0, 4e300], dtype=torch.float64)
    q12 = 0.6 * torch.sqrt(q11) * torch.sqrt(q22)
    assert torch.allclose(stable.correlation(q11, q22, q12), torch.full((3,), 0.6, dtype=torch.float64))
    assert torch.allclose(stable.sin_angle(q11, q22, q12), torch.full((3,), 0.8, dtype=torch.float64))
    # E[(u - v)²] = q11 + q22 - 2 q12 = (1 + 4 - 2.4)·scale
    dv = stable.difference_variance(q11, q22, q12) / q11
    assert torch.allclose(dv, torch.full((3,), 2.6, dtype=torch.float64), rtol=1e-14)
    assert torch.allclose(stable.sum_variance(q11, q22, q12) / q11,
                          torch.full((3,), 7.4, dtype=torch.float64), rtol=1e-14)


def test_difference_variance_is_backward_stable():
    # E[(u - v)²] against exact rationals on PSD inputs, near copies included: error within a
    # few ε of the scale q11 + q22 (the naive sum has the same bound only without the q12 > 0
    # rewriting; the point here is that the rewriting loses nothing).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    size = 10.0 ** -torch.randint(0, 12, (40, 1), generator=g)
    y = x + torch.randn(40, 3, generator=g, dtype=torch.float64) * size
    q11, q22, q12 = (x * x).sum(1), (y * y).sum(1), (x * y).sum(1)
    got = stable.difference_variance(q11, q22, q12)
    for k in range(40):
        a, b, c = (Fraction(float(t[k])) for t in (q11, q22, q12))
        if a * b - c * c < 0:
            continue  # rounding made this triple indefinite
        want = float(a + b - 2 * c)
        assert abs(float(got[k]) - want) <= 8 * 2.0**-52 * float(a + b), k


def test_zero_variance_reads_as_uncorrelated():
    q11 = torch.tensor([0.0, 2.0], dtype=torch.float64)
    q22 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    q12 = torch.zeros(2, dtype=torch.float64)
    assert torch.equal(stable.angle(q11, q22, q12), torch.full((2,), math.pi / 2, dtype=torch.float64))
    assert torch.equal(stable.correlation(q11, q22, q12), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("scale", [1.0, 1e200], ids=["unit", "scaled"])
def test_arc_cosine_tile_with_zero_variances(dtype, scale):
    # A tile mixing zero variances (padded graph nodes, zero inputs) with positive ones:
    # zero-variance entries read as ρ = 0 (E[φ'φ'] = ab + c·π/2, E[φφ] = c·√det = 0 as
    # q12 = 0 there), the others as the arc-cosine formula with √det from exact rationals
    # (one pair has ρ = 1 exactly); 1e200 takes the power-of-two scaling path (float64).
    from ntkit.infinite.activations import ABReLU
    if dtype == torch.float32 and scale != 1.0:
        pytest.skip("1e200 is not a float32 variance")
    v1 = [0.0, 1.5, 2.0, 0.0]
    v2 = [3.0, 0.0, 0.5, 1.0, 0.0]
    cov = [[0.0, 0.0, 0.0, 0.0, 0.0], [1.2, 0.0, -0.8, 1.1, 0.0], [2.1, 0.0, 1.0, -1.4, 0.0],
           [0.0, 0.0, 0.0, 0.0, 0.0]]
    q11 = torch.tensor(v1, dtype=torch.float64)[:, None].mul(scale).to(dtype)
    q22 = torch.tensor(v2, dtype=torch.float64)[None, :].mul(scale).to(dtype)
    q12 = torch.tensor(cov, dtype=torch.float64).mul(scale).to(dtype)
    for a, b in ((0.0, 1.0), (0.1, 1.0), (-1.0, 1.0)):
        nngp, dot = ABReLU(a, b).expectations(q11, q22, q12, True)
        c = (a - b) ** 2 / (2 * math.pi)
        for i in range(4):
            for j in range(5):
                x, y, z = float(q11[i, 0]), float(q22[0, j]), float(q12[i, j])
                if x == 0 or y == 0:
                    assert abs(float(dot[i, j]) - (a * b + c * math.pi / 2)) <= 4 * EPS[dtype]
                    assert float(nngp[i, j]) == 0.0
                    continue
                root = _sqrt(_exact_det(x, y, z))
                want_dot = a * b + c * (math.pi - math.atan2(root, z))  # θ from the exact √det
                want_nngp = z * want_dot + c * root
                assert abs(float(dot[i, j]) - want_dot) <= 64 * EPS[dtype], (a, b, i, j)
                scale_ij = math.sqrt(x) * math.sqrt(y)
                assert abs(float(nngp[i, j]) - want_nngp) <= 64 * EPS[dtype] * scale_ij, (a, b, i, j)


def test_root_det_gradient_is_finite_where_det_vanishes():
    q = torch.tensor([2.0, 3.0], dtype=torch.float64, requires_grad=True)
    stable.root_det(q, q, q).sum().backward()
    assert bool(torch.isfinite(q.grad).all())


def test_check_finite_names_the_fix():
    stable.check_finite(torch.ones(3), "x")
    with pytest.raises(nk.NtkitError, match="float64"):
        stable.check_finite(torch.tensor([1.0, float("inf")]), "the kernel")


def test_issue_examples_are_fixed():
    x = torch.rand(4, 10, generator=torch.Generator().manual_seed(0))
    arch = nk.serial(nk.Dense(1, W_std=1e10), nk.ReLU(), nk.Dense(1))
    k32 = arch.kernel(x, dtype=torch.float32, get="ntk")
    k64 = arch.kernel(x, get="ntk")
    assert bool(torch.isfinite(k32).all())
    assert torch.allclose(k32.double(), k64, rtol=1e-5)
    e = torch.tensor([[1.0, 0.0]])
    # Erf self kernel: ntk = q·(2/π)/√(q + 1/4) with q = W_std²/2 (fan_in 2), dot at u = v.
    for w, dtype in ((1e4, torch.float32), (1e8, torch.float64)):
        q = w * w / 2
        want = q * (2 / math.pi) / math.sqrt(q + 0.25)
        got = float(nk.serial(nk.Dense(1, W_std=w), nk.Erf()).kernel(e, dtype=dtype, get="ntk"))
        assert abs(got - want) <= 1e-5 * want


def test_overflowing_variance_raises_with_the_fix():
    x = torch.ones(2, 3)
    arch = nk.serial(nk.Dense(4, W_std=1e30), nk.ReLU(), nk.Dense(1))
    with pytest.raises(nk.NtkitError, match="float64"):
        arch.kernel(x, dtype=torch.float32)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
@pytest.mark.parametrize("layer", [nk.ReLU(), nk.Abs(), nk.Erf()], ids=["relu", "abs", "erf"])
def test_gradients_stay_finite_at_every_scale(layer, scale):
    # Self pairs (ρ = 1), antiparallel pairs (ρ = -1) and a generic one, in float32.
    q = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float32) * scale
    q11 = q.clone().requires_grad_(True)
    q22 = torch.tensor([1.0, 1.0, 0.5], dtype=torch.float32) * scale
    q12 = (torch.tensor([1.0, -1.0, 0.3], dtype=torch.float32) * scale).requires_grad_(True)
    nngp, dot = layer.expectations(q11, q22, q12, True)
    (nngp.sum() / scale + dot.sum()).backward()
    assert bool(torch.isfinite(q11.grad).all()) and bool(torch.isfinite(q12.grad).all())


def test_all_finite_sum_shortcut_is_exact():
    """The one-sum shortcut never hides a NaN/Inf and never blames finite entries whose sum
    overflows (those are then checked entry by entry); both below and above the chunk size."""
    from ntkit._validation import all_finite

    for n in (10, 3000):
        big = torch.full((n, n // 10 + 1), 3e38, dtype=torch.float32)   # finite; sum overflows
        assert all_finite(big, chunk=1000)
        for bad in (float("nan"), float("inf"), -float("inf")):
            t = torch.ones(n, n // 10 + 1, dtype=torch.float64)
            t[n // 2, 0] = bad
            assert not all_finite(t, chunk=1000)
        pair = torch.zeros(n, dtype=torch.float32)
        pair[0], pair[-1] = float("inf"), -float("inf")           # sums to NaN, not 0
        assert not all_finite(pair, chunk=1000)
    assert all_finite(torch.empty(0)) and all_finite(torch.arange(3))


@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 5), (4, 1, 3, 2)])
def test_unravel_equals_torch(shape):
    flat = torch.randint(0, math.prod(shape), (30,), generator=torch.Generator().manual_seed(0))
    ours, theirs = stable.unravel(flat, shape), torch.unravel_index(flat, shape)
    assert len(ours) == len(shape)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
