"""Numerically stable pieces of Gaussian-expectation closed forms (shared by every activation).

For pre-activations ``(u, v) ~ N(0, Σ)``, ``Σ = [[q11, q12], [q12, q22]]``, closed-form
activation kernels are functions of the variances, the correlation ``ρ = q12/√(q11 q22)``
and the determinant ``det Σ = q11 q22 − q12²``. Evaluated naively they fail in three ways:

- ``q11·q22`` overflows (or underflows) long before the kernel does: in float32 at variances
  ``~1e19`` (``~1e-19``); the kernel itself is of the size of a variance;
- ``1 − ρ²`` cancels near ``|ρ| = 1``: one rounding error in ``ρ`` becomes a relative error
  ``ε/(1 − ρ²)`` in the complement, and ``arccos ρ`` an error ``√ε`` on a point with itself;
- a shifted determinant ``det(Σ + s·I) = (q11 + s)(q22 + s) − q12²`` (Erf, Gaussian-type
  activations) cancels at large variance when formed from the shifted diagonal.

The functions here avoid all three:

- the determinant is formed with exact power-of-two scalings ``2^-k`` of each variance (so that
  the scaled variances lie in ``[1/2, 2)``), products then cannot overflow or underflow, and the
  scaling is undone on ``√det``; in float32 the products are formed in float64, where the
  product of two float32 numbers is exact (so the only rounding is that of the difference);
- the angle ``θ = arccos ρ`` is ``atan2(√det, q12)``: exactly 0 for a point with itself, with
  relative accuracy ``ε`` everywhere else;
- ``det(Σ + s·I)`` is ``det Σ + s·(q11 + q22) + s²``: every added term is non-negative;
- ``√(q11 q22) − q12`` and ``E[(u − v)²] = q11 + q22 − 2 q12`` use ``det/(√(q11 q22) + q12)``.

The resulting relative error of ``det`` is ``≤ ~2ε/(1 − ρ²)`` for inputs given exactly — the
condition number of the determinant itself with respect to the inputs, so these forms are
backward stable; ``θ``, ``√det`` and everything built on them inherit that. Gradients are
finite where ``det = 0`` (a point with itself): the derivative of ``√det`` is taken as 0 there.

A zero variance is read as ``ρ = 0``, ``θ = π/2`` (its variable is identically 0: the
continuous limit), so kernels stay finite.

:func:`check_finite` is the one place that turns a non-representable result into an
:class:`~ntkit.errors.NonFiniteError` naming the fix; closed forms and quadrature call it.
"""

from __future__ import annotations

import math

import torch

from .._validation import all_finite
from ..errors import NonFiniteError

#: The fix named when a kernel does not fit the requested dtype.
RANGE_HINT = (
    "compute in float64 (dtype=torch.float64) or rescale: smaller W_std / b_std, fewer layers, "
    "or standardized inputs"
)

# float64 variances inside [2^-450, 2^450] need no scaling: products of two stay normal
# (>= 2^-900 > 2^-1022) and finite, and a determinant down to 2^-52 of them stays normal.
_SAFE_EXPONENT = 450


def inverse_sqrt(q: torch.Tensor) -> torch.Tensor:
    """``1/√q``, with 0 where ``q <= 0`` (a zero variance gives ``ρ = 0``). Any shape."""
    positive = q > 0
    return torch.where(positive, torch.rsqrt(torch.where(positive, q, 1.0)), 0.0)


def zero_as_inf(q: torch.Tensor) -> torch.Tensor:
    """``q`` with ``+∞`` where ``q <= 0`` (or NaN). Any shape.

    For the variances of a determinant: ``det = q11·q22 − q12² = +∞`` (and ``√det = +∞``) at
    every entry with a zero variance, in every scaling path of :func:`root_det`, so that
    ``atan2(√det, q12) = π/2`` exactly there (``ρ = 0``) for any finite ``q12``, without a
    full-size mask; the caller resets ``√det`` to its value 0 there (``nan_to_num_(posinf=0)``).
    """
    return torch.where(q > 0, q, math.inf)


def unravel(flat: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Indices into ``shape`` of the row-major positions ``flat`` (1-D int64), one tensor per dim.

    :func:`torch.unravel_index` without its first-call import of sympy (~1 s, via
    ``torch.fx``), which would land in the first kernel with a near-antiparallel pair.
    """
    out = []
    for size in reversed(shape[1:]):
        out.append(flat % size)
        flat = torch.div(flat, size, rounding_mode="floor")
    out.append(flat)
    return tuple(reversed(out))


def root_product(q11: torch.Tensor, q22: torch.Tensor) -> torch.Tensor:
    """``√(q11·q22)`` as ``√q11·√q22``: no overflow or underflow of the product (broadcasts)."""
    return torch.sqrt(q11.clamp(min=0)) * torch.sqrt(q22.clamp(min=0))


class _SafeSqrt(torch.autograd.Function):
    """``√max(x, 0)`` whose derivative is taken as 0 where ``x <= 0`` (not ``∞``)."""

    @staticmethod
    def forward(ctx, x):
        root = x.clamp(min=0).sqrt()
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx, grad):
        (root,) = ctx.saved_tensors
        positive = root > 0
        return torch.where(positive, grad * 0.5 / torch.where(positive, root, 1.0), 0.0)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``√max(x, 0)`` with gradient 0 (not ``∞``/NaN) where ``x <= 0``. Any shape."""
    if x.requires_grad:
        return _SafeSqrt.apply(x)
    return x.clamp(min=0).sqrt_()


def _sqrt_fresh(x: torch.Tensor) -> torch.Tensor:
    """:func:`safe_sqrt` of a temporary that nothing else holds: in place without autograd."""
    if x.requires_grad:
        return _SafeSqrt.apply(x)
    return x.clamp_(min=0).sqrt_()


def _pow2_scale(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, 1/r)`` with ``r = 2^-k`` exact, ``k = ⌊e/2⌋`` for ``p = m·2^e``: ``p·r² ∈ [1/2, 2)``.

    Built from the exponent bits (float64 only), so ``r`` is exactly a power of two on every
    platform; ``r = 1`` where ``p`` is 0 or not finite. ``p`` is detached (the scale is
    piecewise constant, so its derivative is 0 almost everywhere).
    """
    p = p.detach()
    _, e = torch.frexp(p)
    k = torch.where(torch.isfinite(p) & (p > 0), torch.div(e, 2, rounding_mode="floor"), 0)
    k = k.to(torch.int64)
    r = ((1023 - k) << 52).view(torch.float64)
    inv = ((1023 + k) << 52).view(torch.float64)
    return r, inv


def _span(q11: torch.Tensor, q22: torch.Tensor) -> tuple[float, float, float]:
    """``(min, max, smallest positive)`` over both variance tensors (NaN propagates).

    One reduction and one sync; a second only when a variance is exactly 0 (e.g. the
    zero-padded nodes of graphs): such entries need no scaling (their products are exactly
    0), so the scaling decision looks at the smallest positive variance (0 if none).
    """
    both = torch.cat([q11.detach().reshape(-1), q22.detach().reshape(-1)])
    lo, hi = torch.aminmax(both)
    lo, hi = torch.stack([lo, hi]).tolist()
    lo_positive = lo
    if lo == 0:
        lo_positive = float(torch.where(both > 0, both, math.inf).min())
        lo_positive = 0.0 if lo_positive == math.inf else lo_positive
    return lo, hi, lo_positive


def _needs_scaling(lo: float, hi: float) -> bool:
    """Whether float64 variances in ``[lo, hi]`` (after the shift) need power-of-two scaling."""
    return not (2.0**-_SAFE_EXPONENT <= lo and hi <= 2.0**_SAFE_EXPONENT)


def root_det(
    q11: torch.Tensor, q22: torch.Tensor, q12: torch.Tensor, shift: float = 0.0
) -> torch.Tensor:
    """``√det(Σ + shift·I) = √((q11 + s)(q22 + s) − q12²)``, stable (module docstring).

    Args:
        q11, q22: variances, broadcastable against ``q12`` (e.g. ``(n1, 1)`` and ``(1, n2)``:
            the scaling work is then done on the small tensors).
        q12: covariances; the result has the broadcast shape and ``q12``'s dtype.
        shift: ``s >= 0`` added to both variances (Erf uses ``1/2``).

    The determinant is clamped at 0 (rounding can make it slightly negative); for
    ``shift > 0`` it is ``det Σ + s(q11 + q22) + s²``, whose added terms never cancel.
    Relative error ``≲ 2ε/(1 − ρ²)`` (``ε`` of float64 also for float32 inputs, whose products
    are formed exactly in float64). The gradient is finite, 0 where the determinant is 0.
    """
    return _root_det(q11, q22, q12, shift, _span(q11, q22))


def _root_det(
    q11, q22, q12, shift: float, span: tuple[float, float], exact: bool = True
) -> torch.Tensor:
    """:func:`root_det` given ``span = _span(q11, q22)``.

    ``exact=False`` (float32 only, no shift, products in range): ``det`` formed in float32 —
    backward stable (the error equals a perturbation of the inputs by a few ulps, which is
    what rounding the data to float32 already does), the fast path of the ReLU family.
    """
    out_dtype = q12.dtype
    # Exactly-zero variances form exact zero products: the range that matters is that of the
    # positive ones (span[2]); with a shift every variance is positive anyway.
    lo, hi = (span[0] if shift else span[2]) + shift, span[1] + shift
    if out_dtype != torch.float64:
        finfo = torch.finfo(out_dtype)
        in_range = hi * hi < finfo.max / 4 and lo * lo > finfo.tiny * 2.0**50
        if not exact and not shift and in_range:
            return _sqrt_fresh((q11 * q22).sub_(q12 * q12))
        return _root_det_low_precision(q11, q22, q12, shift, lo, hi)
    if not _needs_scaling(lo, hi):
        # Not addcmul: a fused multiply-add would round q11·q22 but not q12², so a point with
        # itself would get det = rounding error instead of exactly 0.
        det = (q11 * q22).sub_(q12 * q12)
        if shift:
            det = det + shift * (q11 + q22) + shift * shift
        return _sqrt_fresh(det).to(out_dtype)
    r1, i1 = _pow2_scale(q11 + shift)
    r2, i2 = _pow2_scale(q22 + shift)
    w1, w2 = r1 * r1, r2 * r2
    a1, b2 = q11 * w1, q22 * w2  # in [1/2, 2) up to the shift
    c12 = q12 * (r1 * r2)
    det = a1 * b2 - c12 * c12
    if shift:
        det = det + shift * (a1 * w2 + w1 * b2) + (shift * shift) * (w1 * w2)
    return (safe_sqrt(det) * (i1 * i2)).to(out_dtype)


def _root_det_low_precision(q11, q22, q12, shift: float, lo: float, hi: float) -> torch.Tensor:
    """float32 (or lower): products of two float32 numbers are exact in float64 and cannot
    overflow or underflow there, so ``det`` is the exactly rounded difference of exact
    products. ``addcmul`` with float32 ``q12`` computes ``q12·q12`` in float64 (type
    promotion), so the big tensor is never converted as a whole; exact whether or not the
    platform fuses the multiply-add (both products are exact)."""
    out_dtype = q12.dtype
    finfo = torch.finfo(out_dtype)
    if not shift and not q12.requires_grad and hi * hi < finfo.max / 4 and lo * lo > finfo.tiny * 2.0**50:
        return _root_det_refined(q11, q22, q12)
    d11, d22 = q11.double(), q22.double()
    det = torch.addcmul(d11 * d22, q12, q12, value=-1)
    if shift:
        det = det + shift * (d11 + d22) + shift * shift
    if det.requires_grad:
        return safe_sqrt(det).to(out_dtype)
    return det.clamp_(min=0).sqrt_().to(out_dtype)


#: Below ``det < q11 q22 / 16`` (``|ρ| > 0.968``) a float32 determinant is recomputed in float64.
_REFINE_BELOW = 1.0 / 16


def _root_det_refined(q11, q22, q12) -> torch.Tensor:
    """float32 ``√det`` with products in range: formed in float32 (relative error
    ``<= 2ε·16`` where ``det >= q11 q22/16``) and recomputed exactly in float64 on the
    entries where ``det < q11 q22/16`` (near-parallel pairs, self pairs), which are few; this
    avoids float64 temporaries of the whole tile (a third of the time of the layer)."""
    prod = q11 * q22
    det = q12 * q12
    torch.sub(prod, det, out=det)
    near = (det < prod.mul_(_REFINE_BELOW)).reshape(-1).nonzero().squeeze(1)
    det.clamp_(min=0).sqrt_()
    if near.numel():
        shape = det.shape
        where = unravel(near, shape)  # any strides
        a = torch.broadcast_to(q11, shape)[where].double()
        b = torch.broadcast_to(q22, shape)[where].double()
        c = torch.broadcast_to(q12, shape)[where].double()
        det[where] = (a * b - c * c).clamp_(min=0).sqrt_().to(det.dtype)
    return det


def angle(
    q11: torch.Tensor, q22: torch.Tensor, q12: torch.Tensor, root: torch.Tensor | None = None
) -> torch.Tensor:
    """``θ = arccos ρ ∈ [0, π]`` as ``atan2(√det Σ, q12)``; ``π/2`` where a variance is ``<= 0``.

    Exactly 0 for a point with itself (``det = 0``, ``q12 > 0``). ``root`` is
    :func:`root_det` if already computed. Shapes as in :func:`root_det`.
    """
    span = _span(q11, q22)
    return _angle(q11, q22, q12, _root_det(q11, q22, q12, 0.0, span) if root is None else root, span)


def _angle(q11, q22, q12, root: torch.Tensor, span: tuple[float, float]) -> torch.Tensor:
    """:func:`angle` given ``root`` and ``span = _span(q11, q22)``."""
    theta = torch.atan2(root, q12)
    if not span[0] > 0:  # a zero variance somewhere (or NaN): ρ = 0 there
        # In place, with the variances' own (broadcast) masks: no full-size mask.
        theta.masked_fill_(~(q11 > 0), math.pi / 2).masked_fill_(~(q22 > 0), math.pi / 2)
    return theta


def correlation(q11: torch.Tensor, q22: torch.Tensor, q12: torch.Tensor) -> torch.Tensor:
    """``ρ = q12/(√q11·√q22)`` clamped to ``[−1, 1]``; 0 where a variance is ``<= 0``.

    The normalization is a product of square roots, so it neither overflows nor underflows.
    Use :func:`sin_angle` (not ``√(1 − ρ²)``) for the complement.
    """
    return (q12 * inverse_sqrt(q11) * inverse_sqrt(q22)).clamp(-1.0, 1.0)


def sin_angle(
    q11: torch.Tensor, q22: torch.Tensor, q12: torch.Tensor, root: torch.Tensor | None = None
) -> torch.Tensor:
    """``√(1 − ρ²) = √det Σ/(√q11·√q22)`` from the determinant (no cancellation); 1 where a
    variance is ``<= 0`` (``ρ = 0``). ``(1 − ρ²)`` is its square."""
    if root is None:
        root = root_det(q11, q22, q12)
    s = (root * inverse_sqrt(q11)) * inverse_sqrt(q22)
    if not (bool((q11 > 0).all()) and bool((q22 > 0).all())):
        s = torch.where((q11 > 0) & (q22 > 0), s, 1.0)
    return s.clamp(max=1.0)


def gap(
    q11: torch.Tensor, q22: torch.Tensor, q12: torch.Tensor, root: torch.Tensor | None = None
) -> torch.Tensor:
    """``√(q11 q22) − q12 >= 0``; for ``q12 > 0`` as ``det/(√(q11 q22) + q12)`` (no cancellation).

    ``= √(q11 q22)·(1 − ρ)``: the stable form of ``1 − ρ`` times the scale.
    """
    if root is None:
        root = root_det(q11, q22, q12)
    s12 = root_product(q11, q22)
    near = root * (root / torch.where(q12 > 0, s12 + q12, 1.0))
    return torch.where(q12 > 0, near, s12 - q12)


def difference_variance(
    q11: torch.Tensor, q22: torch.Tensor, q12: torch.Tensor, root: torch.Tensor | None = None
) -> torch.Tensor:
    """``E[(u − v)²] = q11 + q22 − 2 q12 >= 0``, as ``(q11 − q22)²/(√q11 + √q22)² + 2·gap``.

    Accurate when ``u ≈ v`` (a point with a near copy of itself), where the naive sum cancels;
    0 exactly for a point with itself. Needed by Sin/Cos/Rbf/Gaussian-type kernels.
    """
    s1, s2 = torch.sqrt(q11.clamp(min=0)), torch.sqrt(q22.clamp(min=0))
    total = s1 + s2
    ratio = torch.where(total > 0, (q11 - q22) / torch.where(total > 0, total, 1.0), 0.0)
    return ratio * ratio + 2.0 * gap(q11, q22, q12, root)


def sum_variance(q11: torch.Tensor, q22: torch.Tensor, q12: torch.Tensor) -> torch.Tensor:
    """``E[(u + v)²] = q11 + q22 + 2 q12``: :func:`difference_variance` with ``−q12``."""
    return difference_variance(q11, q22, -q12)


def check_finite(t: torch.Tensor, what: str, hint: str = RANGE_HINT) -> torch.Tensor:
    """Return ``t`` if every entry is finite; else raise :class:`~ntkit.errors.NonFiniteError`.

    The message says which quantity (``what``), how many entries, the dtype and its largest
    finite value, and ``hint``: what to change (default :data:`RANGE_HINT`: float64 or
    rescaling). One reduction pass over ``t``; call it on the small variance vectors where
    a bound on them bounds the whole kernel (Cauchy–Schwarz: ``|k(x, x')|² <= k(x, x) k(x', x')``).
    """
    if all_finite(t):
        return t
    finite = torch.isfinite(t)
    bad = int((~finite).sum())
    kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
    raise NonFiniteError(
        f"{what} is not representable in {t.dtype}: {bad} of {t.numel()} entries are {kind} "
        f"(largest finite value {torch.finfo(t.dtype).max:.3g}); {hint}"
    )


def exp_checked(log_value: torch.Tensor, what: str, hint: str = RANGE_HINT) -> torch.Tensor:
    """``exp(log_value)``, raising :class:`~ntkit.errors.NonFiniteError` (via
    :func:`check_finite`) where it overflows; for kernels computed in the log domain
    (Gaussian/Exp-type activations), so that overflow is an error, never Inf/NaN."""
    return check_finite(torch.exp(log_value), what, hint)
