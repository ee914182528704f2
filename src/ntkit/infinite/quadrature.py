"""Gaussian expectations ``E[f(u) g(v)]`` over a bivariate normal, by graded quadrature.

For ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])`` write ``ρ = cos β`` and use polar coordinates
of a standard 2-D Gaussian ``z = r (cos φ, sin φ)``. After a rotation ``u = √q11 · r sin φ``
and ``v = √q22 · r sin(φ − β)``, so ``u = 0`` and ``v = 0`` are the rays ``φ ∈ {0, β}
(mod π)``, and (pairing ``r`` with ``−r``)

    E[f(u) g(v)] = (1/2π) ∫_0^π dφ ∫_0^∞ [F(r, φ) + F(−r, φ)] r e^{−r²/2} dr,
    F(r, φ) = f(√q11 r sin φ) g(√q22 r sin(φ − β)).

Activations change character where their argument is ``O(1)`` (a kink, a saturation); at
pre-activation variance ``q`` that is within ``~1/√q`` of the rays (in angle, at radius
``r``: ``~1/(√q r)``) and of the origin. A fixed Gauss rule cannot see features that narrow,
which made the old fixed-degree rule 2–90% wrong at variance 10–1e4. Here the mesh is
**graded to the variance** (hp-quadrature, e.g. Schwab 1998):

- angle: each piece ``[0, β]``, ``[β, π]`` (the kinks of ReLU-like activations lie on the
  piece ends, so those are integrated exactly) is cut into panels that shrink geometrically
  (ratio 1/4) toward both ends, ``⌈log4(√q_max/c)⌉`` levels;
- radius: panels shrinking geometrically (ratio 1/4) toward ``r = 0`` on ``[0, 1]``, the same
  number of levels (innermost panel ``<= c/√q_max``), then fixed panels on ``[1, 10]`` that
  resolve the Gaussian weight (the mass beyond ``r = 10`` is ``e^{−50}``);
- ``degree`` Gauss–Legendre nodes per panel. A function analytic in a strip of half-width
  ``~c = 1/2`` around the real axis (in its argument) then converges geometrically in
  ``degree`` on every panel, uniformly in the variance.

``q_max = max(q11, q22)`` picks the number of levels, entry by entry (entries are grouped by
level). Nodes and weights are Gauss–Legendre/Laguerre from NumPy, stable for the degrees used.

**Accuracy** (measured against independent nested adaptive scipy quadrature,
``tests/data/make_activation_reference.py``, over variances 1e-4 … 1e4, correlations
−1 … 1 and self pairs, both kernels ``E[φφ]`` and ``E[φ'φ']`` of Tanh, Sigmoid, GELU, Softplus
and SiLU): with the default ``tol = 1e-8`` (degree 10 per panel) the worst error is
``~5e-10`` relative to the Cauchy–Schwarz scale ``√(E[f(u)²] E[g(v)²])`` in float64, asserted
``<= tol`` by ``tests/test_activation_reference.py``; degree 8 gives ``~4e-8``, 12 ``~1e-11``.
Cost per entry: ``4·A·R`` evaluations of ``f`` and ``g`` with ``A = degree·2(L + 1)`` angular and
``R = degree·(L + 6)`` radial nodes at level ``L`` (``L = 1`` for variances 0.25…4: 11,200
at degree 10; ``L = 4`` at 1e4: 40,000) — half of them when a :class:`Reflection` of ``f`` and
``g`` is given (every node is paired with its mirror image ``(−u, −v)``), and the NNGP and
derivative expectations share the nodes' geometry (:func:`gaussian_expectations`).
Functions with other features (oscillation, growth faster than polynomial, kinks away from 0)
are not covered by this statement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

from ..errors import ParameterError
from . import stable

Fn = Callable[[torch.Tensor], torch.Tensor]

#: Evaluation points handled at once (bounds the ``(pairs, angles, radii)`` grid). 2**18
#: float64 values (2 MiB per array) keep the ~10 elementwise passes in cache: measured 1.3–2×
#: faster than 2**22 (arrays past L3) and than 2**14 (Python overhead per block), Tanh/Sigmoid.
_CHUNK_EVALUATIONS = 2**18
#: Largest Gauss–Legendre degree per panel: beyond ~64 the rule is exact to rounding already.
MAX_DEGREE = 256
#: Half-width (in the activation's argument) of the strip where activations are taken analytic.
_STRIP = 0.5
#: Radius beyond which the Laguerre tail takes over.
_R_SPLIT = 1.0
#: Largest radius the angular grading must resolve (mass beyond is e^{-R²/2} = 2e-22).
_R_MAX = 10.0
#: Radial panels beyond the graded part; the Gaussian weight is resolved on each.
_TAIL_BREAKS = (1.0, 2.0, 3.0, 4.5, 6.5, _R_MAX)
#: Degree per panel for a tolerance: (smallest tol, degree), measured on the reference table
#: (degree 8: 4e-8, 10: 5e-10, 12: 1e-11 worst error relative to the Cauchy–Schwarz scale).
_DEGREE_FOR_TOL = ((1e-4, 6), (1e-7, 8), (1e-9, 10), (1e-11, 12), (1e-13, 16), (0.0, 20))


def degree_for_tolerance(tol: float) -> int:
    """Gauss–Legendre nodes per panel that reach relative accuracy ``tol`` (module docstring)."""
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ParameterError(f"tol must be a number in (0, 1), e.g. 1e-8; got {tol!r}")
    for bound, degree in _DEGREE_FOR_TOL:
        if tol >= bound:
            return degree
    return _DEGREE_FOR_TOL[-1][1]


def check_degree(degree: int) -> int:
    """``degree`` if ``1 <= degree <= MAX_DEGREE``, else ParameterError naming the limit."""
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 1:
        raise ParameterError(f"degree must be a positive integer (nodes per panel), got {degree!r}")
    if degree > MAX_DEGREE:
        raise ParameterError(
            f"degree={degree} exceeds the limit {MAX_DEGREE} of Gauss–Legendre nodes per panel "
            f"(the graded rule is exact to rounding well below it); use degree <= {MAX_DEGREE}, "
            "or leave degree=None and set tol"
        )
    return int(degree)


def _levels(q_max: torch.Tensor) -> torch.Tensor:
    """Grading levels (ratio 4) needed at variance ``q_max``: ``⌈log4(√q_max/c)⌉ >= 0``."""
    root = torch.sqrt(q_max.clamp(min=1e-300)) / _STRIP
    return torch.ceil(torch.log(root.clamp(min=1.0)) / math.log(4.0)).to(torch.int64)


def _graded(levels: int, both_ends: bool) -> np.ndarray:
    """Panel breakpoints on [0, 1], shrinking by 4 toward 0 (and toward 1 if ``both_ends``)."""
    if levels <= 0:
        return np.array([0.0, 1.0])
    if not both_ends:
        return np.concatenate([[0.0], 4.0 ** -np.arange(levels, -1, -1.0)])
    half = 0.5 * 4.0 ** -np.arange(levels, -1, -1.0)
    return np.concatenate([[0.0], half, 1.0 - half[::-1][1:], [1.0]])


def _composite(breaks: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    t, w = np.polynomial.legendre.leggauss(degree)
    a, b = breaks[:-1, None], breaks[1:, None]
    nodes = (a + (b - a) * (t + 1) / 2).ravel()
    weights = ((b - a) * w / 2).ravel()
    return nodes, weights


@lru_cache(maxsize=64)
def _rule(level: int, degree: int) -> tuple[np.ndarray, ...]:
    """Angular nodes/weights on [0, 1] (both ends graded) and radial nodes/weights on
    [0, R_MAX] (the weight ``r e^{-r²/2}`` included; graded toward 0 on [0, 1])."""
    ang_breaks = _graded(level, True) if level > 0 else np.array([0.0, 0.5, 1.0])
    ang_nodes, ang_weights = _composite(ang_breaks, degree)
    r_nodes, r_weights = _composite(_graded(level, False) * _R_SPLIT, degree)
    r_weights = r_weights * r_nodes * np.exp(-0.5 * r_nodes**2)
    # r in [1, R_MAX]: panels of width <= 2 (features there are at least as wide as r).
    t_nodes, t_weights = _composite(np.array(_TAIL_BREAKS), degree)
    t_weights = t_weights * t_nodes * np.exp(-0.5 * t_nodes**2)
    return (ang_nodes, ang_weights, np.concatenate([r_nodes, t_nodes]),
            np.concatenate([r_weights, t_weights]))


class Reflection(NamedTuple):
    """How a function sees ``−x``: ``f(−x) = alpha·f(x) + beta·x + gamma`` for every real ``x``.

    Odd functions (tanh) are ``(−1, 0, 0)``, even ones (sech², the sigmoid's derivative)
    ``(1, 0, 0)``, the sigmoid ``(−1, 0, 1)`` (``σ(−x) = 1 − σ(x)``), softplus, SiLU and GELU
    ``(1, −1, 0)`` (``f(−x) = f(x) − x``). Given one, the quadrature evaluates ``f`` once per node
    instead of twice (the rule pairs every node with its mirror image).
    """

    alpha: float
    beta: float = 0.0
    gamma: float = 0.0

    def derivative(self) -> Reflection:
        """The reflection of ``f'``: differentiating ``f(−x) = αf(x) + βx + γ`` gives
        ``f'(−x) = −α·f'(x) − β``."""
        return Reflection(-self.alpha, 0.0, -self.beta)

    def offset(self, x: torch.Tensor) -> torch.Tensor | float:
        """``β·x + γ`` (a float when ``β = 0``)."""
        return self.beta * x + self.gamma if self.beta else float(self.gamma)

    def apply(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        """``f(−x)`` from ``x`` and ``fx = f(x)``."""
        return self.alpha * fx + self.offset(x)


#: One expectation ``E[f(u) g(v)]`` to take: ``(f, g, reflection of f, reflection of g)``.
Pair = tuple[Fn, Fn, Reflection | None, Reflection | None]


def gaussian_expectation(
    f: Fn,
    g: Fn,
    q11: torch.Tensor,
    q22: torch.Tensor,
    q12: torch.Tensor,
    degree: int | None = None,
    tol: float = 1e-8,
    *,
    reflect_f: Reflection | None = None,
    reflect_g: Reflection | None = None,
) -> torch.Tensor:
    """``E[f(u) g(v)]`` for ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])``, elementwise.

    Args:
        f, g: elementwise torch functions.
        q11, q22, q12: broadcast to a common shape, which the result has (dtype of ``q12``).
        degree: Gauss–Legendre nodes per panel (``1 … MAX_DEGREE``); ``None``: chosen from ``tol``.
        tol: requested accuracy relative to ``√(E[f(u)²] E[g(v)²])`` when ``degree`` is None.
        reflect_f, reflect_g: optional :class:`Reflection` of ``f`` / ``g`` (``f(−x)`` from
            ``f(x)``); halves the function evaluations. Must hold exactly: it is not checked here.

    Returns:
        The expectations. Accuracy: see the module docstring (``<= tol`` for activations
        analytic near the real axis and polynomially bounded, variances 1e-4 … 1e4 tested).
        The mesh is graded to ``max(q11, q22)``, so cost grows like ``log(q)²`` above
        ``q ≈ 1``. Lower-precision inputs are integrated in float64 and rounded once.
        ``|ρ| <= 1`` is enforced and a zero variance is read as ``ρ = 0``.

    Raises:
        ParameterError: ``degree`` out of range or ``tol`` not in (0, 1).
    """
    (out,) = gaussian_expectations([(f, g, reflect_f, reflect_g)], q11, q22, q12, degree, tol)
    return out


def gaussian_expectations(
    pairs: list[Pair],
    q11: torch.Tensor,
    q22: torch.Tensor,
    q12: torch.Tensor,
    degree: int | None = None,
    tol: float = 1e-8,
) -> list[torch.Tensor]:
    """Several :func:`gaussian_expectation` s over the same covariances, sharing the nodes'
    geometry (angles, radii, ``u`` and ``v``): one result per ``(f, g, reflect_f, reflect_g)``
    in ``pairs``, same shapes, accuracy and errors as :func:`gaussian_expectation`."""
    degree = degree_for_tolerance(tol) if degree is None else check_degree(degree)
    if q12.dtype != torch.float64:  # sums of ~1e4 terms: accumulate in float64, round once
        results = gaussian_expectations(pairs, q11.double(), q22.double(), q12.double(), degree, tol)
        return [r.to(q12.dtype) for r in results]
    shape = torch.broadcast_shapes(q11.shape, q22.shape, q12.shape)
    dtype, device = q12.dtype, q12.device
    beta = stable.angle(q11.clamp(min=0), q22.clamp(min=0), q12).expand(shape).reshape(-1)
    s1 = torch.sqrt(q11.clamp(min=0)).expand(shape).reshape(-1)
    s2 = torch.sqrt(q22.clamp(min=0)).expand(shape).reshape(-1)
    level = _levels(torch.maximum(q11, q22).expand(shape).reshape(-1).double())
    outs = [torch.empty(beta.shape, dtype=dtype, device=device) for _ in pairs]
    for lv in torch.unique(level).tolist():
        idx = (level == lv).nonzero().squeeze(1)
        a, wa, r, wr = (torch.as_tensor(v, dtype=dtype, device=device) for v in _rule(lv, degree))
        per_entry = 4 * a.numel() * r.numel()
        chunk = max(1, _CHUNK_EVALUATIONS // per_entry)
        for i in range(0, idx.numel(), chunk):
            sl = idx[i : i + chunk]
            for out, total in zip(outs, _chunk(pairs, s1[sl], s2[sl], beta[sl], a, wa, r, wr)):
                out[sl] = total
    return [out.reshape(shape) for out in outs]


def _mirrored_product(f, g, reflect_f, reflect_g, u, v) -> torch.Tensor:
    """``f(u) g(v) + f(−u) g(−v)`` with as few evaluations and passes as the reflections allow.

    With ``f(−u) = αf·f(u) + cu`` and ``g(−v) = αg·g(v) + cv`` (``c = βx + γ``) the sum is
    ``(1 + αf·αg) f(u) g(v) + αf·f(u)·cv + αg·g(v)·cu + cu·cv``, accumulated in place.
    """
    fu, gv = f(u), g(v)
    if reflect_f is None or reflect_g is None:
        return fu * gv + f(-u) * g(-v)
    out = fu * gv
    out.mul_(1 + reflect_f.alpha * reflect_g.alpha)
    cu, cv = reflect_f.offset(u), reflect_g.offset(v)
    if isinstance(cu, float) and isinstance(cv, float):  # no β: constants
        if cv:
            out.add_(fu, alpha=reflect_f.alpha * cv)
        if cu:
            out.add_(gv, alpha=reflect_g.alpha * cu)
        return out.add_(cu * cv) if cu and cv else out
    out.add_(fu * cv, alpha=reflect_f.alpha)
    out.add_(gv * cu, alpha=reflect_g.alpha)
    return out.add_(cu * cv)


def _chunk(pairs, s1, s2, beta, a, wa, r, wr) -> list[torch.Tensor]:
    """Entries × (angular nodes on [0, β] then [β, π]) × radial nodes; angular nodes in blocks
    so that one block's grid stays within ``_CHUNK_EVALUATIONS``. One sum per pair."""
    beta = beta[:, None]
    totals = [torch.zeros(beta.shape[0], dtype=beta.dtype, device=beta.device) for _ in pairs]
    block = max(1, _CHUNK_EVALUATIONS // max(1, 2 * r.numel() * beta.shape[0]))
    for j in range(0, a.numel(), block):
        aj, wj = a[j : j + block], wa[j : j + block]
        phi = torch.cat([beta * aj, beta + (math.pi - beta) * aj], dim=1)
        w_phi = torch.cat([beta * wj, (math.pi - beta) * wj], dim=1)
        su, sv = torch.sin(phi), torch.sin(phi - beta)
        u = (s1[:, None] * su)[:, :, None] * r
        v = (s2[:, None] * sv)[:, :, None] * r
        for total, (f, g, reflect_f, reflect_g) in zip(totals, pairs):
            inner = _mirrored_product(f, g, reflect_f, reflect_g, u, v).to(wr.dtype) @ wr
            total += (inner * w_phi).sum(1)
    return [total / (2.0 * math.pi) for total in totals]


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
