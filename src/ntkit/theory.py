"""The lecture's closed forms for two-layer networks.

The two-layer net ``h(x) = (1/√m) Σ_i a_i σ(b_iᵀx)`` with ``a_i ~ N(0, 1)``, ``b_i ~ N(0, I_d)``
(no ``1/√d`` on the first layer) has, as ``m → ∞``, the NTK (Jacot et al. 2018)

    k(x, x') = <x, x'> E[σ'(Bᵀx) σ'(Bᵀx')] + E[σ(Bᵀx) σ(Bᵀx')],   B ~ N(0, I_d).

For ReLU this is ``‖x‖‖x'‖ [2ξ(π − arccos ξ) + √(1 − ξ²)] / (2π)`` with
``ξ = <x, x'>/(‖x‖‖x'‖)``.

Normalizations:

- ``"standard"``: σ as given (``max(0, z)`` for ReLU), the formula above;
- ``"slides"``: σ scaled by ``c`` with ``c² E[σ(z)²] = 1`` for ``z ~ N(0, 1)`` (He
  initialization; ``c² = 2`` for ReLU), so every kernel is ``c²`` times the standard one —
  for ReLU the slides' ``κ(ξ) = (2ξ/π)(π − arccos ξ) + √(1 − ξ²)/π`` on unit vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._validation import (
    as_tensor,
    check_choice,
    check_finite_result,
    check_positive_int,
    resolve_dtype,
    work_dtype,
)
from .errors import ParameterError, ShapeError
from .infinite import stable
from .infinite.activations import (
    Activation,
    ElementwiseLayer,
    activation_from_name,
)
from .infinite.quadrature import autograd_derivative, gaussian_expectation

Fn = Callable[[torch.Tensor], torch.Tensor]

NORMALIZATIONS = ("standard", "slides")
METHODS = ("closed_form", "quadrature", "monte_carlo")


def _resolve(activation: str | Fn | ElementwiseLayer) -> tuple[Fn, Fn, ElementwiseLayer | None]:
    """Return ``(σ, σ', layer or None)``; the layer carries closed forms when it has them."""
    if isinstance(activation, ElementwiseLayer):
        layer = activation
    elif isinstance(activation, str):
        layer = activation_from_name(activation)
    elif callable(activation):
        Activation(activation)  # checks it is elementwise and finite on all reals
        return activation, autograd_derivative(activation), None
    else:
        raise ParameterError(
            f"activation must be a name like 'relu', a layer, or a callable; got {activation!r}"
        )
    derivative = getattr(layer, "_derivative", None) or autograd_derivative(layer.fn)
    return layer.fn, derivative, layer


def _has_closed_form(layer: ElementwiseLayer | None) -> bool:
    return bool(getattr(layer, "closed_form", False))


def slides_scale(activation: str | Fn | ElementwiseLayer = "relu") -> float:
    """``c² = 1 / E[σ(z)²]`` for ``z ~ N(0, 1)``: the factor of the "slides" normalization."""
    fn, _, layer = _resolve(activation)
    one = torch.ones((), dtype=torch.float64)
    if _has_closed_form(layer):
        second_moment = layer.expectations(one, one, one, False)[0]
    else:
        second_moment = gaussian_expectation(fn, fn, one, one, one, 64)
    if not second_moment > 0:
        raise ParameterError("the slides normalization needs E[σ(z)²] > 0")
    return float(1.0 / second_moment)


def two_layer_ntk(
    x1: Any,
    x2: Any = None,
    activation: str | Fn | ElementwiseLayer = "relu",
    normalization: str = "standard",
    method: str = "closed_form",
    *,
    n_samples: int = 100_000,
    seed: int | None = 0,
    degree: int | None = None,
    dtype: Any = None,
) -> torch.Tensor:
    """Infinite-width NTK of the lecture's two-layer net (module docstring).

    Args:
        x1: ``(n1, d)`` inputs; x2: ``(n2, d)`` or ``None`` (``x2 = x1``).
        activation: ``"relu"`` (or another name), an ntkit activation layer, or a callable.
        normalization: ``"standard"`` or ``"slides"`` (see the module docstring).
        method: ``"closed_form"`` (ReLU family, Erf, identity), ``"quadrature"`` (2-D
            Gaussian quadrature of the general formula) or ``"monte_carlo"`` (``n_samples``
            draws of ``B``; error ``∝ 1/√n_samples``).
        degree: Gauss–Legendre nodes per panel of the graded quadrature
            (:func:`~ntkit.infinite.quadrature.gaussian_expectation`); ``None``: chosen for
            relative accuracy 1e-8. seed: Monte-Carlo seed.

    Returns:
        ``(n1, n2)`` kernel matrix (float64 unless ``dtype`` says otherwise).
    """
    check_choice(normalization, "normalization", NORMALIZATIONS)
    check_choice(method, "method", METHODS)
    dtype = resolve_dtype(dtype)
    x1 = as_tensor(x1, "x1", dtype=dtype, min_ndim=2, max_ndim=2)
    symmetric = x2 is None
    x2 = x1 if symmetric else as_tensor(x2, "x2", dtype=dtype, min_ndim=2, max_ndim=2,
                                        device=x1.device)
    if x1.shape[1] != x2.shape[1]:
        raise ShapeError(f"x1 has {x1.shape[1]} features but x2 has {x2.shape[1]}")
    fn, dfn, layer = _resolve(activation)
    gram = x1 @ x2.T
    # Squared norms; with x2 = x1 taken from the Gram diagonal so that ξ_ii = 1 exactly.
    sq1 = gram.diagonal().clone() if symmetric else (x1 * x1).sum(1)
    sq2 = sq1 if symmetric else (x2 * x2).sum(1)
    if method == "monte_carlo":
        n_samples = check_positive_int(n_samples, "n_samples")
        generator = torch.Generator(device=x1.device)
        if seed is not None:
            generator.manual_seed(int(seed))
        B = torch.randn(x1.shape[1], n_samples, dtype=dtype, device=x1.device, generator=generator)
        z1, z2 = x1 @ B, x2 @ B
        kernel = gram * (dfn(z1) @ dfn(z2).T) / n_samples + (fn(z1) @ fn(z2).T) / n_samples
    else:
        q11, q22 = sq1[:, None], sq2[None, :]
        if method == "closed_form":
            if layer is not None and type(layer).__name__ == "ReLU":
                kernel = _relu_lecture_form(gram, q11, q22)
            elif _has_closed_form(layer):
                nngp, dot = layer.expectations(q11, q22, gram, True)
                kernel = gram * dot + nngp
            else:
                raise ParameterError(
                    f"no closed form for {activation!r}; use method='quadrature'"
                )
        else:
            dot = gaussian_expectation(dfn, dfn, q11, q22, gram, degree)
            kernel = gram * dot + gaussian_expectation(fn, fn, q11, q22, gram, degree)
    if normalization == "slides":
        kernel = kernel * slides_scale(layer if layer is not None else fn)
    check_finite_result(kernel, f"two_layer_ntk ({method}, {dtype})",
                        "rescale the inputs (e.g. to unit norm) or compute in float64")
    return kernel


def _relu_lecture_form(gram: torch.Tensor, q11: torch.Tensor, q22: torch.Tensor) -> torch.Tensor:
    """``‖x‖‖x'‖ [2ξ(π − arccos ξ) + √(1 − ξ²)] / (2π)`` with ``ξ = cos θ``.

    ``θ = arccos ξ`` is evaluated as ``atan2(√(‖x‖²‖x'‖² − <x,x'>²), <x,x'>)``, which is
    exact at ``ξ = 1`` (``arccos`` turns one rounding error in ``ξ`` into ``√ε``); a zero
    input gives 0.
    """
    norms = stable.root_product(q11, q22)
    theta = stable.angle(q11, q22, gram)  # no overflow of q11·q22 (ntkit.infinite.stable)
    xi = torch.cos(theta)
    return norms * (2 * xi * (math.pi - theta) + torch.sin(theta)) / (2 * math.pi)


class TwoLayerNet(nn.Module):
    """``h(x) = (1/√m) Σ_i a_i σ(b_iᵀx)``, ``a_i ~ N(0, 1)``, ``b_i ~ N(0, I_d)`` (the lecture's net).

    Parameters ``a`` ``(m,)`` and ``B`` ``(m, d)``; input ``(n, d)``, output ``(n,)``.
    """

    def __init__(
        self,
        d: int,
        m: int,
        activation: str | Fn | ElementwiseLayer = "relu",
        seed: int | None = None,
        dtype: Any = torch.float64,
    ) -> None:
        super().__init__()
        d, m = check_positive_int(d, "d"), check_positive_int(m, "m")
        self.sigma, self.sigma_prime, _ = _resolve(activation)
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
        dtype = resolve_dtype(dtype)
        self.a = nn.Parameter(torch.randn(m, generator=generator, dtype=dtype))
        self.B = nn.Parameter(torch.randn(m, d, generator=generator, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigma(x @ self.B.T) @ self.a / math.sqrt(self.a.numel())


def two_layer_finite_ntk(
    x1: Any,
    x2: Any = None,
    *,
    a: Any,
    B: Any,
    activation: str | Fn | ElementwiseLayer = "relu",
) -> torch.Tensor:
    """The finite-width NTK of :class:`TwoLayerNet`, by the explicit formula

    ``(1/m) Σ_i σ(b_iᵀx) σ(b_iᵀx') + <x, x'> (1/m) Σ_i a_i² σ'(b_iᵀx) σ'(b_iᵀx')``.

    Shapes: ``x1 (n1, d)``, ``x2 (n2, d)``, ``a (m,)``, ``B (m, d)``; returns ``(n1, n2)``.
    """
    a = as_tensor(a, "a", min_ndim=1, max_ndim=1)
    B = as_tensor(B, "B", min_ndim=2, max_ndim=2, device=a.device)
    x1 = as_tensor(x1, "x1", min_ndim=2, max_ndim=2, device=a.device)
    x2 = x1 if x2 is None else as_tensor(x2, "x2", min_ndim=2, max_ndim=2, device=a.device)
    if B.shape[0] != a.shape[0] or B.shape[1] != x1.shape[1] or x2.shape[1] != x1.shape[1]:
        raise ShapeError(
            f"need a (m,), B (m, d), x (n, d); got a {tuple(a.shape)}, B {tuple(B.shape)}, "
            f"x1 {tuple(x1.shape)}, x2 {tuple(x2.shape)}"
        )
    fn, dfn, _ = _resolve(activation)
    m = a.shape[0]
    z1, z2 = x1 @ B.T, x2 @ B.T
    first = fn(z1) @ fn(z2).T / m
    second = (x1 @ x2.T) * ((dfn(z1) * a**2) @ dfn(z2).T) / m
    kernel = first + second
    check_finite_result(kernel, "two_layer_finite_ntk",
                        "rescale the inputs or the weights a, B, or compute in float64")
    return kernel


def _column(x: Any, name: str) -> torch.Tensor:
    t = as_tensor(x, name, min_ndim=1, max_ndim=2)
    if t.ndim == 2 and t.shape[1] != 1:
        raise ShapeError(f"{name} must be 1-D inputs, shape (n,) or (n, 1); got {tuple(t.shape)}")
    return t.reshape(-1, 1)


def one_d_finite_kernel(
    x1: Any, x2: Any, a: Any, b: Any, activation: str | Fn | ElementwiseLayer = "relu"
) -> torch.Tensor:
    """The slides' 1-D example at width ``m``:
    ``(1/m) Σ σ(b_i x)σ(b_i x') + (1/m) Σ a_i² x x' σ'(b_i x)σ'(b_i x')``.

    Shapes: ``x1 (n1,)``, ``x2 (n2,)`` (or ``None``), ``a (m,)``, ``b (m,)``; returns ``(n1, n2)``.
    """
    x1 = _column(x1, "x1")
    x2 = x1 if x2 is None else _column(x2, "x2")
    b = as_tensor(b, "b", min_ndim=1, max_ndim=1)
    return two_layer_finite_ntk(x1, x2, a=a, B=b.reshape(-1, 1), activation=activation)


def one_d_limit_kernel(
    x1: Any, x2: Any = None, activation: str | Fn | ElementwiseLayer = "relu", **kwargs: Any
) -> torch.Tensor:
    """The ``m → ∞`` limit of :func:`one_d_finite_kernel`:
    ``E_b[σ(bx)σ(bx')] + x x' E_b[σ'(bx)σ'(bx')]``, ``b ~ N(0, 1)`` (for ReLU: ``x x'`` when
    ``x x' > 0``, else 0). Keyword arguments go to :func:`two_layer_ntk`.
    """
    x1 = _column(x1, "x1")
    x2 = x1 if x2 is None else _column(x2, "x2")
    return two_layer_ntk(x1, x2, activation, **kwargs)


def arora_h_infinity(x: Any, *, normalize: bool = False, dtype: Any = None) -> torch.Tensor:
    r"""Arora et al. 2019's first-layer Gram matrix of a two-layer ReLU net.

    ``H∞_ij = E_{w~N(0,I)}[x_iᵀx_j 1{wᵀx_i >= 0, wᵀx_j >= 0}]
    = x_iᵀx_j (π − θ_ij) / (2π)`` for unit-norm inputs (their eq. (3)), ``θ_ij = arccos x_iᵀx_j``
    the angle between the inputs. As everywhere in ntkit the angle is evaluated as
    ``atan2(√(‖x_i‖²‖x_j‖² − (x_iᵀx_j)²), x_iᵀx_j)`` (:func:`ntkit.infinite.stable.angle`): exact
    at ``x_i = x_j``, where ``arccos`` of a cosine rounded above 1 would need a clamp and
    turns one rounding error into ``√ε``.

    Args:
        x: inputs ``(n, *in_shape)`` (flattened to ``(n, d)``), each of unit Euclidean norm
            (checked to 1e-6 relative) unless ``normalize=True``, which divides each row by
            its norm first.
        normalize: normalize rows to unit norm.
        dtype: computation dtype, default float64.

    Returns:
        ``(n, n)`` tensor on ``x``'s device.
    """
    X = as_tensor(x, "x", dtype=work_dtype(dtype), min_ndim=2)
    X = X.reshape(X.shape[0], -1)
    norms = X.norm(dim=1)
    if normalize:
        if bool((norms == 0).any()):
            raise ParameterError("x has an all-zero row, which cannot be normalized to unit norm")
        X = X / norms[:, None]
    elif bool(((norms - 1).abs() > 1e-6).any()):
        worst = float((norms - 1).abs().max())
        raise ParameterError(
            f"Arora's H∞ is defined for unit-norm inputs, but some rows have | ‖x‖ − 1 | = "
            f"{worst:.3g}; pass normalize=True or normalize x yourself"
        )
    G = X @ X.T
    G = 0.5 * (G + G.T)
    q = G.diagonal()
    theta = stable.angle(q[:, None], q[None, :], G)  # atan2(√(q_i q_j − G²), G), exact at i = j
    return G * (math.pi - theta) / (2.0 * math.pi)
