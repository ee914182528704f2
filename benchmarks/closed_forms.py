"""Closed-form vs quadrature activation kernels: GELU in a depth-3 fully-connected net.

``Dense(512, √2, 0.1)-GELU-Dense(512, √2, 0.1)-GELU-Dense(1)``, NNGP + NTK with ``x2=None``,
float64, ``x ~ N(0, I_64)``. ``closed``: ``nk.GELU()`` (closed form, issue 17);
``quadrature``: ``nk.Activation(F.gelu, degree=32)`` (the previous ``nk.GELU``, polar
Gauss–Legendre × Gauss–Laguerre quadrature with ``4·32²`` evaluations per entry and layer).
The quadrature's cost is exactly quadratic in ``n`` (every entry of the kernel matrix costs
the same), so at large ``n`` it is measured at ``--quad-n`` and scaled by ``(n/quad_n)²``
(reported as such). Also reports the largest difference between the two kernels.

Reproduce:
    .venv/bin/python benchmarks/closed_forms.py --n 4000 --quad-n 500 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

import ntkit as nk


def _gelu_derivative(x: torch.Tensor) -> torch.Tensor:
    """``Φ(x) + x·φ(x)`` (the previous GELU layer's analytic derivative)."""
    return 0.5 * (1 + torch.erf(x / 2**0.5)) + x * torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5


def arch(activation):
    return nk.serial(nk.Dense(512, 2**0.5, 0.1), activation, nk.Dense(512, 2**0.5, 0.1), activation,
                     nk.Dense(1, 2**0.5, 0.1))


def timed(layer, x, repeats):
    best, k = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        k = arch(layer).kernel(x)
        best = min(best, time.perf_counter() - t0)
    return best, k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--quad-n", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 64, generator=g, dtype=torch.float64)
    quad = nk.Activation(torch.nn.functional.gelu, _gelu_derivative, degree=32, name="gelu-quadrature")
    t_closed, k_closed = timed(nk.GELU(), x, args.repeats)
    print(f"n={args.n} closed form: {t_closed:.3f} s", flush=True)
    xs = x[: args.quad_n]
    t_quad_small, k_quad = timed(quad, xs, 1)
    t_closed_small, k_closed_small = timed(nk.GELU(), xs, args.repeats)
    scale = (args.n / args.quad_n) ** 2
    diff = max(float((k_quad.get(f) - k_closed_small.get(f)).abs().max() / k_closed_small.get(f).abs().max())
               for f in ("nngp", "ntk"))
    print(f"n={args.quad_n} closed form: {t_closed_small:.4f} s, quadrature: {t_quad_small:.2f} s "
          f"({t_quad_small / t_closed_small:.0f}x)")
    print(f"n={args.n} quadrature (scaled by (n/quad_n)^2 = {scale:.0f}): {t_quad_small * scale:.1f} s "
          f"-> closed form {t_quad_small * scale / t_closed:.0f}x faster")
    print(f"max |quadrature - closed| / max|closed| at n={args.quad_n}: {diff:.2e}")
    assert k_closed.ntk.shape == (args.n, args.n)


if __name__ == "__main__":
    main()
