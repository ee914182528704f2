"""The rest of the empirical API: NNGP, NTK-vector products, both kernels as ``nk.Kernel``.

- :func:`empirical_nngp`: ``Σ_o f_o(x) f_o(x')`` (the outputs' inner products: the NNGP
  kernel of one finite network; Lee et al. 2018 average it over initializations);
- :func:`ntk_vp`: ``Θ(x1, x2) v`` without forming ``Θ``: one VJP of the ``x2`` batch with
  cotangent ``v`` gives the parameter-space vector ``u = J(x2)ᵀ v``, one JVP of the ``x1``
  batch along ``u`` gives ``J(x1) u`` (Novak et al. 2022, "Fast finite width neural tangent
  kernel", section 3);
- :func:`empirical_kernel`: both, as a :class:`~ntkit.Kernel`.

All take the inputs and outputs of :func:`ntkit.empirical_ntk` (:mod:`.inputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import jvp, vjp

from .._validation import check_choice, check_positive_int
from ..budget import parse_budget
from ..errors import NtkitError, ParameterError, ShapeError
from ..kernel import Kernel
from ._params import ParamSelector, Problem
from .core import empirical_ntk, prepare_problem
from .inputs import Examples, OutputFn
from .traceable import traceable

NNGP_OUTPUTS = ("trace", "full", "diagonal", "diagonal_batch")


def _outputs(problem: Problem, x: Examples, block: int) -> torch.Tensor:
    """``(n, o)`` outputs, ``block`` examples at a time, without a graph."""
    with torch.no_grad():
        return torch.cat([problem.f(problem.selected, x[s : s + block]) for s in range(0, len(x), block)])


def _block(problem: Problem, batch_size: int | None, memory_budget: int | None) -> int:
    if batch_size is not None:
        return check_positive_int(batch_size, "batch_size")
    budget = parse_budget(memory_budget)
    per_example = 4 * (problem.act_numel + problem.n_out) * problem.itemsize
    return max(1, budget // max(1, per_example))


def empirical_nngp(model: nn.Module, x1: Any, x2: Any = None, *, output: str = "trace",
                   output_fn: OutputFn = None, model_kwargs: dict | None = None,
                   batch_size: int | None = None, memory_budget: Any = None) -> torch.Tensor:
    """Empirical NNGP kernel: the inner products of the model's outputs.

    ``k(x, x')_{o o'} = f_o(x) f_o'(x')`` at the current weights; the expectation over
    random initializations is the NNGP kernel (Neal 1996; Lee et al. 2018).

    Args:
        model, x1, x2, output_fn, model_kwargs: as :func:`ntkit.empirical_ntk` (inputs of any
            layout, ``x2=None`` meaning ``x1``).
        output: ``"trace"`` → ``(n1, n2)``, ``Σ_o f_o(x) f_o(x')``; ``"full"`` →
            ``(n1, n2, o, o)``; ``"diagonal"`` → ``(n1, n2, o)``; ``"diagonal_batch"`` →
            ``(n1,)``, ``Σ_o f_o(x_i)²`` (``x2`` must be ``None``).
        batch_size, memory_budget: examples per forward pass (default: by the budget).

    Returns:
        The kernel in the model's dtype, on its device.

    Raises:
        ModelError, ShapeError, ParameterError, DeviceError, NonFiniteError.
    """
    check_choice(output, "output", NNGP_OUTPUTS)
    if output == "diagonal_batch" and x2 is not None:
        raise ShapeError("output='diagonal_batch' gives k(x_i, x_i) of x1 alone; pass x2=None")
    with torch.enable_grad(), traceable(model):
        problem, e1, e2, _ = prepare_problem(model, x1, x2, None, output_fn, model_kwargs)
        block = _block(problem, batch_size, memory_budget)
        f1 = _outputs(problem, e1, block)
        f2 = f1 if e2 is None else _outputs(problem, e2, block)
    return _products(f1, f2, output)


def model_outputs(model: nn.Module, x: Any, *, output_fn: OutputFn = None,
                  model_kwargs: dict | None = None, batch_size: int | None = None) -> torch.Tensor:
    """``(n, o)``: the selected outputs of ``x`` (any layout), flattened per example."""
    with torch.enable_grad(), traceable(model):
        problem, e, _, _ = prepare_problem(model, x, None, None, output_fn, model_kwargs)
        return _outputs(problem, e, _block(problem, batch_size, None))


def _products(f1: torch.Tensor, f2: torch.Tensor, output: str) -> torch.Tensor:
    if output == "trace":
        return f1 @ f2.T
    if output == "full":
        return torch.einsum("ia,jb->ijab", f1, f2)
    if output == "diagonal":
        return torch.einsum("ia,ja->ija", f1, f2)
    return (f1 * f1).sum(1)


def ntk_vp(model: nn.Module, x1: Any, x2: Any, v: Any, *, params: ParamSelector = None,
           output_fn: OutputFn = None, model_kwargs: dict | None = None,
           batch_size: int | None = None, memory_budget: Any = None) -> torch.Tensor:
    """The NTK-vector product ``(Θ v)[i, a] = Σ_{j, b} Θ(x1_i, x2_j)_{a b} v[j, b]``, never forming Θ.

    Computed as ``J(x1) (J(x2)ᵀ v)``: VJPs of the ``x2`` blocks with cotangents ``v`` summed
    into one parameter-space vector, then a JVP of each ``x1`` block along it (a second VJP
    of the first where an op has no forward-mode derivative). Cost about three forward
    passes over ``x1`` and ``x2``; memory one block's activations and two parameter vectors.

    Args:
        model, x1, params, output_fn, model_kwargs: as :func:`ntkit.empirical_ntk`.
        x2: ``n2`` examples (same layout as ``x1``) or ``None`` (``x2 = x1``).
        v: ``(n2, o)`` (``o`` the flattened outputs per example), ``(n2,)`` when ``o = 1``, or
            ``(n2, o, k)`` for ``k`` vectors at once.
        batch_size, memory_budget: examples per pass (default: by the budget, 1 GiB).

    Returns:
        ``(n1, o)``, ``(n1,)`` or ``(n1, o, k)`` following ``v``, in the model's dtype.

    Raises:
        ShapeError if ``v`` does not fit; as :func:`ntkit.empirical_ntk` otherwise.
    """
    with torch.enable_grad(), traceable(model):
        problem, e1, e2, _ = prepare_problem(model, x1, x2, params, output_fn, model_kwargs)
        e2 = e1 if e2 is None else e2
        o, n2 = problem.n_out, len(e2)
        v = torch.as_tensor(v, dtype=problem.dtype, device=problem.device)
        squeeze = v.ndim == 1
        if squeeze and o == 1:
            v = v[:, None]
        many = v.ndim == 3
        if v.ndim not in (2, 3) or tuple(v.shape[:2]) != (n2, o):
            raise ShapeError(
                f"v must have shape (n2, o) = ({n2}, {o}) (or ({n2},) when o = 1, or ({n2}, {o}, k) "
                f"for k vectors), got {tuple(v.shape)}"
            )
        vs = v if many else v[..., None]
        block = _block(problem, batch_size, memory_budget)
        columns = [_one_vp(problem, e1, e2, vs[..., k], block) for k in range(vs.shape[-1])]
    out = torch.stack(columns, dim=-1)
    if not many:
        out = out[..., 0]
    return out[:, 0] if squeeze and o == 1 else out


def _one_vp(problem: Problem, e1: Examples, e2: Examples, v: torch.Tensor, block: int) -> torch.Tensor:
    names = list(problem.selected)
    values = tuple(problem.selected.values())
    u = None
    for s in range(0, len(e2), block):
        part = e2[s : s + block]

        def f2(*w, part=part):
            return problem.f(dict(zip(names, w)), part)

        _, pullback = vjp(f2, *values)
        g = pullback(v[s : s + block])
        u = g if u is None else tuple(a + b for a, b in zip(u, g))
    rows = []
    for s in range(0, len(e1), block):
        part = e1[s : s + block]

        def f1(*w, part=part):
            return problem.f(dict(zip(names, w)), part)

        try:
            rows.append(jvp(f1, values, u)[1].detach())
        except NtkitError:
            raise
        except (RuntimeError, NotImplementedError):  # no forward-mode rule: J u by double VJP
            out, pullback = vjp(f1, *values)
            _, pull2 = vjp(pullback, torch.zeros_like(out))
            rows.append(pull2(u)[0].detach())
    return torch.cat(rows)


def empirical_kernel(model: nn.Module, x1: Any, x2: Any = None, *,
                     get: str | Sequence[str] = ("nngp", "ntk"), method: str = "auto",
                     params: ParamSelector = None, output_fn: OutputFn = None,
                     model_kwargs: dict | None = None, batch_size: int | None = None,
                     memory_budget: Any = None) -> Kernel:
    """Empirical NNGP and NTK of one model as a :class:`~ntkit.Kernel` (traced over outputs).

    Args:
        get: ``"nngp"``, ``"ntk"`` or both.
        the rest: as :func:`empirical_nngp` and :func:`ntkit.empirical_ntk`.

    Returns:
        ``Kernel(nngp (n1, n2) | None, ntk (n1, n2) | None, var1 (n1,), var2 (n2,))`` with
        ``var = Σ_o f_o(x)²``, the NNGP diagonal.
    """
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(g not in ("nngp", "ntk") for g in names):
        raise ParameterError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    common = dict(output_fn=output_fn, model_kwargs=model_kwargs, batch_size=batch_size,
                  memory_budget=memory_budget)
    var1 = empirical_nngp(model, x1, output="diagonal_batch", **common)
    var2 = var1 if x2 is None else empirical_nngp(model, x2, output="diagonal_batch", **common)
    nngp = empirical_nngp(model, x1, x2, **common) if "nngp" in names else None
    ntk = empirical_ntk(model, x1, x2, method=method, params=params, **common) if "ntk" in names else None
    return Kernel(nngp=nngp, ntk=ntk, var1=var1, var2=var2)
