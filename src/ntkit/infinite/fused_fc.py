"""One pass per tile for fully-connected ReLU-family nets (issue 21).

The layer engine evaluates ``Dense → ABReLU → … → Dense`` as about ten full-tile torch ops
per layer (a depth-3 ReLU NTK tile: 33 passes, ~316 bytes of memory traffic per entry), so
on a CPU its matrix-free products are bound by memory bandwidth, not by arithmetic. The
same recursion written as one function of the tile's Gram matrix (:func:`fc_tile`) can be
compiled by ``torch.compile`` (TorchInductor's C++ backend) into a single vectorized loop
that reads the Gram entry once and writes the kernel entry once.

Recursion (docs/DESIGN.md, NTK parameterization; Jacot et al. 2018, Lee et al. 2019):

- input: ``K = x1 x2ᵀ / d``, ``Θ = 0``;
- ``Dense(W_std, b_std)``: ``K ← W_std² K + b_std²``, ``Θ ← K + W_std² Θ``;
- ``ABReLU(a, b)`` (Cho & Saul 2009, degree-1 arc-cosine kernel, generalised to two slopes):
  with ``θ = atan2(√(q11 q22 − K²), K)`` and ``c = (a − b)²/2π``,
  ``E[φ'φ'] = ab + c(π − θ)``, ``E[φφ] = K·E[φ'φ'] + c·√(q11 q22 − K²)``,
  ``K ← E[φφ]``, ``Θ ← Θ·E[φ'φ']``.

Numerics match the engine's float32 route (:mod:`ntkit.infinite.stable`,
:func:`ntkit.infinite.activations._arc_cosine_forward`) to float32 round-off:

- the determinant ``q11 q22 − K²`` is formed in float32 (backward stable: its error,
  ``~ε·q11 q22``, is that of the rounding of ``K`` itself, which near ``ρ = 1`` already makes
  ``θ`` only ``√ε``-accurate in any float32 route — the arc-cosine kernel is not Lipschitz
  there); pairs of an example with itself are exact in the engine's diagonal tiles and
  pinned exactly by :class:`~ntkit.infinite.source.LayerSource` elsewhere;
- ``atan2`` is a ratio and a polynomial (Abramowitz & Stegun 4.4.49, relative error
  ``≤ 2e-8``, under float32's ``6e-8``), which compiles to nine multiply–adds instead of a
  library call (``torch.atan2`` cost 3× the rest of the loop);
- near ``ρ = −1`` (``t = π − θ < 1/2``) ``t`` is taken directly (it is the reduced angle) and
  ``E[φφ]`` from the series of ``1 − t cot t``, as the engine does.

**When it is used** (:class:`FusedTiles`, the tiles of
:class:`ntkit.infinite.source.LayerSource`, i.e. of ``KernelOperator`` products, Nyström
panels and predictions): float32 tiles of nets made only of ``Dense`` (NTK parameterization,
numeric stds) and ``ABReLU``-family layers (ReLU, LeakyReLU, Abs, ABReLU; :func:`fc_steps`),
with positive finite variances, in walks of at least :data:`MIN_ENTRIES` kernel entries
(compiling takes ~40 s the first time on a 2-core machine, ~5 s once TorchInductor's on-disk
cache has it). The first such tile of a process is computed both ways and timed (CPU seconds
of the process): the compiled tile is kept for the process only if it agrees with the
engine's to float32 round-off and costs at least 10% less; a failed compilation (no C++
compiler, an unsupported platform) keeps the engine, with one warning. ``NTKIT_FUSED=0``
never compiles, ``NTKIT_FUSED=1`` compiles whatever the walk's size (still checked and timed
once); ``NTKIT_TUNE=0`` (no timing probes, :mod:`ntkit.hardware`) leaves it off unless
``NTKIT_FUSED=1``.

**Threads.** The compiled loop is called with the GIL held (TorchInductor's C++ binding), so
the tile pool's threads would take turns; while the loop is in use,
:class:`~ntkit.infinite.source.LayerSource` asks for tiles one at a time
(``serial_tiles``) and the loop is compiled parallel over torch's threads (OpenMP). One
n = 20,000 product on the 2-core AMD EPYC: 2.1–2.3 s one tile at a time, 3.0–3.2 s on the
2-thread pool, 3.4–4.2 s on the pool with 2-thread loops. Diagonal tiles of a symmetric
kernel use the loop too, symmetrized, with the self pairs set to the exact
``k(x_i, x_i)`` (computed once per source).
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .. import hardware
from .._fast_matmul import matmul
from .activations import ABReLU, _self_dot
from .combinators import SerialLayer
from .dense import Dense

#: ``atan u / u ≈ Σ a₂ₖ u²ᵏ`` on ``[0, 1]``, k = 0 … 8 (Abramowitz & Stegun 1964, eq. 4.4.49,
#: after Hastings; ``|error| ≤ 2e-8``).
_ATAN_POLY = (1.0, -0.3333314528, 0.1999355085, -0.1420889944, 0.1065626393, -0.0752896400,
              0.0429096138, -0.0161657367, 0.0028662257)
#: Below this ``t = π − θ`` the NNGP uses the series of ``1 − t cot t`` (as the engine).
_SERIES_BELOW = 0.5
#: ``1 − t cot t = Σ 2^{2k}|B_2k|/(2k)! · t^{2k}``, k = 1 … 5: for ``t < 1/2`` the next term
#: is below ``6e-9`` of the sum, under float32's ``6e-8`` (the engine's float64 route keeps 10).
_COT_SERIES = (0.3333333333333333, 0.022222222222222223, 0.0021164021164021165,
               0.00021164021164021165, 2.1377799155576935e-05)
#: Walks of fewer kernel entries never compile (module docstring).
MIN_ENTRIES = 1 << 28
#: The compiled tile must cost at least this fraction less than the engine's to be used.
MARGIN = 0.10
#: Entries of a compiled tile. Its loop costs the same per entry at any side, so the side is
#: set by the fixed costs per tile (the Python call, the Gram product's set-up, the
#: single-threaded parts between parallel loops) against the cache: one product on the
#: 2-core AMD EPYC, n = 20,000, tiles one at a time, sides 512 / 1024 / 2048: 2.37–2.46 /
#: 2.11–2.29 / 2.63–2.92 s (the engine's measured side, ntkit.hardware, does not apply).
TILE_ENTRIES = 1024 * 1024

Step = tuple  # ("dense", w2, b2 or None) | ("abrelu", a, b)


def fc_steps(arch: Any) -> tuple[Step, ...] | None:
    """The recursion steps of ``arch`` when it is a plain fully-connected ReLU-family net.

    Returns a tuple of ``("dense", W_std², b_std² or None)`` and ``("abrelu", a, b)`` steps,
    or ``None`` when ``arch`` has any other layer (or a Dense in the standard
    parameterization, with ``s ≠ (1, 1)``, or with tensor-valued stds).
    """
    layers = _flatten(arch)
    if not layers:
        return None
    steps: list[Step] = []
    for layer in layers:
        if type(layer) is Dense:
            if layer.parameterization != "ntk" or layer.s != (1, 1):
                return None
            if isinstance(layer.W_std, torch.Tensor) or isinstance(layer.b_std, torch.Tensor):
                return None
            steps.append(("dense", layer.W_std**2, None if layer.b_std is None else layer.b_std**2))
        elif isinstance(layer, ABReLU) and type(layer).expectations is ABReLU.expectations:
            steps.append(("abrelu", layer.a, layer.b))
        else:
            return None
    return tuple(steps)


def _flatten(arch: Any) -> list:
    """The layers of ``arch`` with nested ``serial`` combinators opened."""
    if type(arch) is SerialLayer:
        return [leaf for layer in arch.layers for leaf in _flatten(layer)]
    return [arch]


def variances(v: torch.Tensor, steps: tuple[Step, ...]) -> torch.Tensor:
    """``(L, n)``: the variance entering each ABReLU step, from the input variances ``v``.

    The same roundings as the engine (``w2·v + b2``; ``v·(a² + b²)/2`` after an activation).
    """
    out = []
    for step in steps:
        if step[0] == "dense":
            v = v * step[1]
            if step[2] is not None:
                v = v + step[2]
        else:
            out.append(v)
            v = v * _self_dot(step[1], step[2])
    return torch.stack(out) if out else v.new_zeros((0, v.shape[0]))


def fc_tile(gram: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, steps: tuple[Step, ...],
            want_ntk: bool, fan_in: int) -> torch.Tensor:
    """The NTK (``want_ntk``) or NNGP ``(r, c)`` of ``steps`` from the inputs' Gram matrix.

    Args:
        gram: ``(r, c)`` float32 ``x1 x2ᵀ`` (divided by ``fan_in`` here: the input kernel).
        var1, var2: ``(L, r)`` / ``(L, c)`` variances entering each ABReLU step
            (:func:`variances`), all positive.
        steps: from :func:`fc_steps`.

    Pairs of an example with itself get the ``√ε``-accurate angle of any float32 pair whose
    Gram entry and variances were rounded separately; the caller sets them to their exact
    values (:class:`~ntkit.infinite.source.LayerSource` pins the self pairs of every tile).

    Elementwise torch ops only, so that ``torch.compile`` fuses them into one loop; the
    same function runs eagerly where compilation is not used.
    """
    nngp = gram / fan_in
    ntk = None
    layer = 0
    # Known sign: after an activation whose slopes have opposite signs (or one is 0: ReLU, Abs)
    # φ has one sign, so the NNGP E[φφ] is >= 0, and Dense maps keep it (W_std², b_std² >= 0);
    # then θ <= π/2 and the ρ ≈ −1 branch cannot occur, so it is not generated.
    nonnegative = False
    for step in steps:
        if step[0] == "dense":
            w2, b2 = step[1], step[2]
            nngp = nngp * w2
            if b2 is not None:
                nngp = nngp + b2
            if want_ntk:
                ntk = nngp if ntk is None else nngp + w2 * ntk
            continue
        a, b = step[1], step[2]
        q1 = var1[layer][:, None]
        q2 = var2[layer][None, :]
        layer += 1
        c = (a - b) ** 2 / (2 * math.pi)
        if c == 0:  # a linear map: E[φ'φ'] = ab, E[φφ] = ab·K
            dot = a * b
            nngp = nngp * dot
            if ntk is not None:
                ntk = ntk * dot
            continue
        # float32 determinant, as the engine's float32 route: its error (~ε·q11·q22) is that
        # of the rounding of K itself; a float64 determinant cost 30% of the loop and changed
        # no entry's error by more than 10% (tests/test_fused_fc.py).
        root = (q1 * q2 - nngp * nngp).clamp_min(0.0).sqrt()
        if nonnegative:
            dot, new = _arc_cosine(_atan2_nonneg(root, nngp), nngp, root, a, b, c)
        else:
            dot, new = _signed_step(nngp, root, a, b, c)
        nonnegative = a * b <= 0
        if ntk is not None:
            ntk = ntk * dot
        nngp = new
    if want_ntk:
        return torch.zeros_like(gram) if ntk is None else ntk
    return nngp


def _signed_step(nngp: torch.Tensor, root: torch.Tensor, a: float, b: float, c: float):
    """``(E[φ'φ'], E[φφ])`` of an ABReLU for NNGP entries of any sign (module docstring)."""
    phi = _atan2_nonneg(root, nngp.abs())  # angle between u and ±v, in [0, π/2]
    negative = nngp < 0
    dot, new = _arc_cosine(torch.where(negative, math.pi - phi, phi), nngp, root, a, b, c)
    near = negative & (phi < _SERIES_BELOW)  # ρ ≈ −1: t = π − θ = phi, no cancellation
    dot = torch.where(near, c * phi + a * b, dot)
    new = torch.where(near, nngp * (a * b) + c * root * _one_minus_t_cot_t(phi), new)
    return dot, new


def _arc_cosine(theta, nngp, root, a: float, b: float, c: float):
    """``(E[φ'φ'], E[φφ]) = (ab + c(π − θ), K·E[φ'φ'] + c·√det)`` (module docstring)."""
    dot = theta * (-c) + _self_dot(a, b)
    return dot, nngp * dot + c * root


def _atan2_nonneg(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``atan2(y, x)`` for ``y, x ≥ 0`` (not both 0), in ``[0, π/2]``, by elementwise ops.

    ``u = min/max ∈ [0, 1]``, ``atan u = u·P(u²)`` with the degree-16 polynomial of
    Abramowitz & Stegun (1964), eq. 4.4.49 (relative error ≤ 2e-8 on ``[0, 1]``), and
    ``π/2 − atan u`` when ``y > x``: one division and nine multiply–adds, no library call.
    """
    u = torch.minimum(y, x) / torch.maximum(y, x)
    u2 = u * u
    acc = torch.full_like(u, _ATAN_POLY[-1])
    for coef in _ATAN_POLY[-2::-1]:
        acc = acc * u2 + coef
    angle = acc * u
    return torch.where(y > x, math.pi / 2 - angle, angle)


def _one_minus_t_cot_t(t: torch.Tensor) -> torch.Tensor:
    """``1 − t cot t`` for ``|t| < 1/2`` to float32 accuracy (Horner in ``t²``, no cancellation)."""
    t2 = t * t
    acc = t2 * _COT_SERIES[-1]
    for coef in _COT_SERIES[-2::-1]:
        acc = (acc + coef) * t2
    return acc


class FusedTiles:
    """Compiled tiles of one fully-connected ReLU-family kernel ``K(x1, x2)`` (module docstring).

    Args:
        steps: :func:`fc_steps` of the architecture.
        want_ntk: tiles of the NTK (else the NNGP).
        x1, x2: ``(n1, d)`` / ``(n2, d)`` float32 CPU inputs of the whole walk.

    The variances of every example at every activation are computed once here (vectors);
    :meth:`tile` then costs one Gram product and one compiled elementwise loop.
    """

    def __init__(self, steps: tuple[Step, ...], want_ntk: bool, x1: torch.Tensor, x2: torch.Tensor) -> None:
        self.steps = steps
        self.want_ntk = want_ntk
        self.x1, self.x2 = x1, x2
        self.fan_in = x1.shape[1]
        self.var1 = variances((x1 * x1).sum(1) / self.fan_in, steps)
        self.var2 = variances((x2 * x2).sum(1) / self.fan_in, steps)
        # Zero or non-finite variances are the engine's special cases (stable.zero_as_inf, errors).
        self.usable = bool(x1.dtype == torch.float32 and x1.device.type == "cpu" and x1.ndim == 2
                           and all(bool((torch.isfinite(v) & (v > 0)).all()) for v in (self.var1, self.var2)))

    @property
    def active(self) -> bool:
        """Not (yet) decided against: the compiled loop is, or may be, used for these tiles."""
        return self.usable and _decided.get(self.key()) is not False

    def choice(self) -> str | None:
        """This process's decision for these tiles (:func:`choice`)."""
        return choice(self.steps, self.want_ntk, self.fan_in)

    def key(self) -> tuple:
        """The decision's key (:func:`_key`) for the calling thread."""
        return _key(self.steps, self.want_ntk, self.fan_in)

    def tile(self, rows: slice, cols: slice, engine: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``K[rows, cols]``; ``engine()`` computes the same tile with the layer engine (the
        first tile's check, and the fallback)."""
        if not self.usable:
            return engine()
        key = self.key()
        fn = _decided.get(key)
        if fn is False:
            return engine()
        gram = matmul(self.x1[rows], self.x2[cols].T)  # the engine's Gram product (route included)
        # contiguous (tiny) variance slices: the compiled loop is specialised on strides
        args = (gram, self.var1[:, rows].contiguous(), self.var2[:, cols].contiguous())
        if fn is None:
            return _decide(key, args, engine)
        return fn(*args)


def tile_entries() -> int:
    """Entries per tile of a walk with compiled tiles: :data:`TILE_ENTRIES`, or
    ``NTKIT_TILE_ENTRIES`` when set (as for every walk, :func:`ntkit.hardware.tile_entries`)."""
    return hardware.tile_entries() if os.environ.get("NTKIT_TILE_ENTRIES", "").strip() else TILE_ENTRIES


def wanted(entries: int) -> bool:
    """Whether a walk over ``entries`` kernel entries may use compiled tiles (module docstring)."""
    forced = os.environ.get("NTKIT_FUSED", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return hardware.tuning_enabled() and entries >= MIN_ENTRIES


#: (steps, want_ntk, fan_in, torch threads) -> compiled tile function, or False (the engine).
_decided: dict = {}
_lock = threading.Lock()


def _key(steps: tuple[Step, ...], want_ntk: bool, fan_in: int, threads: int | None = None) -> tuple:
    """Architecture, fan-in and torch threads (default: the calling thread's), over which
    the compiled loop is parallel (OpenMP)."""
    return (steps, want_ntk, fan_in, torch.get_num_threads() if threads is None else threads)


def _compile(steps: tuple[Step, ...], want_ntk: bool, fan_in: int, example: tuple) -> Callable:
    """The compiled tile function, compiled now on ``example`` with symbolic sizes, so that
    one loop serves every tile shape (edge tiles included) without recompiling."""
    def tile(gram, var1, var2):
        return fc_tile(gram, var1, var2, steps, want_ntk, fan_in)

    compiled = torch.compile(tile, fullgraph=True)

    def run(gram, var1, var2):
        # sizes symbolic on every call (a call without the marks would specialize and recompile)
        torch._dynamo.mark_dynamic(gram, (0, 1))
        torch._dynamo.mark_dynamic(var1, 1)
        torch._dynamo.mark_dynamic(var2, 1)
        return compiled(gram, var1, var2)

    run(*example)
    return run


def _decide(key, args, engine: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Compile, check and time the fused tile against the engine's on this tile (once)."""
    with _lock:
        if key in _decided:  # another thread decided meanwhile
            fn = _decided[key]
            return engine() if fn is False else fn(*args)
        t0 = time.process_time()
        reference = engine()
        t_engine = time.process_time() - t0
        try:
            fn = _compile(key[0], key[1], key[2], args)
            t0 = time.process_time()
            fused = fn(*args)
            t_fused = time.process_time() - t0
        except Exception as err:  # no C++ compiler, unsupported platform, ...
            warnings.warn(f"ntkit: compiled fully-connected tiles unavailable ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); using the layer engine",
                          RuntimeWarning, stacklevel=3)
            _decided[key] = False
            return reference
        scale = float(reference.abs().max())
        agree = bool(torch.isfinite(fused).all()) and float((fused - reference).abs().max()) <= 1e-4 * scale
        _decided[key] = fn if agree and t_fused <= (1 - MARGIN) * t_engine else False
        if not agree:
            warnings.warn("ntkit: compiled fully-connected tiles disagree with the layer engine; "
                          "using the engine", RuntimeWarning, stacklevel=3)
        return reference


def choice(steps: tuple[Step, ...], want_ntk: bool, fan_in: int, threads: int | None = None) -> str | None:
    """``"fused"``, ``"engine"`` or ``None`` (not decided yet) for this process."""
    key = _key(steps, want_ntk, fan_in, threads)
    if key not in _decided:
        return None
    return "engine" if _decided[key] is False else "fused"
