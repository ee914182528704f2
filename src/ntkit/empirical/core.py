"""``empirical_ntk``: the finite-width NTK ``Σ_p ∂f(x)/∂w_p ∂f(x')/∂w_p`` of any module."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._validation import as_input_pair, check_choice, check_positive_int
from ..errors import MemoryBudgetError, ModelError
from . import cost_model
from ._blocks import DEFAULT_MEMORY_BUDGET, block_size, caches, tile
from ._params import ParamSelector, Problem, prepare
from .jacobian import JacobianMethod
from .ntk_vp import NtkVpMethod
from .structured import NotApplicableError, StructuredMethod

OUTPUTS = ("trace", "full", "diagonal")
METHODS = ("auto", "jacobian", "ntk_vp", "structured")
#: With ``x2=None`` the kernel is cut into about this many row blocks (of at least
#: ``SYMMETRIC_MIN_BLOCK`` examples) so that the blocks below the diagonal are skipped.
SYMMETRIC_BLOCKS = 4
SYMMETRIC_MIN_BLOCK = 32


@dataclass(frozen=True)
class Plan:
    """How :func:`empirical_ntk` computes a kernel (see :func:`plan_empirical_ntk`).

    Attributes:
        method: ``"jacobian"``, ``"ntk_vp"`` or ``"structured"``.
        block: examples per block.
        costs: estimated flop-equivalents of every applicable method (``auto``'s choice is
            the smallest); empty when a method was requested explicitly.
        structured_reason: why the structured path does not apply (``None`` if it does).
    """

    method: str
    block: int
    costs: dict
    structured_reason: str | None


def empirical_ntk(
    model: nn.Module,
    x1: Any,
    x2: Any = None,
    *,
    output: str = "trace",
    method: str = "auto",
    params: ParamSelector = None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """Empirical NTK ``k(x, x')_{o o'} = Σ_p ∂f_o(x)/∂w_p · ∂f_o'(x')/∂w_p`` at the current weights.

    Args:
        model: any ``nn.Module`` that ``torch.func.functional_call`` can run on a batch
            ``(n, *in_shape)``, returning one tensor ``(n, *out_shape)``. The ``o =
            prod(out_shape)`` outputs are flattened; a scalar-output model returning ``(n,)``
            has ``o = 1``. Buffers pass through unchanged. The forward must be pure and treat
            examples independently: BatchNorm in training mode, dropout in training mode, or
            a forward that changes a buffer raise ModelError (call ``model.eval()``).
        x1: ``(n1, *in_shape)`` inputs (tensor or NumPy array), cast to the model's dtype.
        x2: ``(n2, *in_shape)`` or ``None`` (``x2 = x1``: only the blocks on and above the
            diagonal are computed; the result is exactly symmetric).
        output: ``"trace"`` → ``(n1, n2)``, summed over the outputs ``o = o'``;
            ``"full"`` → ``(n1, n2, o, o)``; ``"diagonal"`` → ``(n1, n2, o)`` (``o = o'``).
        method: ``"jacobian"`` (per-example Jacobians, contracted: ``N·O·[FP] + N²·O²·P``),
            ``"ntk_vp"`` (NTK-vector products: ``N²·O·[FP]``), ``"structured"`` (input and
            cotangent Grams of ``nn.Linear``/``nn.Conv{1,2,3}d``/ntkit Dense and Conv layers,
            and the per-channel affine parameters of BatchNorm (eval)/LayerNorm/GroupNorm,
            never forming whole-model per-example Jacobians; verified against autograd on two
            examples first; ModelError if a selected parameter sits elsewhere), or ``"auto"``
            (the cheapest by :mod:`~ntkit.empirical.cost_model`; Novak et al. 2022). All
            methods give the same kernel up to rounding.
        params: the parameters that count (the rest is held fixed): ``None`` (all with
            ``requires_grad``), a name or module prefix (``"0"`` → ``"0.weight"``,
            ``"0.bias"``), a list of names/prefixes/parameter tensors, or a predicate
            ``(name, parameter) -> bool`` — e.g. the first layer only (Arora et al. 2019).
        batch_size: examples per block (default: the largest within ``memory_budget``).
        memory_budget: bytes for the temporaries of one block pair (default 1 GiB); the
            output itself is not counted.

    Returns:
        The kernel in the model's parameter dtype, on the model's device.

    Raises:
        ModelError, ShapeError, ParameterError, MemoryBudgetError (messages say what to do).
    """
    with torch.enable_grad():  # the structured path runs autograd; results carry no graph
        _, x1, x2, plan, runner = _plan(model, x1, x2, output, method, params, batch_size,
                                        memory_budget)
        budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
        n_examples = x1.shape[0] + (0 if x2 is None else x2.shape[0])
        return tile(runner, x1, x2, output, plan.block, caches(runner, n_examples, budget))


def plan_empirical_ntk(model: nn.Module, x1: Any, x2: Any = None, *, output: str = "trace",
                       method: str = "auto", params: ParamSelector = None,
                       batch_size: int | None = None, memory_budget: int | None = None) -> Plan:
    """What :func:`empirical_ntk` would do with these arguments (which method ``auto``
    picks, the block size, the estimated costs), without computing the kernel."""
    with torch.enable_grad():
        return _plan(model, x1, x2, output, method, params, batch_size, memory_budget)[3]


def _plan(model, x1, x2, output, method, params, batch_size, memory_budget):
    check_choice(output, "output", OUTPUTS)
    check_choice(method, "method", METHODS)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    if ref is None:
        raise ModelError(
            f"the model ({type(model).__name__}) has no floating-point parameters, so its NTK "
            "is zero; pass a model with weights"
        )
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else check_positive_int(
        memory_budget, "memory_budget")
    x1, x2 = as_input_pair(x1, x2, dtype=ref.dtype, device=ref.device, min_ndim=1)
    probe = x1[:2] if x1.shape[0] >= 2 else x1[[0, 0]]
    problem = prepare(model, params, probe)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    symmetric = x2 is None

    structured, reason = None, None
    if method in ("auto", "structured"):
        try:
            structured = StructuredMethod(problem, probe, n1, n2, output)
        except NotApplicableError as err:
            reason = str(err)
            if method == "structured":
                raise ModelError(
                    f"method='structured' does not apply to this model: {reason}. Use "
                    "method='jacobian' or 'ntk_vp' (or 'auto')"
                ) from err
    runners = _runners(problem, probe, method, structured, budget)
    n = max(n1, n2)
    n_examples = n1 + (0 if symmetric else n2)

    def block_of(runner) -> int:
        block = block_size(runner, n, output, budget, batch_size)
        if (symmetric and batch_size is None and not runner.symmetric_pairs
                and caches(runner, n_examples, budget)):
            # Several blocks skip the products below the diagonal; features are reused.
            block = min(block, max(SYMMETRIC_MIN_BLOCK, math.ceil(n / SYMMETRIC_BLOCKS)))
            block = math.ceil(n / math.ceil(n / block))
        return block

    if method != "auto":
        runner = runners[method]
        return problem, x1, x2, Plan(method, block_of(runner), {}, reason), runner
    fp = cost_model.forward_flops(problem)
    costs, blocks, failure = {}, {}, None
    for name, runner in runners.items():
        try:
            blocks[name] = block_of(runner)
        except MemoryBudgetError as err:
            failure = err
            continue
        cached = caches(runner, n_examples, budget)
        costs[name] = cost_model.COSTS[name](runner if name == "structured" else problem, fp, n1,
                                             n2, symmetric, output, blocks[name], cached)
    if not costs:
        raise failure
    best = min(costs, key=costs.get)
    return problem, x1, x2, Plan(best, blocks[best], costs, reason), runners[best]


def _runners(problem: Problem, probe: torch.Tensor, method: str, structured, budget: int) -> dict:
    runners: dict = {}
    if method in ("auto", "jacobian"):
        runners["jacobian"] = JacobianMethod(problem, probe)
    if method in ("auto", "ntk_vp"):
        runners["ntk_vp"] = NtkVpMethod(problem, budget)
    if structured is not None:
        runners["structured"] = structured
    return runners
