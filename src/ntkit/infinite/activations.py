"""Elementwise activations: closed forms where they exist, quadrature otherwise.

For pre-activations with covariance ``[[q11, q12], [q12, q22]]`` an activation ``φ`` maps
``nngp ← E[φ(u)φ(v)]`` and ``ntk ← ntk · E[φ'(u)φ'(v)]`` (Jacot et al. 2018).

Closed forms used:

- ReLU / leaky ReLU / |·| / ABReLU ``φ(z) = a·min(z, 0) + b·max(z, 0)``: the arc-cosine kernel
  (Cho & Saul 2009). With ``ρ = q12/√(q11 q22)``, ``θ = arccos ρ``:
  ``E[φ'φ'] = ((a² + b²)(π − θ) + 2abθ) / (2π)`` and
  ``E[φφ] = q12·E[φ'φ'] + (a − b)²·√(q11 q22 − q12²) / (2π)``.
- Erf (Williams 1997): ``E[φφ] = (2/π) arcsin(2 q12 / √((1 + 2 q11)(1 + 2 q22)))`` and
  ``E[φ'φ'] = (4/π) / √((1 + 2 q11)(1 + 2 q22) − 4 q12²)``.

Both are evaluated in the stable forms of :mod:`ntkit.infinite.stable`: ``θ = atan2(√det, q12)``
with ``det = q11 q22 − q12²`` formed without overflow or underflow (power-of-two scaling;
float64 products for float32), and for Erf ``arcsin(·) = atan2(q12, √D)`` and
``(1 + 2q11)(1 + 2q22) − 4q12² = 4D`` with ``D = det Σ + (q11 + q22)/2 + 1/4`` (no ``1 − arg²``).
The relative error is then ``≲ ε/(1 − ρ²)`` (the conditioning of the determinant) at every
variance the dtype represents, and a point with itself is exact.

A zero-variance input (e.g. ``x = 0`` with no bias) is taken as ``ρ = 0``, the continuous
limit, so kernels stay finite. A kernel that does not fit the dtype (e.g. an input variance
that overflowed) raises :class:`~ntkit.errors.NonFiniteError` naming the fix, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._validation import all_finite
from ..errors import ParameterError
from ..finite.activations import Elementwise
from . import stable
from .layers import Layer, Shape, State, require_single
from .quadrature import (
    Reflection,
    autograd_derivative,
    check_degree,
    degree_for_tolerance,
    gaussian_expectations,
)

Fn = Callable[[torch.Tensor], torch.Tensor]


class ElementwiseLayer(Layer):
    """Base of activations: subclasses give ``fn`` and ``expectations``.

    ``closed_form`` is ``True`` for activations whose kernel is an exact formula (its
    gradients with respect to ``W_std``/``b_std`` are then exact, which ``nk.sklearn.NTK``
    needs); quadrature activations leave it ``False``.
    """

    name = "activation"
    handles_masks = True  # position-wise
    closed_form = False

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def expectations(
        self, q11: torch.Tensor, q22: torch.Tensor, q12: torch.Tensor, need_dot: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(E[φ(u)φ(v)], E[φ'(u)φ'(v)] or None)`` elementwise over broadcast inputs."""
        raise NotImplementedError

    def self_expectation(self, q: torch.Tensor) -> torch.Tensor:
        """``E[φ(u)²]`` for ``u ~ N(0, q)`` elementwise (any shape): ``expectations(q, q, q)``."""
        return self.expectations(q, q, q, False)[0]

    def apply_kernel(self, state: State) -> State:
        state = require_single(state, self)
        need_dot = state.ntk is not None
        after, dot = self.nngp_and_derivative(state, need_dot)
        return after.replace(ntk=state.ntk * dot) if need_dot else after

    def nngp_and_derivative(self, state: State, need_dot: bool = True) -> tuple[State, torch.Tensor | None]:
        """The state after this activation without its NTK (``ntk=None``), and ``E[φ'(u)φ'(v)]``.

        :meth:`apply_kernel` is ``ntk · E[φ'φ']`` on top; a caller that owns the incoming NTK
        (:func:`ntkit.infinite.mlp_kernels`' stack of NTKs) multiplies it in place instead.
        ``dot`` is ``None`` when ``need_dot`` is false.
        """
        var1 = self.self_expectation(state.var1)
        var2 = var1 if state.var2 is state.var1 else self.self_expectation(state.var2)
        # The variances bound every entry (Cauchy–Schwarz): one cheap check on the vectors.
        variances = (state.var1, state.var2, var1, var2)
        if not all_finite(torch.cat([v.reshape(-1) for v in variances])):
            stable.check_finite(state.var1, f"the pre-activation variance entering {self.name}")
            stable.check_finite(state.var2, f"the pre-activation variance entering {self.name}")
            stable.check_finite(torch.cat([var1, var2]), f"the variance after {self.name}")
        nngp, dot = self.expectations(state.q11(), state.q22(), state.nngp, need_dot)
        return state.replace(nngp=nngp, ntk=None, var1=var1, var2=var2, fresh=False), dot

    def build_module(
        self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[nn.Module, Shape]:
        return Elementwise(self.fn, self.name), in_shape


class ABReLU(ElementwiseLayer):
    """``φ(z) = a·min(z, 0) + b·max(z, 0)``, in closed form (arc-cosine kernel)."""

    closed_form = True

    def __init__(self, a: float, b: float) -> None:
        for value, label in ((a, "a"), (b, "b")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ParameterError(f"ABReLU slope {label} must be a finite number, got {value!r}")
        self.a, self.b = float(a), float(b)
        self.name = f"ABReLU(a={self.a}, b={self.b})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        if self.a == 0:  # ReLU (times b): one clamp, the same values and autograd gradient
            out = torch.clamp(x, min=0)
            return out if self.b == 1 else self.b * out
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def _derivative(self, x: torch.Tensor) -> torch.Tensor:
        """``φ'(z)`` in closed form: ``b`` for ``z > 0``, ``a`` for ``z < 0`` and ``a + b`` at 0
        (what autograd gives for :meth:`fn`; used by :func:`ntkit.theory.two_layer_finite_ntk`
        instead of an autograd pass)."""
        pos = (x >= 0).to(x.dtype)
        if self.a == 0:
            return pos if self.b == 1 else self.b * pos
        return self.b * pos + self.a * (x <= 0).to(x.dtype)

    def expectations(self, q11, q22, q12, need_dot):
        nngp, dot = _ArcCosine.apply(q11, q22, q12, self.a, self.b)
        return nngp, (dot if need_dot else None)

    def self_expectation(self, q):
        """``q·(a² + b²)/2`` in one product, rounded as :meth:`expectations` rounds a point
        with itself (``θ = 0``), so the variances equal the kernel's diagonal exactly."""
        return q * q.new_tensor(_self_dot(self.a, self.b))


def _arc_cosine_forward(q11, q22, q12, a: float, b: float):
    """Returns ``(E[φ'φ'], E[φφ], √(q11 q22 − q12²))`` for the ABReLU family.

    With ``c = (a − b)²/2π`` and ``t = π − θ`` (the angle between ``u`` and ``−v``):
    ``E[φ'φ'] = ab + c·t`` and ``E[φφ] = q12·E[φ'φ'] + c·√det``, ``θ = atan2(√det, q12)``
    (not ``arccos ρ``: exact for a point with itself). As ``ρ → −1``, where
    ``E[φ'φ'] − ab ∝ t → 0``, ``t`` is taken as ``atan2(√det, −q12)`` (full relative
    accuracy) on the entries with ``t < 1/2``. ``√det`` comes from
    :func:`ntkit.infinite.stable.root_det` (no overflow/underflow of ``q11·q22`` in any dtype).
    Near ``ρ = −1`` (``t < 1/2``) the two terms of ``E[φφ]`` cancel (their sum is
    ``ab·q12 + c·√(q11 q22)(sin t − t cos t)``, ``∝ t³``), so there ``sin t − t cos t`` is
    taken from its series (:func:`_one_minus_t_cot_t`): relative accuracy ``~ε`` at every ``ρ``.
    """
    span = stable._span(q11, q22)
    c = (a - b) ** 2 / (2 * math.pi)
    # float32: det in float32 (backward stable, ≤ 1e-5 relative on the reference table); the
    # exact float64 route costs ~40% of the FC kernel in float32 (benchmarks/RESULTS.md).
    if not span[0] > 0:
        # Zero variances (e.g. padded graph nodes): as +∞ in the determinant (small vectors
        # only), so √det = +∞ and θ = atan2(∞, q12) = π/2 exactly there (ρ = 0, module
        # docstring); √det is then set back to its value 0 in one pass (no full-size masks).
        root_det = stable._root_det(stable.zero_as_inf(q11), stable.zero_as_inf(q22), q12, 0.0, span,
                                    exact=False)
        theta = torch.atan2(root_det, q12)
        root_det.nan_to_num_(posinf=0.0)
    else:
        root_det = stable._root_det(q11, q22, q12, 0.0, span, exact=False)
        theta = stable._angle(q11, q22, q12, root_det, span)
    near = None
    if c != 0 and float(theta.max()) > math.pi - _SERIES_BELOW:  # near-antiparallel pairs
        flat = theta.reshape(-1)
        near = (flat > math.pi - _SERIES_BELOW).nonzero().squeeze(1)
        root_near = root_det.reshape(-1)[near]
        q12_near = torch.broadcast_to(q12, theta.shape)[stable.unravel(near, theta.shape)]
        t_near = torch.atan2(root_near, -q12_near)  # π − θ, to full relative accuracy
    # dot = ab + c(π − θ): an affine map of θ (accurate to ε·π absolutely; `near` fixes ρ ≈ −1);
    # exactly ab + cπ = (a² + b²)/2 rounded once for a point with itself (θ = 0). Two passes,
    # not one `add(alpha=)`: a fused multiply-add would change the rounding (e.g. Abs at ρ = 0
    # is then ~1e-17 instead of exactly 0).
    dot = theta.mul_(-c).add_(_self_dot(a, b))
    nngp = q12 * dot
    if c != 0:
        nngp.add_(root_det, alpha=c)
    if near is not None and near.numel():
        # √(q11 q22)(sin t − t cos t) = √det · (1 − t cot t), since √det = √(q11 q22) sin t.
        where = stable.unravel(near, theta.shape)  # any strides (spatial kernels)
        dot[where] = c * t_near + a * b
        nngp[where] = q12_near * (a * b) + c * root_near * _one_minus_t_cot_t(t_near)
    return dot, nngp, root_det


def _self_dot(a: float, b: float) -> float:
    """``E[φ'(u)²] = ab + cπ = (a² + b²)/2`` as the affine map of θ gives it at ``θ = 0``."""
    return a * b + (a - b) ** 2 / (2 * math.pi) * math.pi


#: Below this ``t = π − θ`` the ABReLU NNGP uses the series of ``1 − t cot t``.
_SERIES_BELOW = 0.5
#: ``1 − t cot t = Σ_k 2^{2k}|B_2k|/(2k)! · t^{2k}`` (B: Bernoulli numbers), k = 1 … 10;
#: the next term is below ``(t/π)^22 < 1e-17`` for ``t < 1/2``.
_COT_SERIES = (
    0.3333333333333333, 0.022222222222222223, 0.0021164021164021165, 0.00021164021164021165,
    2.1377799155576935e-05, 2.1644042808063972e-06, 2.1925947851873778e-07,
    2.2214608789979678e-08, 2.2507846516808994e-09, 2.2805151204592183e-10,
)


def _one_minus_t_cot_t(t: torch.Tensor) -> torch.Tensor:
    """``1 − t·cot t`` for ``|t| < 1/2`` by its series (no cancellation; Horner in ``t²``)."""
    t2 = t * t
    acc = torch.full_like(t, _COT_SERIES[-1])
    for coef in _COT_SERIES[-2::-1]:
        acc = acc * t2 + coef
    return acc * t2


class _ArcCosine(torch.autograd.Function):
    """Arc-cosine expectations with gradients that stay finite at ``|ρ| = 1``.

    Price's theorem gives ``∂E[φφ]/∂q12 = E[φ'φ']`` and
    ``∂E[φφ]/∂q11 = (a − b)² √(q11 q22 − q12²) / (4π q11)``; ``E[φ'φ']`` depends on ``ρ``
    only, with ``dE[φ'φ']/dρ = (a − b)² / (2π √(1 − ρ²))``, which is infinite at ``|ρ| = 1``.
    There the derivative is taken as 0: any change of the variances (e.g. of ``W_std`` or
    ``b_std``) keeps ``ρ = 1`` for a point with itself, so the true directional derivative
    is 0, while autograd would produce ``0 · ∞ = NaN``.
    """

    @staticmethod
    def forward(ctx, q11, q22, q12, a, b):
        dot, nngp, root_det = _arc_cosine_forward(q11, q22, q12, a, b)
        ctx.save_for_backward(q11, q22, q12, dot, root_det)
        ctx.c = (a - b) ** 2 / (2 * math.pi)
        return nngp, dot

    @staticmethod
    def backward(ctx, g_nngp, g_dot):
        q11, q22, q12, dot, root_det = ctx.saved_tensors
        c = ctx.c
        i1, i2 = stable.inverse_sqrt(q11), stable.inverse_sqrt(q22)
        rho = (q12 * i1) * i2
        g11 = g22 = g12 = 0.0
        if g_nngp is not None:
            g12 = g_nngp * dot
            g11 = g_nngp * (0.5 * c) * ((root_det * i1) * i1)
            g22 = g_nngp * (0.5 * c) * ((root_det * i2) * i2)
        if g_dot is not None and c != 0:
            # √(1 − ρ²) = √det / √(q11 q22); treated as 0 below 1e-6 (see the docstring).
            sin_theta = (root_det * i1) * i2
            inside = sin_theta > 1e-6
            d_rho = torch.where(inside, c / torch.where(inside, sin_theta, 1.0), 0.0)
            g_rho = g_dot * d_rho
            g12 = g12 + (g_rho * i1) * i2
            g11 = g11 - g_rho * rho * 0.5 * (i1 * i1)
            g22 = g22 - g_rho * rho * 0.5 * (i2 * i2)

        def reduce(grad, like):
            if isinstance(grad, float):
                return torch.zeros_like(like)
            return grad.sum_to_size(like.shape)

        return reduce(g11, q11), reduce(g22, q22), reduce(g12, q12), None, None


class ReLU(ABReLU):
    """``max(z, 0)``: the arc-cosine kernel of degree 1 (Cho & Saul 2009)."""

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)
        self.name = "ReLU"

    def __repr__(self) -> str:
        return "ReLU()"


class LeakyReLU(ABReLU):
    """``max(z, 0) + negative_slope·min(z, 0)``, in closed form."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__(negative_slope, 1.0)
        self.negative_slope = self.a
        self.name = f"LeakyReLU({self.a})"

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.a})"


class Abs(ABReLU):
    """``|z|``, in closed form."""

    def __init__(self) -> None:
        super().__init__(-1.0, 1.0)
        self.name = "Abs"

    def __repr__(self) -> str:
        return "Abs()"


class Erf(ElementwiseLayer):
    """``a·erf(b·z) + c``, in closed form (Williams 1997; neural-tangents' ``stax.Erf``).

    ``E[φφ] = a²·E[erf(b·u) erf(b·v)] + c²`` (erf is odd, so the cross terms vanish) and
    ``E[φ'φ'] = a²b²·E[erf'(b·u) erf'(b·v)]``: the formulas of the module docstring at the
    variances scaled by ``b²``. ``Erf()`` is ``erf(z)``.
    """

    closed_form = True

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        for value, label in ((a, "a"), (b, "b"), (c, "c")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ParameterError(f"Erf parameter {label} must be a finite number, got {value!r}")
        self.a, self.b, self.c = float(a), float(b), float(c)
        self._plain = (self.a, self.b, self.c) == (1.0, 1.0, 0.0)
        self.name = "Erf" if self._plain else f"Erf(a={self.a}, b={self.b}, c={self.c})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        if self._plain:
            return torch.erf(x)
        return self.a * torch.erf(self.b * x) + self.c

    def expectations(self, q11, q22, q12, need_dot):
        if self._plain:
            return _erf_expectations(q11, q22, q12, need_dot)
        b2 = self.b**2
        nngp, dot = _erf_expectations(q11 * b2, q22 * b2, q12 * b2, need_dot)
        nngp = nngp * self.a**2 + self.c**2
        return nngp, (dot * (self.a**2 * b2) if need_dot else None)

    def __repr__(self) -> str:
        return "Erf()" if self._plain else f"Erf(a={self.a}, b={self.b}, c={self.c})"


def _erf_expectations(q11, q22, q12, need_dot):
    """``(E[erf u erf v], E[erf' u erf' v])`` (Williams 1997), in a stable form.

    With ``D = det(Σ + I/2) = det Σ + (q11 + q22)/2 + 1/4`` (no cancellation;
    ``stable.root_det``): ``2q12/√((1 + 2q11)(1 + 2q22)) = q12/√(D + q12²)``, so
    ``arcsin(·) = atan2(q12, √D)``, and ``(1 + 2q11)(1 + 2q22) − 4q12² = 4D``. Exact for a
    point with itself at any variance.
    """
    root = stable.root_det(q11, q22, q12, shift=0.5)
    nngp = torch.atan2(q12, root) * (2 / math.pi)
    dot = (2 / math.pi) / root if need_dot else None
    return nngp, dot


class Identity(ElementwiseLayer):
    """``φ(z) = z``: leaves both kernels unchanged."""

    name = "Identity"
    closed_form = True

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def apply_kernel(self, state: State) -> State:
        return state

    def expectations(self, q11, q22, q12, need_dot):
        return q12, (torch.ones_like(q12) if need_dot else None)

    def __repr__(self) -> str:
        return "Identity()"


class Activation(ElementwiseLayer):
    """Any elementwise torch function, by quadrature graded to the pre-activation variance.

    Both ``E[φ(u)φ(v)]`` and ``E[φ'(u)φ'(v)]`` come from
    :func:`~ntkit.infinite.quadrature.gaussian_expectation`, whose mesh refines toward the
    kinks/saturations of ``φ`` as the variance grows. Accuracy: with the default
    ``tol=1e-8`` the error is ``<= 1e-8`` (measured ``~5e-10``) relative to the Cauchy–Schwarz
    scale ``√(E[φ(u)²]E[φ(v)²])`` in float64, for variances 1e-4 … 1e4, every correlation and
    self pairs, tested for Tanh, Sigmoid, GELU, Softplus and SiLU against independent nested
    adaptive quadrature (``tests/test_activation_reference.py``); ``φ`` must be analytic near
    the real axis away from 0 and polynomially bounded for that statement to apply. In
    float32 the error is that of float32 rounding (``<= 1e-5`` tested).

    Args:
        fn: elementwise function of a tensor (e.g. ``torch.tanh``).
        derivative: its derivative; by default autograd of ``fn``.
        degree: Gauss–Legendre nodes per panel, ``1 … MAX_DEGREE`` (256); ``None`` (default):
            chosen from ``tol`` (10 for 1e-8). Cost ``~4·degree²·2(L + 1)(L + 6)`` evaluations
            per kernel entry, ``L = ⌈log4(2√q)⌉`` (1 at variance ~1, 4 at 1e4).
        name: a label for ``repr`` and the finite module.
        tol: requested accuracy (see above) when ``degree`` is None.
        reflection: optional :class:`~ntkit.infinite.quadrature.Reflection` ``(α, β, γ)`` with
            ``fn(−x) = α·fn(x) + β·x + γ`` (``(−1, 0, 0)`` for an odd ``fn``); halves the
            evaluations of ``fn`` and of its derivative (whose reflection,
            ``(−α, 0, −β)``, follows by differentiation). Checked on sample points.

    Raises:
        ParameterError: ``fn`` not elementwise, ``degree`` out of range (the message names
            the limit), ``tol`` not in (0, 1), ``reflection`` not satisfied by ``fn``.
        NonFiniteError: (when computing a kernel) ``φ`` overflows at the variances met; the
            message says to rescale or use float64.
    """

    def __init__(
        self,
        fn: Fn,
        derivative: Fn | None = None,
        degree: int | None = None,
        name: str | None = None,
        tol: float = 1e-8,
        reflection: Reflection | tuple[float, float, float] | None = None,
    ) -> None:
        if not callable(fn):
            raise ParameterError(
                f"Activation needs a callable elementwise function (e.g. torch.tanh), got {fn!r}"
            )
        if derivative is not None and not callable(derivative):
            raise ParameterError(f"derivative must be callable or None, got {derivative!r}")
        self.degree = None if degree is None else check_degree(degree)
        degree_for_tolerance(tol)  # validates tol
        self.tol = float(tol)
        probe = torch.linspace(-2.0, 2.0, 5, dtype=torch.float64)
        try:
            out = fn(probe)
        except Exception as err:
            raise ParameterError(
                f"Activation fn must accept a torch tensor; calling it failed with: {err}"
            ) from err
        if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
            raise ParameterError(
                "Activation fn must be elementwise (tensor in, tensor of the same shape out)"
            )
        self._fn = fn
        self._derivative = derivative if derivative is not None else autograd_derivative(fn)
        self.name = name or getattr(fn, "__name__", "Activation")
        _check_finite_on_support(self._fn, self._derivative, self.name)
        self.reflection = None if reflection is None else _checked_reflection(fn, reflection, self.name)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def expectations(self, q11, q22, q12, need_dot):
        r = self.reflection
        pairs = [(self._fn, self._fn, r, r)]
        if need_dot:  # both kernels from one pass over the nodes (shared geometry)
            dr = None if r is None else r.derivative()
            pairs.append((self._derivative, self._derivative, dr, dr))
        nngp, *rest = gaussian_expectations(pairs, q11, q22, q12, self.degree, self.tol)
        stable.check_finite(nngp, f"E[φ(u)φ(v)] of {self.name}")
        dot = rest[0] if need_dot else None
        if need_dot:
            stable.check_finite(dot, f"E[φ'(u)φ'(v)] of {self.name}")
        return nngp, dot

    def __repr__(self) -> str:
        if self.degree is None:
            return f"Activation({self.name}, tol={self.tol:g})"
        return f"Activation({self.name}, degree={self.degree})"


#: Points where :class:`Activation` checks ``fn`` and its derivative are finite: the
#: Gaussian's support (all reals) as seen by the quadrature, ±12 standard deviations.
_SUPPORT_PROBE = torch.cat([torch.linspace(-12.0, 12.0, 241, dtype=torch.float64),
                            torch.tensor([0.0, -1e-300, 1e-300], dtype=torch.float64)])


def _check_finite_on_support(fn: Fn, derivative: Fn, name: str) -> None:
    """ParameterError unless ``fn`` and its derivative are finite on the probe points: the
    Gaussian expectations would be NaN/Inf (e.g. ``torch.log``, ``torch.sqrt`` or ``1/z``,
    which are not finite for ``z <= 0``, part of every Gaussian's support)."""
    for label, g in (("", fn), ("the derivative of ", derivative)):
        try:
            values = g(_SUPPORT_PROBE.clone())
        except Exception as err:
            raise ParameterError(f"{label}Activation {name} failed on a tensor: {err}") from err
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            z = float(_SUPPORT_PROBE[bad.nonzero()[0, 0]])
            raise ParameterError(
                f"{label}Activation {name} is not finite at z = {z:.3g} ({float(values[bad][0])}); "
                "its Gaussian expectations would be NaN/Inf, since the pre-activations are "
                "Gaussian and take every real value. Use a function finite on all reals "
                "(e.g. torch.log(1 + z.abs()) instead of torch.log, softplus instead of sqrt)"
            )


def _checked_reflection(fn: Fn, reflection, name: str) -> Reflection:
    """``reflection`` as a :class:`Reflection`, or ParameterError if ``fn`` breaks it on the probe."""
    try:
        reflection = Reflection(*(float(c) for c in reflection))
    except (TypeError, ValueError) as err:
        raise ParameterError(f"reflection must be (alpha, beta, gamma) numbers, got {reflection!r}") from err
    if abs(reflection.alpha) != 1.0:
        raise ParameterError(
            f"reflection alpha must be 1 or -1 (f(-x) = ±f(x) + βx + γ), got {reflection.alpha}"
        )
    x = _SUPPORT_PROBE
    fx, f_minus = fn(x), fn(-x)
    gap = (f_minus - reflection.apply(x, fx)).abs()
    scale = 1.0 + fx.abs() + f_minus.abs() + x.abs()
    if not bool((gap <= 1e-12 * scale).all()):
        k = int((gap / scale).argmax())
        raise ParameterError(
            f"Activation {name}: reflection {tuple(reflection)} does not hold at x = {float(x[k]):.3g} "
            f"(f(-x) = {float(f_minus[k])!r}, alpha·f(x) + beta·x + gamma = "
            f"{float(reflection.apply(x, fx)[k])!r}); fix it or pass reflection=None"
        )
    return reflection


def _tanh_derivative(x: torch.Tensor) -> torch.Tensor:
    # sech²(x) = cosh(x)^−2: no cancellation of 1 − tanh² where tanh ≈ ±1; cosh overflows to
    # inf beyond |x| ≈ 710 (float64), where sech² is 0 to double precision anyway.
    return torch.cosh(x).pow_(-2)


def _sigmoid_derivative(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x) * torch.sigmoid(-x)  # s(1 − s) without cancellation


class Tanh(Activation):
    """``tanh(z)`` by quadrature (no closed form)."""

    def __init__(self, degree: int | None = None, tol: float = 1e-8) -> None:
        super().__init__(torch.tanh, _tanh_derivative, degree, "Tanh", tol, reflection=Reflection(-1.0))


class Sigmoid(Activation):
    """The logistic sigmoid by quadrature."""

    def __init__(self, degree: int | None = None, tol: float = 1e-8) -> None:
        super().__init__(torch.sigmoid, _sigmoid_derivative, degree, "Sigmoid", tol,
                         reflection=Reflection(-1.0, 0.0, 1.0))


class GELU(ElementwiseLayer):
    """GELU ``z·Φ(z)`` in closed form (Tsuchida et al. 2021, arXiv:2002.08517; neural-tangents).

    With ``P = (1 + q11)(1 + q22)``, ``Δ = P − q12² = 1 + q11 + q22 + (q11 q22 − q12²)`` and
    ``α = atan2(q12, √Δ)`` (``= arcsin(q12/√P)``):

    - ``E[φ(u)φ(v)] = q12/4 + (q12·α + (q11 q22·Δ + q12²)/(P·√Δ)) / (2π)``;
    - ``E[φ'(u)φ'(v)] = 1/4 + α/(2π) + q12·((2 + q11 + q22)·Δ + P)/(2π·P·Δ^{3/2})``
      (``∂/∂q12`` of the first, Price's theorem).

    Derived by Gaussian integration by parts on ``Φ(u) = P(ξ ≤ u)``; every term is a sum of
    non-negative parts, so there is no cancellation. ``approximate="tanh"`` changes only the
    finite network (torch's tanh approximation), as in neural-tangents; the kernel stays the
    exact GELU's.
    """

    closed_form = True

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ParameterError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.name = "GELU" if approximate == "none" else "GELU(tanh)"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x, approximate=self.approximate)

    def expectations(self, q11, q22, q12, need_dot):
        root = stable.root_det(q11, q22, q12, shift=1.0)  # √Δ, Δ = det(Σ + I): no cancellation
        delta = root * root
        prod = (1 + q11) * (1 + q22)
        alpha = torch.atan2(q12, root)
        nngp = q12 * 0.25 + (q12 * alpha + (q11 * q22 * delta + q12 * q12) / (prod * root)) / (2 * math.pi)
        dot = None
        if need_dot:
            extra = q12 * ((2 + q11 + q22) * delta + prod) / (prod * delta * root)
            dot = 0.25 + (alpha + extra) / (2 * math.pi)
        return nngp, dot

    def __repr__(self) -> str:
        return "GELU()" if self.approximate == "none" else f"GELU(approximate={self.approximate!r})"


class Softplus(Activation):
    """``log(1 + e^z)`` by quadrature."""

    def __init__(self, degree: int | None = None, tol: float = 1e-8) -> None:
        super().__init__(torch.nn.functional.softplus, torch.sigmoid, degree, "Softplus", tol,
                         reflection=Reflection(1.0, -1.0))


def activation_from_name(name: str | Layer) -> Layer:
    """A layer from a name such as ``"relu"`` or ``"hermite(3)"``; see :mod:`ntkit.infinite.names`."""
    from .names import activation_from_name as lookup

    return lookup(name)
