"""Activations of the exponential family in closed form: Sin, Cos, Rbf, Exp, Gaussian, ExpNormalized.

For ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])`` every kernel here follows from the Gaussian
moment generating function ``E[exp(s·u + t·v)] = exp((s²q11 + 2st·q12 + t²q22)/2)`` (real or
imaginary ``s, t``); the derivative kernel is ``∂E[φ(u)φ(v)]/∂q12 = E[φ'(u)φ'(v)]`` (Price's
theorem, Price 1958). Parameters and semantics follow neural-tangents' ``stax`` layers of the
same names (Novak et al. 2020).

- ``Sin(a, b, c)``, ``φ = a·sin(b·z + c)``: with ``X = exp(−b²(q11 + q22 − 2q12)/2)`` and
  ``Y = exp(−b²(q11 + q22 + 2q12)/2)``, ``E[φφ] = a²/2·(X − Y·cos 2c)`` and
  ``E[φ'φ'] = a²b²/2·(X + Y·cos 2c)``; ``X − Y`` is evaluated as ``X·(1 − e^{−2b²q12})``
  with ``expm1`` (no cancellation near ``q12 = 0``).
- ``Cos(a, b, c) = Sin(a, b, c + π/2)``.
- ``Rbf(γ)``, ``φ = √2·sin(√(2γ)·z + π/4)``: ``E[φφ] = exp(−γ(q11 + q22 − 2q12))`` (the RBF
  kernel of the pre-activations; Rahimi & Recht 2007), ``E[φ'φ'] = 2γ·E[φφ]``.
- ``Exp(a, b)``, ``φ = a·e^{b·z}``: ``E[φφ] = a²·exp(b²(q11 + q22 + 2q12)/2)``,
  ``E[φ'φ'] = b²·E[φφ]``.
- ``Gaussian(a, b)``, ``φ = a·exp(b·z²)``: ``E[φφ] = a²/√Δ`` with
  ``Δ = (1 − 2b·q11)(1 − 2b·q22) − 4b²q12² = 1 − 2b(q11 + q22) + 4b²(q11q22 − q12²)``,
  ``E[φ'φ'] = 4a²b²·q12/Δ^{3/2}``.
- ``ExpNormalized(γ, shift)``: the "Gaussian normalized kernel" (Shankar et al. 2020, p. 6)
  ``√(q11 q22)·exp(γ(ρ + shift))`` with derivative kernel ``γ·exp(γ(ρ + shift))``; defined
  by its kernel only (no elementwise finite network has it).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import NtkitError, ParameterError
from . import stable
from .activations import ElementwiseLayer


def check_number(value: Any, name: str) -> float:
    """``value`` as a float after checking it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_positive(value: Any, name: str) -> float:
    """``value`` as a float after checking it is a finite number > 0."""
    value = check_number(value, name)
    if value <= 0:
        raise ParameterError(f"{name} must be > 0, got {value}")
    return value


def _x_minus_y(x: torch.Tensor, y: torch.Tensor, b2: float, q12: torch.Tensor) -> torch.Tensor:
    """``X − Y`` where ``Y = X·exp(−2b²q12)``, without cancellation or overflow."""
    t = (2 * b2) * q12
    return torch.where(q12 >= 0, -x * torch.expm1(-t.clamp(min=0)), y * torch.expm1(t.clamp(max=0)))


class Sin(ElementwiseLayer):
    """``a·sin(b·z + c)`` in closed form (module docstring; neural-tangents' ``stax.Sin``)."""

    closed_form = True

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        self.a, self.b, self.c = check_number(a, "a"), check_number(b, "b"), check_number(c, "c")
        # sin²(c) and cos²(c) of the phase; Cos swaps them (sin²(c + π/2) = cos²(c)).
        self._sin2, self._cos2 = math.sin(self.c) ** 2, math.cos(self.c) ** 2
        self.name = f"Sin(a={self.a}, b={self.b}, c={self.c})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.sin(self.b * x + self.c)

    def expectations(self, q11, q22, q12, need_dot):
        b2, a2 = self.b**2, self.a**2
        diff = stable.difference_variance(q11, q22, q12)
        x = torch.exp(diff * (-b2 / 2))
        y = torch.exp((q11 + q22 + 2 * q12) * (-b2 / 2))
        x_minus_y = _x_minus_y(x, y, b2, q12)
        # X − Y·cos 2c = (X − Y) + 2Y·sin²c;  X + Y·cos 2c = (X − Y) + 2Y·cos²c.
        nngp = (x_minus_y + (2 * self._sin2) * y) * (a2 / 2)
        dot = (x_minus_y + (2 * self._cos2) * y) * (a2 * b2 / 2) if need_dot else None
        return nngp, dot

    def __repr__(self) -> str:
        return f"{type(self).__name__}(a={self.a}, b={self.b}, c={self.c})"


class Cos(Sin):
    """``a·cos(b·z + c)`` in closed form: ``Sin(a, b, c + π/2)`` (neural-tangents' ``stax.Cos``)."""

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        super().__init__(a, b, c)
        self._sin2, self._cos2 = self._cos2, self._sin2
        self.name = f"Cos(a={self.a}, b={self.b}, c={self.c})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.cos(self.b * x + self.c)


class Rbf(ElementwiseLayer):
    """``√2·sin(√(2γ)·z + π/4)``, whose NNGP is ``exp(−γ(q11 + q22 − 2q12))`` (module docstring).

    ``gamma > 0`` (``γ = 1/(2ℓ²)`` for a length scale ``ℓ``); neural-tangents' ``stax.Rbf``.
    """

    closed_form = True

    def __init__(self, gamma: float = 1.0) -> None:
        self.gamma = check_positive(gamma, "gamma")
        self.name = f"Rbf(gamma={self.gamma})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2) * torch.sin(math.sqrt(2 * self.gamma) * x + math.pi / 4)

    def expectations(self, q11, q22, q12, need_dot):
        diff = stable.difference_variance(q11, q22, q12)
        nngp = torch.exp(diff * -self.gamma)
        return nngp, (nngp * (2 * self.gamma) if need_dot else None)

    def __repr__(self) -> str:
        return f"Rbf(gamma={self.gamma})"


class Exp(ElementwiseLayer):
    """``a·exp(b·z)`` in closed form (module docstring; neural-tangents' ``stax.Exp``)."""

    closed_form = True

    def __init__(self, a: float = 1.0, b: float = 1.0) -> None:
        self.a, self.b = check_number(a, "a"), check_number(b, "b")
        self.name = f"Exp(a={self.a}, b={self.b})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x)

    def expectations(self, q11, q22, q12, need_dot):
        b2 = self.b**2
        nngp = torch.exp((q11 + q22 + 2 * q12) * (b2 / 2)) * self.a**2
        return nngp, (nngp * b2 if need_dot else None)

    def __repr__(self) -> str:
        return f"Exp(a={self.a}, b={self.b})"


class Gaussian(ElementwiseLayer):
    """``a·exp(b·z²)`` in closed form (module docstring; neural-tangents' ``stax.Gaussian``).

    For ``b > 0`` the expectation is infinite once a pre-activation variance reaches
    ``1/(2b)`` (or the two variables are too correlated): that raises an NtkitError.
    """

    closed_form = True

    def __init__(self, a: float = 2.0, b: float = -1.0) -> None:
        self.a, self.b = check_number(a, "a"), check_number(b, "b")
        self.name = f"Gaussian(a={self.a}, b={self.b})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x * x)

    def expectations(self, q11, q22, q12, need_dot):
        b, a2 = self.b, self.a**2
        if b < 0:  # Δ = 4b²·det(Σ + I/(2|b|)): every term non-negative (stable.root_det)
            root = stable.root_det(q11, q22, q12, shift=-0.5 / b) * (-2 * b)
            nngp = a2 / root
            return nngp, (q12 * (4 * a2 * b * b) / root**3 if need_dot else None)
        det = stable.root_det(q11, q22, q12) ** 2
        delta = 1 - 2 * b * (q11 + q22) + (4 * b * b) * det
        if b > 0 and not bool(((delta > 0) & (1 - 2 * b * q11 > 0) & (1 - 2 * b * q22 > 0)).all()):
            raise NtkitError(
                f"Gaussian(b={b}) has an infinite kernel here: E[exp(b(u² + v²))] diverges once a "
                f"pre-activation variance reaches 1/(2b) = {1 / (2 * b):.3g}; use b < 0 or smaller "
                "W_std/b_std before this layer"
            )
        inv_root = torch.rsqrt(delta)
        nngp = inv_root * self.a**2
        dot = None
        if need_dot:
            dot = q12 * inv_root**3 * (4 * self.a**2 * b * b)
        return nngp, dot

    def __repr__(self) -> str:
        return f"Gaussian(a={self.a}, b={self.b})"


class ExpNormalized(ElementwiseLayer):
    """The "Gaussian normalized kernel" ``√(q11 q22)·exp(γ(ρ + shift))`` (Shankar et al. 2020).

    ``ρ = q12/√(q11 q22)`` (clipped to ``[−1, 1]`` when ``do_clip``, the default); the NTK
    factor is ``γ·exp(γ(ρ + shift))`` (= ``∂/∂q12``). As in neural-tangents'
    ``stax.ExpNormalized`` the layer is defined by its kernel only: :meth:`build_module`
    raises an NtkitError. ``gamma > 0``.
    """

    closed_form = True

    def __init__(self, gamma: float = 1.0, shift: float = -1.0, do_clip: bool = True) -> None:
        self.gamma = check_positive(gamma, "gamma")
        self.shift = check_number(shift, "shift")
        self.do_clip = bool(do_clip)
        self.name = f"ExpNormalized(gamma={self.gamma}, shift={self.shift})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        raise NtkitError("ExpNormalized has no elementwise finite counterpart (it normalizes by q)")

    def expectations(self, q11, q22, q12, need_dot):
        i1, i2 = stable.inverse_sqrt(q11), stable.inverse_sqrt(q22)
        rho = q12 * i1 * i2
        if self.do_clip:
            rho = rho.clamp(-1.0, 1.0)
        factor = torch.exp((rho + self.shift) * self.gamma)
        root_prod = stable.root_product(q11, q22)
        nngp = root_prod * factor
        return nngp, (factor * self.gamma if need_dot else None)

    def build_module(self, in_shape, generator, dtype):
        raise NtkitError(
            "ExpNormalized is defined by its kernel only (as in neural-tangents): there is no "
            "finite elementwise network with this kernel; use Rbf/Exp/Sin for a buildable one"
        )

    def __repr__(self) -> str:
        return f"ExpNormalized(gamma={self.gamma}, shift={self.shift}, do_clip={self.do_clip})"


__all__ = ["Cos", "Exp", "ExpNormalized", "Gaussian", "Rbf", "Sin"]
