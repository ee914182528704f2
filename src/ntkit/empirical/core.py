"""``empirical_ntk``: the finite-width NTK ``Σ_p ∂f(x)/∂w_p ∂f(x')/∂w_p`` of any module."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._validation import check_choice, check_finite_result
from ..budget import check_output, parse_budget
from ..errors import MemoryBudgetError, ModelError, NtkitError, ShapeError
from . import cost_model
from ._blocks import block_size, caches, tile
from ._memo import recall, remember
from ._params import ParamSelector, Problem, prepare
from .inputs import Examples, OutputFn, OutputSelector, as_example_pair
from .jacobian import JacobianMethod
from .ntk_vp import NtkVpMethod
from .structured import NotApplicableError, StructuredMethod
from .traceable import traceable

OUTPUTS = ("trace", "full", "diagonal", "diagonal_batch")
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
        costs: estimated flop-equivalents of every applicable method (``auto`` tries them
            cheapest first); empty when a method was requested explicitly.
        structured_reason: why the structured path does not apply (``None`` if it does).
        failures: method → the error it raised when ``auto`` tried it on two examples
            (such methods are skipped; empty when the cheapest one ran).
        param_blocks: parameter groups the Jacobian method forms one after another (1
            unless the Jacobians of one example for all parameters exceed the budget).
        output_groups: the structured method computes ``trace``/``diagonal`` kernels for
            this many groups of outputs one after another (summed or stacked): fewer
            outputs per pass keep the features of more examples in memory.
    """

    method: str
    block: int
    costs: dict
    structured_reason: str | None
    failures: dict = field(default_factory=dict)
    param_blocks: int = 1
    output_groups: int = 1


def empirical_ntk(
    model: nn.Module,
    x1: Any,
    x2: Any = None,
    *,
    output: str = "trace",
    method: str = "auto",
    params: ParamSelector = None,
    output_fn: OutputFn = None,
    model_kwargs: dict | None = None,
    batch_size: int | None = None,
    memory_budget: Any = None,
) -> torch.Tensor:
    """Empirical NTK ``k(x, x')_{o o'} = Σ_p ∂f_o(x)/∂w_p · ∂f_o'(x')/∂w_p`` at the current weights.

    Args:
        model: any ``nn.Module`` whose forward treats examples independently: standard
            layers including ``nn.MultiheadAttention``, ``nn.TransformerEncoder(Layer)``,
            ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (run by :mod:`~ntkit.empirical.traceable`),
            ``nn.Embedding`` (integer inputs), normalization layers, tied weights (counted
            once). The ``o = prod(out_shape)`` outputs are flattened; a scalar-output model
            returning ``(n,)`` has ``o = 1``. Buffers pass through unchanged. The forward must
            be pure: BatchNorm in training mode, dropout in training mode, a forward that
            changes a buffer or runs under ``torch.no_grad()`` raise ModelError naming the
            fix (usually ``model.eval()``).
        x1: the inputs, batched along dim 0: a tensor/array ``(n1, ...)`` (``model(x)``), a
            tuple/list of them (``model(*x)``, e.g. ``(input_ids, attention_mask)``) or a dict
            (``model(**x)``); floating entries are cast to the model's dtype, integer and
            boolean ones (token ids, masks) kept (:mod:`~ntkit.empirical.inputs`).
        x2: the same layout with ``n2`` examples, or ``None`` (``x2 = x1``: only the blocks
            on and above the diagonal are computed; the result is exactly symmetric).
        output: ``"trace"`` → ``(n1, n2)``, summed over the outputs ``o = o'``;
            ``"full"`` → ``(n1, n2, o, o)``; ``"diagonal"`` → ``(n1, n2, o)`` (``o = o'``);
            ``"diagonal_batch"`` → ``(n1,)``, the trace of ``k(x_i, x_i)`` for every example
            (``x2`` must be ``None``; no pair of different examples is computed).
        method: ``"jacobian"`` (per-example Jacobians, contracted: ``N·O·[FP] + N²·O²·P``),
            ``"ntk_vp"`` (NTK-vector products: ``N²·O·[FP]``), ``"structured"`` (input and
            cotangent Grams of ``nn.Linear``/``nn.Conv{1,2,3}d``/ntkit Dense and Conv layers,
            ``nn.Embedding``, self-attention's projections, and the per-channel affine
            parameters of BatchNorm (eval)/LayerNorm/GroupNorm, never forming whole-model
            per-example Jacobians; other parameters per example; verified against autograd on
            two examples first; ModelError if no selected parameter sits in such a layer or
            the check fails), or ``"auto"``:
            the methods by increasing estimated cost (:mod:`~ntkit.empirical.cost_model`;
            Novak et al. 2022), the first that runs on two examples of ``x1``
            (:func:`plan_empirical_ntk` reports the choice and any failure). All methods give
            the same kernel up to rounding.
        params: the parameters that count (the rest is held fixed): ``None`` (all with
            ``requires_grad``; parameters with ``requires_grad=False`` are excluded), a name or
            module prefix (``"0"`` → ``"0.weight"``, ``"0.bias"``), a list of names/prefixes/
            parameter tensors, or a predicate ``(name, parameter) -> bool``.
        output_fn: which part of the model's output counts: ``None`` (the output tensor, or
            the only tensor in a tuple/dict/dataclass; ModelError listing the fields
            otherwise), a key or attribute name (``"logits"``), an index, a callable
            ``raw_output -> (n, ...)`` tensor, or :func:`ntkit.empirical.all_outputs`.
        model_kwargs: keyword arguments passed unchanged (not batched) to every call.
        batch_size: examples per block (default: the largest within ``memory_budget``).
        memory_budget: bytes for the temporaries of one block pair (default 1 GiB); the
            output itself is not counted. Blocks of examples, and for the Jacobian method
            blocks of parameters, keep the work under it; MemoryBudgetError (naming the
            budget and the size the smallest block needs) when even one block cannot fit.

    Returns:
        The kernel in the model's parameter dtype, on the model's device.

    Raises:
        ModelError, ShapeError, ParameterError, DeviceError, NonFiniteError,
        MemoryBudgetError (messages say what to do). NonFiniteError also for NaN/Inf weights
        and for a kernel that overflowed.
    """
    with torch.enable_grad(), traceable(model):  # results carry no graph
        _problem, x1, x2, plan, runner = _plan(model, x1, x2, output, method, params, output_fn,
                                              model_kwargs, batch_size, memory_budget)
        budget = parse_budget(memory_budget)
        try:
            parts = []
            for lo, hi in output_ranges(_problem.n_out, plan.output_groups):
                if plan.output_groups > 1:
                    runner.set_outputs(lo, hi)
                if output == "diagonal_batch":
                    parts.append(diagonal_batch(runner, x1, plan.block))
                else:
                    n_examples = len(x1) + (0 if x2 is None else len(x2))
                    parts.append(tile(runner, x1, x2, output, plan.block,
                                      caches(runner, n_examples, budget)))
            kernel = parts[0] if len(parts) == 1 else (
                torch.cat(parts, dim=-1) if output == "diagonal" else sum(parts[1:], parts[0]))
        except NtkitError:
            raise
        except (RuntimeError, NotImplementedError) as err:
            raise ModelError(
                f"method={plan.method!r} failed on this model: {type(err).__name__}: {err}. Use "
                "method='auto' (it tries the methods on two examples first) or another method"
            ) from err
    check_finite_result(
        kernel, f"the empirical NTK ({plan.method}, {kernel.dtype})",
        "the model's outputs or gradients overflow on these inputs: rescale the inputs, use "
        "smaller initial weights, or a float64 model (model.double())")
    return kernel


def plan_empirical_ntk(model: nn.Module, x1: Any, x2: Any = None, *, output: str = "trace",
                       method: str = "auto", params: ParamSelector = None,
                       output_fn: OutputFn = None, model_kwargs: dict | None = None,
                       batch_size: int | None = None, memory_budget: Any = None) -> Plan:
    """What :func:`empirical_ntk` would do with these arguments (which method ``auto``
    picks after trying the cheapest on two examples, the block sizes, the estimated costs),
    without computing the kernel."""
    with torch.enable_grad(), traceable(model):
        return _plan(model, x1, x2, output, method, params, output_fn, model_kwargs, batch_size,
                     memory_budget)[3]


def output_ranges(n_out: int, groups: int) -> list[tuple[int, int]]:
    """``groups`` consecutive ranges of outputs of (nearly) equal sizes."""
    size = math.ceil(n_out / groups)
    return [(lo, min(n_out, lo + size)) for lo in range(0, n_out, size)]


def _output_groups(runner, n: int, n_examples: int, symmetric: bool, output: str, budget: int,
                   batch_size: int | None) -> int:
    """Output groups for the structured method: the count with the fewest estimated passes.

    A group of ``k`` outputs costs one forward and ``k`` backward passes per example, times
    the number of times each example's features are computed (1 when all fit in half the
    budget or in one block, else about ``(rows + 1) / 2`` for a symmetric kernel, ``rows`` otherwise), plus,
    when some layer's Jacobians are formed from inputs and cotangents at each pair of blocks,
    about one backward's work per output and row block.
    """
    o = runner.problem.n_out
    if output not in ("trace", "diagonal", "diagonal_batch") or o == 1:
        return 1
    best, best_cost = 1, math.inf
    for groups in sorted({math.ceil(o / size) for size in range(1, o + 1)}):
        runner.set_outputs(0, math.ceil(o / groups))
        try:
            block = block_size(runner, n, "trace" if output == "diagonal_batch" else output, budget,
                               batch_size, symmetric)
        except MemoryBudgetError:
            continue
        rows = math.ceil(n / block)
        repeat = 1 if output == "diagonal_batch" or rows == 1 or caches(runner, n_examples, budget) else (
            (rows + 1) / 2 if symmetric else rows)
        formed = any(t.store == "ag" and t.form == "jac" for t in runner.terms)
        cost = (groups + o) * repeat + (o * rows if formed else 0)
        if cost < best_cost:
            best, best_cost = groups, cost
    runner.set_outputs(0, math.ceil(o / best))
    return best


def diagonal_batch(runner, x: Examples, block: int) -> torch.Tensor:
    """``(n,)``: ``k(x_i, x_i)`` traced over outputs, ``block`` examples at a time (no pairs
    of different examples)."""
    parts = []
    for start in range(0, len(x), block):
        f = runner.features(x[start : start + block])
        if hasattr(runner, "self_diagonal"):
            parts.append(runner.self_diagonal(f))
        else:
            parts.append(runner.pair(f, f, "trace").diagonal())
    return torch.cat(parts)


def prepare_problem(model, x1, x2, params, output_fn, model_kwargs):
    """The one validation step shared by the empirical kernels: model, inputs, probe."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    if ref is None:
        raise ModelError(
            f"the model ({type(model).__name__}) has no floating-point parameters, so its NTK "
            "is zero; pass a model with weights"
        )
    selector = OutputSelector(output_fn)
    x1, x2 = as_example_pair(x1, x2, dtype=ref.dtype, device=ref.device, model_kwargs=model_kwargs)
    probe = x1[:2] if len(x1) >= 2 else x1[[0, 0]]
    problem = prepare(model, params, probe, selector)
    return problem, x1, x2, probe


def ref_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (the kernel's dtype)."""
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


def _check_output_size(output: str, n1: int, n2: int, n_out: int, x1: Examples,
                       dtype: torch.dtype) -> None:
    """Refuse, before any block is computed, a kernel that cannot be allocated (issue 12)."""
    entries = {"trace": n1 * n2, "diagonal": n1 * n2 * n_out, "full": n1 * n2 * n_out * n_out,
               "diagonal_batch": n1}[output]
    check_output(
        entries * torch.empty((), dtype=dtype).element_size(),
        f"the empirical NTK (output={output!r}, {n1} × {n2} examples, {n_out} outputs)",
        "output='trace' or 'diagonal' (fewer entries), output='diagonal_batch' (k(x_i, x_i) "
        "only), or the matrix-free route: nk.linalg.KernelOperator(nk.EmpiricalNTKSource(model, "
        "x)) with an iterative solver (nk.linalg.solve(op, y, solver='cg' or 'nystrom'))",
    )


def _plan(model, x1, x2, output, method, params, output_fn, model_kwargs, batch_size, memory_budget,
          check_size: bool = True):
    """``(problem, x1, x2, plan, runner)``: inputs as :class:`Examples`, the chosen method.

    ``check_size=False`` skips the refusal of an output that cannot be allocated (a kernel
    source computes tiles of it, never the whole matrix) and keeps every output in one group.
    """
    check_choice(output, "output", OUTPUTS)
    check_choice(method, "method", METHODS)
    budget = parse_budget(memory_budget)
    if output == "diagonal_batch" and x2 is not None:
        raise ShapeError("output='diagonal_batch' gives k(x_i, x_i) of x1 alone; pass x2=None")
    problem, x1, x2, probe = prepare_problem(model, x1, x2, params, output_fn, model_kwargs)
    n1 = len(x1)
    symmetric = x2 is None
    n2 = n1 if symmetric else len(x2)
    if check_size:
        _check_output_size(output, n1, n2, problem.n_out, x1, ref_dtype(model))
    pair_output = "trace" if output == "diagonal_batch" else output
    if output == "diagonal_batch":  # per-example work only: cost it as n1 pairs
        n2, symmetric = 1, False

    structured, reason = None, None
    if method in ("auto", "structured"):
        try:
            structured = StructuredMethod(problem, probe, n1, n2, pair_output, budget)
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
        block = block_size(runner, n, pair_output, budget, batch_size, symmetric)
        if (symmetric and batch_size is None and not runner.symmetric_pairs
                and caches(runner, n_examples, budget)):
            # Several blocks skip the products below the diagonal; features are reused.
            block = min(block, max(SYMMETRIC_MIN_BLOCK, math.ceil(n / SYMMETRIC_BLOCKS)))
            block = math.ceil(n / math.ceil(n / block))
        return block

    def plan_for(name, costs, failures):
        runner = runners[name]
        groups = len(getattr(runner, "groups", [None]))
        outputs = split.get(name, 1)
        if name == "structured" and outputs == 1:
            runner.set_outputs(0, problem.n_out)
        return problem, x1, x2, Plan(name, blocks[name], costs, reason, failures, groups,
                                     outputs), runner

    blocks: dict = {}
    split: dict = {}  # method -> output groups (structured, whole kernels only)
    if structured is not None and check_size:
        split["structured"] = _output_groups(structured, n, n_examples, symmetric, output, budget,
                                             batch_size)
    if method != "auto":
        blocks[method] = block_of(runners[method])
        return plan_for(method, {}, {})
    fp = cost_model.forward_flops(problem)
    costs, failure = {}, None
    for name, runner in runners.items():
        try:
            blocks[name] = block_of(runner)
        except MemoryBudgetError as err:
            failure = err
            continue
        cached = caches(runner, n_examples, budget)
        costs[name] = cost_model.COSTS[name](runner if name == "structured" else problem, fp, n1,
                                             n2, symmetric, pair_output, blocks[name], cached,
                                             **({"groups": len(runner.groups)} if name == "jacobian" else {}))
    if not costs:
        raise failure
    failures: dict[str, str] = {}
    for name in sorted(costs, key=costs.get):
        why = _trial(problem, runners[name], probe, pair_output)
        if why is None:
            return plan_for(name, costs, failures)
        failures[name] = why
    raise ModelError(
        "no method could compute this model's NTK on two examples: "
        + "; ".join(f"{k}: {v}" for k, v in failures.items())
    )


def _trial(problem: Problem, runner, probe: Examples, output: str) -> str | None:
    """Run ``runner`` on the probe examples (remembered per model structure); the error
    message if it fails, else ``None``."""
    key = (problem.key, output)
    known = recall(problem.model, key, "trial:" + runner.name)
    if known is not None:
        return known or None
    try:
        f = runner.features(probe)
        runner.pair(f, f, output)
    except NtkitError:
        raise
    except Exception as err:  # any failure of a transform on this model
        why = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        remember(problem.model, key, "trial:" + runner.name, why)
        return why
    remember(problem.model, key, "trial:" + runner.name, "")
    return None


def _runners(problem: Problem, probe: Examples, method: str, structured, budget: int) -> dict:
    runners: dict = {}
    if method in ("auto", "jacobian"):
        try:
            runners["jacobian"] = JacobianMethod(problem, probe, budget)
        except MemoryBudgetError:
            if method == "jacobian":
                raise
    if method in ("auto", "ntk_vp"):
        runners["ntk_vp"] = NtkVpMethod(problem, budget)
    if structured is not None:
        runners["structured"] = structured
    return runners
