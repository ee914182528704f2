"""Monte-Carlo NNGP and NTK over random initializations of finite networks.

For ``s = 0 … n_samples − 1`` a finite network is drawn — ``arch.build(in_shape, seed=seed +
s)`` for an ntkit architecture (in its own parameterization), or ``factory(seed + s)`` for
any function returning an ``nn.Module`` — and its empirical kernels are averaged:

- NNGP: the product of outputs ``f(x) f(x')ᵀ / o``, averaged over the ``o`` output units;
- NTK: the empirical NTK ``Σ_p ∂f_o(x)/∂w_p ∂f_o(x')/∂w_p`` averaged over the outputs.

Both converge to ``arch.kernel(x1, x2)`` as the widths grow (Neal 1996; Lee et al. 2018;
Jacot et al. 2018); at a fixed width the average over samples has a Monte-Carlo error
``∝ 1/√n_samples`` on top of the finite-width bias. This is ntkit's independent check of
every analytic kernel.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ._validation import as_input_pair, check_finite_result, check_positive_int, resolve_dtype
from .budget import parse_budget
from .empirical import empirical_ntk
from .empirical.inputs import OutputFn
from .empirical.kernels import model_outputs
from .errors import ModelError, ParameterError, ShapeError
from .kernel import Kernel


def monte_carlo_kernel(
    arch,
    x1: Any,
    x2: Any = None,
    n_samples: int | Sequence[int] = 16,
    seed: int | None = 0,
    *,
    get: str | Sequence[str] = ("nngp", "ntk"),
    method: str = "auto",
    batch_size: int | None = None,
    memory_budget: Any = None,
    dtype: Any = torch.float64,
    output_fn: OutputFn = None,
    model_kwargs: dict | None = None,
) -> Kernel | list[Kernel]:
    """Average empirical NNGP and NTK of ``n_samples`` random finite networks.

    Args:
        arch: an ntkit architecture (a :class:`~ntkit.Layer`, e.g. ``nk.mlp(3, 512)``), or a
            model factory ``f(seed) -> nn.Module`` (any module; it is cast to ``dtype`` and put
            in eval mode, as the NTK needs a deterministic forward).
        x1: ``(n1, *in_shape)`` inputs; for a factory any layout :func:`ntkit.empirical_ntk`
            accepts (tuple/dict of tensors). x2: the same with ``n2`` examples, or ``None``.
        n_samples: number of random initializations averaged, or an increasing sequence of
            counts (``[4, 16, 64]``): one pass over ``max(n_samples)`` networks returns the
            running average at each count (the last equals a separate call with that count
            and the same seed).
        seed: sample ``s`` uses seed ``seed + s``; ``None`` draws a random base seed.
        get: ``"nngp"``, ``"ntk"`` or both (the NTK is the expensive part).
        method, batch_size, memory_budget: passed to :func:`ntkit.empirical_ntk`.
        dtype: dtype of the networks and the kernels (float64 by default).
        output_fn, model_kwargs: for a factory, as in :func:`ntkit.empirical_ntk`.

    Returns:
        A :class:`~ntkit.Kernel` (a list of them, one per count, when ``n_samples`` is a
        sequence) with ``nngp``/``ntk`` ``(n1, n2)`` (fields not asked for are ``None``) and
        ``var1 (n1,)``/``var2 (n2,)``, the averaged output variances. Both kernels are averaged
        over the output units (``f(x)·f(x')/o`` and the traced NTK ``/ o``), the per-unit
        kernels of the infinite-width limit. For an architecture whose output keeps spatial
        axes ``(n, C, *S)`` the averages run over the channels only, giving ``(n1, n2, *S)``
        (position ``p`` with the same position) and ``var (n, *S)``, the layout of
        ``arch.kernel`` for such networks.
    """
    is_arch = hasattr(arch, "build") and callable(arch.build)
    if not is_arch and (not callable(arch) or isinstance(arch, nn.Module)):
        raise ParameterError(
            "arch must be an ntkit architecture with .build (e.g. nk.mlp(2, 512)) or a model "
            f"factory seed -> nn.Module, got {arch!r}"
        )
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(g not in ("nngp", "ntk") for g in names):
        raise ParameterError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    counts = _counts(n_samples)
    parse_budget(memory_budget)  # every budget spelling, checked before the first sample
    dtype = resolve_dtype(dtype)
    if is_arch:
        x1, x2 = as_input_pair(x1, x2, dtype=dtype)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    totals: dict[str, torch.Tensor] = {}
    results = []
    for s in range(counts[-1]):
        if is_arch:
            sample = _arch_sample(arch, x1, x2, int(seed) + s, dtype, names, method, batch_size,
                                  memory_budget)
        else:
            sample = _factory_sample(arch, x1, x2, int(seed) + s, dtype, names, method, batch_size,
                                     memory_budget, output_fn, model_kwargs)
        for key, value in sample.items():
            totals[key] = value if key not in totals else totals[key] + value
        if s + 1 in counts:
            results.append(_mean(totals, s + 1, x2 is None))
    return results if not isinstance(n_samples, int) else results[0]


def _counts(n_samples: Any) -> list[int]:
    if isinstance(n_samples, (list, tuple)):
        counts = [check_positive_int(c, "n_samples") for c in n_samples]
        if not counts or any(b <= a for a, b in itertools.pairwise(counts)):
            raise ParameterError(
                f"n_samples must be a count or an increasing list of counts, got {n_samples!r}")
        return counts
    return [check_positive_int(n_samples, "n_samples")]


def _mean(totals: dict, count: int, symmetric: bool) -> Kernel:
    mean = {key: value / count for key, value in totals.items()}
    check_finite_result(tuple(mean.get(k) for k in ("nngp", "ntk")), "monte_carlo_kernel's estimate")
    var2 = mean["var1"] if symmetric else mean["var2"]
    return Kernel(nngp=mean.get("nngp"), ntk=mean.get("ntk"), var1=mean["var1"], var2=var2,
                  diagonal=False)


def _arch_sample(arch, x1, x2, seed, dtype, names, method, batch_size, memory_budget) -> dict:
    net = arch.build(tuple(x1.shape[1:]), seed=seed, dtype=dtype).to(x1.device)
    net.eval()
    with torch.no_grad():
        f1 = _channels_first(net(x1), x1.shape[0])
        f2 = f1 if x2 is None else _channels_first(net(x2), x2.shape[0])
    width = f1.shape[1]
    sample = {"var1": (f1 * f1).mean(1), "var2": (f2 * f2).mean(1)}
    if "nngp" in names:
        sample["nngp"] = torch.einsum("ic...,jc...->ij...", f1, f2) / width
    if "ntk" in names:
        ntk = empirical_ntk(net, x1, x2, output="diagonal", method=method,
                            batch_size=batch_size, memory_budget=memory_budget)
        sample["ntk"] = ntk.reshape(*ntk.shape[:2], *f1.shape[1:]).mean(2)
    return sample


def _factory_sample(factory: Callable, x1, x2, seed, dtype, names, method, batch_size, memory_budget,
                    output_fn, model_kwargs) -> dict:
    model = factory(seed)
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"the model factory returned a {type(model).__name__} for seed {seed}, not an nn.Module")
    model = model.to(dtype).eval()
    common = dict(output_fn=output_fn, model_kwargs=model_kwargs, batch_size=batch_size)
    f1 = model_outputs(model, x1, **common)
    f2 = f1 if x2 is None else model_outputs(model, x2, **common)
    o = f1.shape[1]
    sample = {"var1": (f1 * f1).mean(1), "var2": (f2 * f2).mean(1)}
    if "nngp" in names:
        sample["nngp"] = f1 @ f2.T / o
    if "ntk" in names:
        sample["ntk"] = empirical_ntk(model, x1, x2, method=method, memory_budget=memory_budget,
                                      **common) / o
    return sample


def _channels_first(out: torch.Tensor, n: int) -> torch.Tensor:
    """Network outputs as ``(n, C, *S)``; ``(n,)`` counts as one channel."""
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != n:
        raise ShapeError(f"the built network returned {getattr(out, 'shape', out)} for {n} inputs")
    return out.reshape(n, 1) if out.ndim == 1 else out
