"""Monte-Carlo NNGP and NTK over random initializations of an architecture's finite net.

For ``s = 0 … n_samples − 1`` the finite network ``arch.build(in_shape, seed=seed + s)`` is
drawn in the architecture's own parameterization, and its empirical kernels are averaged:

- NNGP: the product of outputs ``f(x) f(x')ᵀ / o``, averaged over the ``o`` output units;
- NTK: the empirical NTK ``Σ_p ∂f_o(x)/∂w_p ∂f_o(x')/∂w_p`` averaged over the outputs.

Both converge to ``arch.kernel(x1, x2)`` as the widths grow (Neal 1996; Lee et al. 2018;
Jacot et al. 2018); at a fixed width the average over samples has a Monte-Carlo error
``∝ 1/√n_samples`` on top of the finite-width bias. This is ntkit's independent check of
every analytic kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._validation import as_input_pair, check_positive_int, resolve_dtype
from .empirical import empirical_ntk
from .errors import ParameterError, ShapeError
from .kernel import Kernel


def monte_carlo_kernel(
    arch,
    x1: Any,
    x2: Any = None,
    n_samples: int = 16,
    seed: int | None = 0,
    *,
    get: str | Sequence[str] = ("nngp", "ntk"),
    method: str = "auto",
    batch_size: int | None = None,
    memory_budget: int | None = None,
    dtype: Any = torch.float64,
) -> Kernel:
    """Average empirical NNGP and NTK of ``n_samples`` random finite nets of ``arch``.

    Args:
        arch: an ntkit architecture (a :class:`~ntkit.Layer`, e.g. ``nk.mlp(3, 512)``).
        x1: ``(n1, *in_shape)`` inputs; x2: ``(n2, *in_shape)`` or ``None`` (``x2 = x1``).
        n_samples: number of random initializations averaged.
        seed: sample ``s`` is ``arch.build(in_shape, seed=seed + s)``; ``None`` draws a
            random base seed.
        get: ``"nngp"``, ``"ntk"`` or both (the NTK is the expensive part).
        method, batch_size, memory_budget: passed to :func:`ntkit.empirical_ntk`.
        dtype: dtype of the networks and the kernels (float64 by default).

    Returns:
        A :class:`~ntkit.Kernel` with ``nngp``/``ntk`` ``(n1, n2)`` (fields not asked for are
        ``None``) and ``var1 (n1,)``/``var2 (n2,)``, the averaged output variances. For a
        network whose output keeps spatial axes ``(n, C, *S)`` the averages run over the
        channels only, giving ``(n1, n2, *S)`` (position ``p`` with the same position) and
        ``var (n, *S)``, the layout of ``arch.kernel`` for such networks.
    """
    if not hasattr(arch, "build") or not callable(arch.build):
        raise ParameterError(
            f"arch must be an ntkit architecture with .build (e.g. nk.mlp(2, 512)), got {arch!r}"
        )
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(g not in ("nngp", "ntk") for g in names):
        raise ParameterError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    n_samples = check_positive_int(n_samples, "n_samples")
    dtype = resolve_dtype(dtype)
    x1, x2 = as_input_pair(x1, x2, dtype=dtype)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    totals: dict[str, torch.Tensor] = {}
    for s in range(n_samples):
        net = arch.build(tuple(x1.shape[1:]), seed=int(seed) + s, dtype=dtype).to(x1.device)
        net.eval()
        with torch.no_grad():
            f1 = _channels_first(net(x1), x1.shape[0])
            f2 = f1 if x2 is None else _channels_first(net(x2), x2.shape[0])
        width = f1.shape[1]
        sample = {
            "var1": (f1 * f1).mean(1),
            "var2": (f2 * f2).mean(1),
        }
        if "nngp" in names:
            sample["nngp"] = torch.einsum("ic...,jc...->ij...", f1, f2) / width
        if "ntk" in names:
            ntk = empirical_ntk(net, x1, x2, output="diagonal", method=method,
                                batch_size=batch_size, memory_budget=memory_budget)
            sample["ntk"] = ntk.reshape(*ntk.shape[:2], *f1.shape[1:]).mean(2)
        for key, value in sample.items():
            totals[key] = value if key not in totals else totals[key] + value
    mean = {key: value / n_samples for key, value in totals.items()}
    var2 = mean["var1"] if x2 is None else mean["var2"]
    return Kernel(nngp=mean.get("nngp"), ntk=mean.get("ntk"), var1=mean["var1"], var2=var2,
                  diagonal=False)


def _channels_first(out: torch.Tensor, n: int) -> torch.Tensor:
    """Network outputs as ``(n, C, *S)``; ``(n,)`` counts as one channel."""
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != n:
        raise ShapeError(f"the built network returned {getattr(out, 'shape', out)} for {n} inputs")
    return out.reshape(n, 1) if out.ndim == 1 else out
