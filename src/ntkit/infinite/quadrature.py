"""Gaussian expectations ``E[f(u) g(v)]`` over a bivariate normal, by quadrature.

For ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])`` write ``ρ = q12/√(q11 q22) = cos β`` and use
polar coordinates of a standard 2-D Gaussian ``z = r (cos θ, sin θ)``. After a rotation,
``u = √q11 · r sin φ`` and ``v = √q22 · r sin(φ − β)``, so ``u = 0`` and ``v = 0`` are the
rays ``φ ∈ {0, β} (mod π)``. Activations with a kink at zero (ReLU, |·|, leaky ReLU) are
smooth between those rays, so the angular integral is split there and done by
Gauss–Legendre on ``[0, β]`` and ``[β, π]``; the radial integral pairs ``r`` with ``−r`` and
substitutes ``s = r²/2``, which turns ``∫ (F(r) + F(−r)) r e^{−r²/2} dr`` into a
Gauss–Laguerre integral of a function analytic in ``s`` (exact for ReLU, whose product
is ``∝ r²`` along every ray). Both converge exponentially for smooth activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

Fn = Callable[[torch.Tensor], torch.Tensor]

#: Pair entries handled at once; bounds the ``(pairs, 2A, R)`` evaluation grid.
_CHUNK_EVALUATIONS = 2**22


@lru_cache(maxsize=16)
def _nodes(degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t, wt = np.polynomial.legendre.leggauss(degree)
    s, ws = np.polynomial.laguerre.laggauss(degree)
    return (t + 1.0) / 2.0, wt / 2.0, np.sqrt(2.0 * s), ws


def gaussian_expectation(
    f: Fn,
    g: Fn,
    q11: torch.Tensor,
    q22: torch.Tensor,
    q12: torch.Tensor,
    degree: int = 32,
) -> torch.Tensor:
    """``E[f(u) g(v)]`` for ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])``, elementwise.

    ``q11``, ``q22``, ``q12`` broadcast to a common shape, which the result has. ``degree``
    is the number of Gauss–Legendre nodes per angular piece and of Gauss–Laguerre nodes
    (``4·degree²`` evaluations of ``f`` and ``g`` per entry). ``|ρ| ≤ 1`` is enforced
    and a zero variance is treated as ``ρ = 0`` (its variable is identically 0).
    """
    shape = torch.broadcast_shapes(q11.shape, q22.shape, q12.shape)
    dtype, device = q12.dtype, q12.device
    a, wa, r, wr = (torch.as_tensor(v, dtype=dtype, device=device) for v in _nodes(degree))
    q11 = q11.clamp_min(0).expand(shape).reshape(-1)
    q22 = q22.clamp_min(0).expand(shape).reshape(-1)
    c12 = q12.expand(shape).reshape(-1)
    out = torch.empty(q11.shape, dtype=dtype, device=device)
    per_entry = 4 * degree * degree
    chunk = max(1, _CHUNK_EVALUATIONS // per_entry)
    for i in range(0, q11.numel(), chunk):
        sl = slice(i, i + chunk)
        out[sl] = _chunk(f, g, q11[sl], q22[sl], c12[sl], a, wa, r, wr)
    return out.reshape(shape)


def _chunk(f, g, q11, q22, c12, a, wa, r, wr) -> torch.Tensor:
    s1, s2 = torch.sqrt(q11), torch.sqrt(q22)
    # β = arccos ρ, via atan2 so that a point paired with itself gets β = 0 exactly.
    root_det = torch.sqrt((q11 * q22 - c12 * c12).clamp_min(0))
    beta = torch.where(q11 * q22 > 0, torch.atan2(root_det, c12), math.pi / 2)[:, None]
    # Angular nodes and weights on [0, β] then [β, π]: shape (P, 2A).
    phi = torch.cat([beta * a, beta + (math.pi - beta) * a], dim=1)
    w_phi = torch.cat([beta * wa, (math.pi - beta) * wa], dim=1)
    u = (s1[:, None] * torch.sin(phi))[:, :, None] * r
    v = (s2[:, None] * torch.sin(phi - beta))[:, :, None] * r
    inner = (f(u) * g(v) + f(-u) * g(-v)).to(wr.dtype) @ wr
    return (inner * w_phi).sum(1) / (2.0 * math.pi)


def autograd_derivative(fn: Fn) -> Fn:
    """The derivative of an elementwise ``fn`` by autograd: ``d/dx Σ fn(x)``."""

    def derivative(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            value = fn(leaf)
            if not value.requires_grad:  # fn is constant in x (or not differentiable)
                return torch.zeros_like(x)
            (grad,) = torch.autograd.grad(value.sum(), leaf, allow_unused=True)
        return torch.zeros_like(x) if grad is None else grad

    return derivative
