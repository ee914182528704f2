"""Make ``activation_reference.json``: high-precision activation kernels for the acceptance test.

For ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])`` and each activation ``φ`` it records
``E[φ(u)φ(v)]`` (nngp) and ``E[φ'(u)φ'(v)]`` (dot), plus the Cauchy–Schwarz scales
``√(E[φ(u)²] E[φ(v)²])`` and ``√(E[φ'(u)²] E[φ'(v)²])`` used to normalize errors where a value
is 0 (e.g. an odd activation at ρ = 0). Every input is a float32 number (so one reference
serves float32 and float64), stored exactly as ``float.hex``; the references are computed
from those exact values, independently of ntkit:

- closed forms (ReLU, LeakyReLU, Abs, ABReLU, Erf): Cho & Saul's arc-cosine and Williams'
  formulas in their textbook ``arccos ρ`` / ``arcsin`` form, in mpmath at 60 digits;
- quadrature activations (Tanh, Sigmoid, GELU, Softplus, SiLU through ``Activation``):
  nested adaptive scipy quadrature (QUADPACK) in the conditional form
  ``E[φ(u) E[φ(v) | u]]``, with breakpoints at the activation's transition scale; the two
  integration orders (u outer / v outer) are both computed where ``q11 != q22`` and must
  agree to 1e-11 (the script stops otherwise).

Reproduce (about 15 minutes on two cores; the argument is the number of processes):
    .venv/bin/python tests/data/make_activation_reference.py 2
"""

from __future__ import annotations

import json
import math
import multiprocessing
import sys
import warnings
from pathlib import Path

import mpmath as mp
import numpy as np
from scipy import integrate, special

OUT = Path(__file__).with_name("activation_reference.json")
CORRELATIONS = (-1.0, -0.999999, 0.0, 0.5, 0.999999, 1.0)
CLOSED_VARIANCES = (1e-30, 1e-6, 1e-3, 1.0, 1e3, 1e6, 1e30)
F64_ONLY_VARIANCES = (1e-250, 1e250)
QUAD_VARIANCES = (1e-4, 1e-2, 1.0, 1e2, 1e4)
ABRELU = {"relu": (0.0, 1.0), "leaky_relu": (0.1, 1.0), "abs": (-1.0, 1.0), "abrelu": (-0.4, 1.3)}
mp.mp.dps = 60


def f32(x: float) -> float:
    return float(np.float32(x))


def triples(variances, f32_exact=True, ratio_correlations=CORRELATIONS):
    """(q11, q22, q12, label): self pairs, q11 = q22 = q, and q11 = 4q, q22 = q (so
    √(q11 q22) = 2q exactly) for ``ratio_correlations``."""
    rnd = f32 if f32_exact else float
    out = []
    for q in variances:
        q = rnd(q)
        out.append((q, q, q, "self"))
        for rho in CORRELATIONS:
            out.append((q, q, rnd(rho * q), f"rho={rho}"))
        for rho in ratio_correlations:
            out.append((4 * q, q, rnd(rho * 2 * q), f"rho={rho},ratio=4"))
    return out


# ---------------------------------------------------------------- closed forms (mpmath)
def arccos_kernels(a, b, q11, q22, q12):
    q11, q22, q12 = mp.mpf(q11), mp.mpf(q22), mp.mpf(q12)
    rho = q12 / mp.sqrt(q11 * q22)
    rho = min(max(rho, mp.mpf(-1)), mp.mpf(1))
    theta = mp.acos(rho)
    dot = ((a * a + b * b) * (mp.pi - theta) + 2 * a * b * theta) / (2 * mp.pi)
    nngp = q12 * dot + (a - b) ** 2 * mp.sqrt(max(q11 * q22 - q12 * q12, 0)) / (2 * mp.pi)
    self1, self2 = (a * a + b * b) / 2 * q11, (a * a + b * b) / 2 * q22
    dself = (a * a + b * b) / 2
    return nngp, dot, mp.sqrt(self1 * self2), dself


@mp.workdps(700)  # (1 + 2q11)(1 + 2q22) − 4q12² cancels ~500 digits at q = 1e250, ρ = 1
def erf_kernels(q11, q22, q12):
    q11, q22, q12 = mp.mpf(q11), mp.mpf(q22), mp.mpf(q12)
    p = (1 + 2 * q11) * (1 + 2 * q22)
    nngp = 2 / mp.pi * mp.asin(2 * q12 / mp.sqrt(p))
    dot = 4 / mp.pi / mp.sqrt(p - 4 * q12 * q12)

    def var(q):
        return 2 / mp.pi * mp.asin(2 * q / (1 + 2 * q))

    def dvar(q):
        return 4 / mp.pi / mp.sqrt(1 + 4 * q)

    return nngp, dot, mp.sqrt(var(q11) * var(q22)), mp.sqrt(dvar(q11) * dvar(q22))


# ---------------------------------------------------------------- quadrature (scipy)
def _sech2(x):
    e = np.exp(-2.0 * np.abs(x))
    return 4.0 * e / (1.0 + e) ** 2


def _gelu(x):
    return x * special.ndtr(x)


def _dgelu(x):
    return special.ndtr(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _silu(x):
    return x * special.expit(x)


def _dsilu(x):
    s = special.expit(x)
    return s * (1.0 + x * (1.0 - s))


QUAD_ACTIVATIONS = {
    "tanh": (np.tanh, _sech2),
    "sigmoid": (special.expit, lambda x: special.expit(x) * special.expit(-x)),
    "gelu": (_gelu, _dgelu),
    "softplus": (lambda x: np.logaddexp(0.0, x), special.expit),
    "silu": (_silu, _dsilu),
}
_LIM = 12.0  # N(0, 1) mass beyond ±12 is 4e-33


def _points(center, width, lo=-_LIM, hi=_LIM):
    """Breakpoints graded geometrically around ``center`` from ``width/4`` to the domain size."""
    pts = {center}
    w = width / 4
    while w < 2 * _LIM:
        pts.update((center - w, center + w))
        w *= 2
    return sorted(p for p in pts if lo < p < hi)


def _quad(fun, pts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val, _ = integrate.quad(fun, -_LIM, _LIM, points=pts, limit=2000, epsabs=0, epsrel=2e-14)
    return val


def _phi(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def nested(f, g, q11, q22, q12):
    """E[f(u) g(v)] with u outer: E[f(√q11 x) E[g(v) | x]]."""
    s1, s2 = math.sqrt(q11), math.sqrt(q22)
    rho_mp = mp.mpf(q12) / mp.sqrt(mp.mpf(q11) * mp.mpf(q22))
    rho_mp = min(max(rho_mp, mp.mpf(-1)), mp.mpf(1))
    rho, srho = float(rho_mp), float(mp.sqrt(1 - rho_mp * rho_mp))
    if srho == 0.0:
        def inner(x):
            return g(s2 * rho * x)
        w_in = 1.0 / (s2 * abs(rho))
    else:
        w_y = 1.0 / (s2 * srho)

        def inner(x):
            center = -rho * x / srho
            return _quad(lambda y: _phi(y) * g(s2 * (rho * x + srho * y)),
                         _points(center, min(w_y, 1.0)) if abs(center) < _LIM + 1 else None)
        w_in = min(1.0 / (s2 * abs(rho)), srho / abs(rho)) if rho != 0 else 1.0
    width = min(1.0, 1.0 / s1, w_in)
    return _quad(lambda x: _phi(x) * f(s1 * x) * inner(x), _points(0.0, width))


def moment(f, q):
    s = math.sqrt(q)
    return _quad(lambda x: _phi(x) * f(s * x) ** 2, _points(0.0, min(1.0, 1.0 / s)))


def quad_kernels(name, q11, q22, q12):
    f, d = QUAD_ACTIVATIONS[name]
    out = []
    for h in (f, d):
        a = nested(h, h, q11, q22, q12)
        scale = math.sqrt(moment(h, q11) * moment(h, q22))
        if q11 != q22:  # the other integration order (the same integral when q11 = q22)
            b = nested(h, h, q22, q11, q12)
            if abs(a - b) > 1e-11 * max(abs(a), 1e-3 * scale):
                sys.exit(f"{name} {q11} {q22} {q12}: integration orders disagree: {a!r} vs {b!r}")
            a = 0.5 * (a + b)
        out.append((a, scale))
    (nngp, s_n), (dot, s_d) = out
    return nngp, dot, s_n, s_d


def _quad_job(name, q11, q22, q12, label):
    v = quad_kernels(name, q11, q22, q12)
    print(name, label, q11, flush=True)
    return v


def main() -> None:
    rows = []
    for name, (a, b) in ABRELU.items():
        for q11, q22, q12, label in triples(CLOSED_VARIANCES) + triples(F64_ONLY_VARIANCES, False):
            rows.append((name, "closed", q11, q22, q12, label, arccos_kernels(a, b, q11, q22, q12)))
    for q11, q22, q12, label in triples(CLOSED_VARIANCES) + triples(F64_ONLY_VARIANCES, False):
        rows.append(("erf", "closed", q11, q22, q12, label, erf_kernels(q11, q22, q12)))
    jobs = [(name, *t) for name in QUAD_ACTIVATIONS
            for t in triples(QUAD_VARIANCES, ratio_correlations=(-0.999999, 0.5, 1.0))]
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][1])  # slow (large variance) first
    with multiprocessing.Pool(int(sys.argv[1]) if len(sys.argv) > 1 else 2) as pool:
        done = pool.starmap(_quad_job, [jobs[i] for i in order], chunksize=1)
    values = [None] * len(jobs)
    for i, v in zip(order, done):
        values[i] = v
    for (name, q11, q22, q12, label), v in zip(jobs, values):
        rows.append((name, "quadrature", q11, q22, q12, label, v))
    table = [
        {"activation": name, "kind": kind, "q11": q11.hex(), "q22": q22.hex(), "q12": q12.hex(),
         "label": label, "float32": f32(q11) == q11 and f32(q22) == q22 and f32(q12) == q12,
         "nngp": float(v[0]), "dot": float(v[1]), "scale_nngp": float(v[2]), "scale_dot": float(v[3])}
        for name, kind, q11, q22, q12, label, v in rows
    ]
    OUT.write_text(json.dumps(table, indent=0) + "\n")
    print(f"wrote {len(table)} rows to {OUT}")


if __name__ == "__main__":
    main()
