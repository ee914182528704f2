"""Polynomial and rectified activations in closed form: Polynomial, Monomial, Hermite,
RectifiedMonomial, Sign.

**Polynomials** ``P(z) = Σ_k p_k z^k``. Write ``u = √q11·x``, ``v = √q22·y`` with ``x, y``
standard normal of correlation ``ρ``; expanding ``x^k = Σ_i k!/(2^i i! (k−2i)!)·He_{k−2i}(x)``
in the probabilists' Hermite polynomials and using ``E[He_m(x) He_n(y)] = δ_mn·m!·ρ^m``
(Mehler's formula; O'Donnell 2014, ch. 11) gives, with no square roots left,

    ``E[P(u)P(v)] = Σ_m m!·q12^m·A_m(q11)·A_m(q22)``,
    ``A_m(q) = Σ_i p_{m+2i}·(m+2i)!/(2^i·i!·m!)·q^i``,

a polynomial in ``(q11, q22, q12)`` (exact for every variance). The derivative kernel is the
same formula for ``P'``. ``Hermite(n)`` is ``He_n/√(n!)`` (unit norm under N(0, 1), as in
neural-tangents; its kernel is ``q12^n`` when the variances are 1 and the general formula
otherwise), ``Monomial(n)`` is ``z^n``.

**Rectified monomials** ``φ(z) = 1[z ≥ 0]·z^n``: the arc-cosine kernel of degree ``n``
(Cho & Saul 2009), ``E[φφ] = (q11 q22)^{n/2}·J_n(θ)/(2π)`` with ``θ = arccos ρ``,
``J_0 = π − θ``, ``J_1 = sin θ + (π − θ) cos θ`` and
``J_n = (2n − 1) cos θ·J_{n−1} + (n − 1)² sin² θ·J_{n−2}``. Multiplying by ``(q11 q22)^{n/2}``
turns this into ``K_n = (2n − 1)·q12·K_{n−1} + (n − 1)²·(q11 q22 − q12²)·K_{n−2}``,
``K_0 = π − θ``, ``K_1 = √det + (π − θ)·q12`` (no division). ``E[φ'φ'] = n²·K_{n−1}/(2π)``
(0 for ``n = 0``, whose derivative vanishes almost everywhere, as in neural-tangents).
``Sign``: ``E[sign u sign v] = (2/π)·arcsin ρ = 1 − 2θ/π`` and an NTK factor of 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ParameterError
from . import stable
from .activations import ElementwiseLayer


def check_degree(degree: Any) -> int:
    """``degree`` as an int after checking it is an integer >= 0."""
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 0:
        raise ParameterError(f"degree must be a non-negative integer, got {degree!r}")
    return int(degree)


def _hermite_tables(coef: Sequence[float]) -> list[list[float]]:
    """``tables[m][i] = p_{m+2i}·(m+2i)!/(2^i·i!·m!)``: the coefficients of ``A_m(q)``."""
    top = len(coef) - 1
    tables = []
    for m in range(top + 1):
        row = []
        for i in range((top - m) // 2 + 1):
            k = m + 2 * i
            row.append(coef[k] * math.factorial(k) / (2**i * math.factorial(i) * math.factorial(m)))
        tables.append(row)
    return tables


def _horner(row: Sequence[float], q: torch.Tensor) -> torch.Tensor | float:
    out: torch.Tensor | float = row[-1]
    for c in reversed(row[:-1]):
        out = out * q + c
    return out


def polynomial_expectation(coef: Sequence[float], q11, q22, q12) -> torch.Tensor:
    """``E[P(u)P(v)]`` for ``P(z) = Σ coef[k] z^k`` (module docstring), broadcast shape."""
    shape = torch.broadcast_shapes(q11.shape, q22.shape, q12.shape)
    tables = _hermite_tables(coef)
    out: torch.Tensor | float = 0.0
    for m in reversed(range(len(tables))):
        a1 = _horner(tables[m], q11)
        a2 = a1 if q22 is q11 else _horner(tables[m], q22)
        out = out * q12 + math.factorial(m) * a1 * a2
    if not isinstance(out, torch.Tensor):
        return q12.new_full(shape, float(out))
    return out.expand(shape) if out.shape != shape else out


def _derivative(coef: Sequence[float]) -> list[float]:
    return [k * coef[k] for k in range(1, len(coef))] or [0.0]


class Polynomial(ElementwiseLayer):
    """``coef[0] + coef[1]·z + … + coef[n]·z^n`` in closed form (module docstring).

    ``coef`` follows :class:`numpy.polynomial.Polynomial` (lowest degree first), as
    neural-tangents' ``stax.Polynomial``.
    """

    closed_form = True

    def __init__(self, coef: Sequence[float]) -> None:
        try:
            values = [float(c) for c in coef]
        except (TypeError, ValueError):
            raise ParameterError(f"coef must be a sequence of numbers, got {coef!r}") from None
        if not values or not all(math.isfinite(c) for c in values):
            raise ParameterError(f"coef must be a non-empty sequence of finite numbers, got {coef!r}")
        self.coef = tuple(values)
        self._dcoef = _derivative(self.coef)
        self.name = f"Polynomial({list(self.coef)})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(x, self.coef[-1])
        for c in reversed(self.coef[:-1]):
            out = out * x + c
        return out

    def expectations(self, q11, q22, q12, need_dot):
        nngp = polynomial_expectation(self.coef, q11, q22, q12)
        dot = polynomial_expectation(self._dcoef, q11, q22, q12) if need_dot else None
        return nngp, dot

    def __repr__(self) -> str:
        return f"Polynomial(coef={list(self.coef)})"


class Monomial(Polynomial):
    """``z^degree`` in closed form (``degree >= 0``; neural-tangents' ``stax.Monomial``)."""

    def __init__(self, degree: int) -> None:
        self.degree = check_degree(degree)
        super().__init__([0.0] * self.degree + [1.0])
        self.name = f"Monomial({self.degree})"

    def __repr__(self) -> str:
        return f"Monomial(degree={self.degree})"


class Hermite(Polynomial):
    """The normalized Hermite polynomial ``He_degree(z)/√(degree!)`` in closed form.

    Unit norm under N(0, 1), so its kernel is ``q12^degree`` for unit variances (the case
    neural-tangents' ``stax.Hermite`` assumes); other variances use the exact polynomial
    formula of the module docstring. ``degree >= 0``.
    """

    def __init__(self, degree: int) -> None:
        self.degree = check_degree(degree)
        power = np.polynomial.hermite_e.herme2poly([0.0] * self.degree + [1.0])
        scale = math.sqrt(math.factorial(self.degree))
        super().__init__([float(c) / scale for c in power])
        self.name = f"Hermite({self.degree})"

    def __repr__(self) -> str:
        return f"Hermite(degree={self.degree})"


def _rectified_k(n: int, q12: torch.Tensor, det: torch.Tensor, theta: torch.Tensor, root_det) -> torch.Tensor:
    """``K_n = (q11 q22)^{n/2}·J_n(θ)`` by the recursion of the module docstring."""
    k_prev = math.pi - theta
    if n == 0:
        return k_prev
    k = root_det + k_prev * q12
    for j in range(2, n + 1):
        k_prev, k = k, (2 * j - 1) * q12 * k + (j - 1) ** 2 * det * k_prev
    return k


class RectifiedMonomial(ElementwiseLayer):
    """``1[z ≥ 0]·z^degree`` in closed form: the arc-cosine kernel of that degree.

    Cho & Saul (2009); neural-tangents' ``stax.RectifiedMonomial``. ``degree >= 0``
    (``degree = 0``: the step function, whose NTK factor is 0).
    """

    closed_form = True

    def __init__(self, degree: int) -> None:
        self.degree = check_degree(degree)
        self.name = f"RectifiedMonomial({self.degree})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x**self.degree, 0.0)

    def expectations(self, q11, q22, q12, need_dot):
        n = self.degree
        root_det = stable.root_det(q11, q22, q12)
        theta = stable.angle(q11, q22, q12, root_det)
        det = root_det * root_det
        nngp = _rectified_k(n, q12, det, theta, root_det) / (2 * math.pi)
        dot = None
        if need_dot:
            if n == 0:
                dot = torch.zeros_like(nngp)
            else:
                dot = _rectified_k(n - 1, q12, det, theta, root_det) * (n * n / (2 * math.pi))
        return nngp, dot

    def __repr__(self) -> str:
        return f"RectifiedMonomial(degree={self.degree})"


class Sign(ElementwiseLayer):
    """``sign(z)`` in closed form: ``(2/π)·arcsin ρ`` with an NTK factor of 0.

    The derivative vanishes almost everywhere; neural-tangents' ``stax.Sign`` sets the NTK
    contribution to 0 too. A zero variance gives 0 (``sign(0) = 0``).
    """

    closed_form = True
    name = "Sign"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    def expectations(self, q11, q22, q12, need_dot):
        theta = stable.angle(q11, q22, q12)
        nngp = 1 - theta * (2 / math.pi)
        zero = (q11 <= 0) | (q22 <= 0)
        if bool(zero.any()):
            nngp = torch.where(zero, 0.0, nngp)
        return nngp, (torch.zeros_like(nngp) if need_dot else None)

    def __repr__(self) -> str:
        return "Sign()"
