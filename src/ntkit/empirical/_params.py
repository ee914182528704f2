"""The problem an empirical NTK solves: which parameters count, the model checks, the forward.

:func:`prepare` is the one validation step of :func:`ntkit.empirical_ntk`: it selects the
parameters, refuses impure or batch-coupled modules with an error that says what to do, and
probes the output layout. The result, a :class:`Problem`, evaluates the model functionally
(``torch.func.functional_call``) with the selected parameters as explicit arguments and every
other parameter and buffer held fixed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..errors import ModelError, NonFiniteError, NtkitError, ParameterError
from ._flops import counts_from_layers, layer_flops
from ._memo import recall, remember, structure_key
from .hazards import check_forward_grad_mode
from .inputs import Examples, OutputSelector, check_output

#: ``None`` (all trainable), a name or module prefix, a list of names/prefixes/parameters,
#: or a predicate ``(name, parameter) -> bool``.
ParamSelector = None | str | Iterable[Any] | Callable[[str, torch.Tensor], bool]

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.FeatureAlphaDropout)


@dataclass
class Problem:
    """A model with its parameters split into the selected ones and the fixed rest.

    Attributes:
        model: the user's module (never modified).
        selected: name → detached tensor of every parameter the NTK differentiates.
        fixed: name → detached tensor of the other parameters and of all buffers.
        out_shape: one example's output shape (``()`` for ``(n,)`` outputs).
        n_out: ``o = prod(out_shape)``, the number of outputs per example.
        act_numel: numbers per example in all module outputs of one forward (a memory proxy).
    """

    model: nn.Module
    selected: dict[str, torch.Tensor]
    fixed: dict[str, torch.Tensor]
    out_shape: tuple[int, ...] = ()
    n_out: int = 1
    act_numel: int = 0
    forward_flops: float = 0.0
    #: what the model checks depend on (see :mod:`._memo`)
    key: tuple = ()
    #: reads the tensor that counts out of the model's raw output
    select: OutputSelector = field(default_factory=OutputSelector)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.selected.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.selected.values())).device

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.selected.values())

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def call(self, selected: dict[str, torch.Tensor], x: Examples, fixed=None) -> Any:
        """The raw model output for a batch ``x`` with the given selected parameters."""
        state = {**(self.fixed if fixed is None else fixed), **selected}
        args, kwargs = ((x,), {}) if isinstance(x, torch.Tensor) else x.arguments()
        return functional_call(self.model, state, args, kwargs)

    def output(self, selected: dict[str, torch.Tensor], x: Examples, fixed=None) -> torch.Tensor:
        """The selected output tensor ``(b, *out_shape)`` of a batch."""
        return self.select(self.call(selected, x, fixed))

    def f(self, selected: dict[str, torch.Tensor], x: Examples) -> torch.Tensor:
        """Outputs of a batch ``x`` of ``b`` examples as ``(b, o)``."""
        return self.output(selected, x).reshape(len(x), self.n_out)


def select_params(model: nn.Module, params: ParamSelector) -> tuple[dict, dict]:
    """Split the model's parameters into ``(selected, fixed)`` name → detached tensor dicts.

    ``params`` may be ``None`` (every parameter with ``requires_grad``), a parameter name, a
    module prefix (``"0"`` selects ``"0.weight"`` and ``"0.bias"``), a list of names, prefixes
    or parameter tensors, or a predicate ``(name, parameter) -> bool``.
    """
    named = dict(model.named_parameters())
    if not named:
        raise ModelError(
            f"the model ({type(model).__name__}) has no parameters, so its NTK is zero; pass a "
            "model with weights"
        )
    if params is None:
        chosen = [k for k, p in named.items() if p.requires_grad]
        if not chosen:
            raise ParameterError(
                "params=None selects the trainable parameters, but every parameter has "
                "requires_grad=False; pass params=[names] to choose some explicitly"
            )
    elif callable(params) and not isinstance(params, nn.Parameter):
        chosen = []
        for k, p in named.items():
            try:
                keep = params(k, p)
            except Exception as err:
                raise ParameterError(
                    f"the params predicate failed on ({k!r}, parameter): {err}; it is called as "
                    "predicate(name, parameter) -> bool"
                ) from err
            if keep:
                chosen.append(k)
    else:
        items = [params] if isinstance(params, (str, torch.Tensor)) else list(params)
        chosen = []
        for item in items:
            chosen += _match(item, named)
    chosen_set = set(chosen)
    if not chosen_set:
        raise ParameterError(
            "params selects no parameter; pass names from model.named_parameters() "
            f"(e.g. {_sample(named)}) or a predicate that is true for at least one"
        )
    selected = {k: p.detach() for k, p in named.items() if k in chosen_set}
    fixed = {k: p.detach() for k, p in named.items() if k not in chosen_set}
    return selected, fixed


def _match(item: Any, named: dict[str, nn.Parameter]) -> list[str]:
    if isinstance(item, torch.Tensor):
        hits = [k for k, p in named.items() if p is item]
        if not hits:
            raise ParameterError(
                "a tensor in params is not a parameter of this model; pass the model's own "
                "parameters or their names"
            )
        return hits
    if not isinstance(item, str):
        raise ParameterError(
            f"params entries must be names or parameters, got {type(item).__name__}: {item!r}"
        )
    if item in named:
        return [item]
    hits = [k for k in named if k.startswith(item + ".")]
    if not hits:
        raise ParameterError(
            f"unknown parameter name or module prefix {item!r}; the model has {_sample(named)}"
        )
    return hits


def _sample(named: dict) -> str:
    names = list(named)
    return ", ".join(map(repr, names[:8])) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")


def check_modules(model: nn.Module) -> None:
    """Refuse modules whose forward is impure or random: BatchNorm with running statistics
    or Dropout, in training mode."""
    for name, module in model.named_modules():
        label = name or type(module).__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
            raise ModelError(
                f"module {label!r} is a {type(module).__name__} with track_running_stats=False: "
                "it normalizes each example with statistics of the whole batch in every mode "
                "(model.eval() does not change that), so the NTK is not defined. Build it with "
                "track_running_stats=True and call model.eval(), or use LayerNorm/GroupNorm"
            )
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ModelError(
                f"module {label!r} is a {type(module).__name__} in training mode: its forward "
                "updates running statistics and normalizes each example with statistics of the "
                "whole batch, so the NTK is not defined. Call model.eval() to normalize with the "
                "running statistics"
            )
        if isinstance(module, _DROPOUTS) and module.training and module.p > 0:
            raise ModelError(
                f"module {label!r} is a {type(module).__name__} in training mode, so the forward "
                "is random; call model.eval() before computing the NTK"
            )


def check_finite_weights(model: nn.Module) -> None:
    """NonFiniteError if a floating parameter or buffer of ``model`` holds NaN/Inf: every
    NTK entry (and the linearization) would then be NaN."""
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise NonFiniteError(
                    f"model {kind} {name!r} has {bad} NaN/Inf entries (of {t.numel()}), so the "
                    "NTK would be NaN; re-initialize the model, or, if training produced them, "
                    "lower the learning rate (training diverged)"
                )


def prepare(model: Any, params: ParamSelector, probe: Examples,
            select: OutputSelector | None = None) -> Problem:
    """Select parameters, check the model and probe its output on ``probe`` (2 examples).

    The probe runs once per model structure and input layout (:mod:`._memo`).

    Raises ModelError for a non-module, a module without parameters, an impure forward
    (changes a buffer), a random forward, an output without the batch axis first, and a
    forward whose result for one example depends on the other examples of the batch.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(probe, torch.Tensor):
        probe = Examples("tensor", (), (probe,))
    selected, fixed = select_params(model, params)
    check_modules(model)
    check_finite_weights(model)
    buffers = dict(model.named_buffers())
    problem = Problem(model, selected, {**fixed, **buffers},
                      select=OutputSelector() if select is None else select)
    problem.key = structure_key(model, selected, probe, problem.select.key())
    probed = recall(model, problem.key, "probe")
    if probed is None:
        probed = _probe(problem, buffers, probe)
        remember(model, problem.key, "probe", probed)
    problem.out_shape, problem.act_numel, problem.forward_flops = probed
    problem.n_out = math.prod(problem.out_shape)
    if problem.n_out == 0:
        raise ModelError(f"the model's output per example has shape {problem.out_shape}, i.e. no entries")
    return problem


def _forward(problem: Problem, x: Examples, fixed: dict) -> Any:
    try:
        raw = problem.call(problem.selected, x, fixed)
    except NtkitError:
        raise
    except Exception as err:
        raise ModelError(
            f"calling the model on a batch {x.describe()} failed: {type(err).__name__}: {err}"
        ) from err
    out = problem.select(raw)
    check_output(out, len(x))
    return out.detach()


def _rng_state(device: torch.device) -> torch.Tensor:
    """The state of the random generator a forward on ``device`` draws from."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.random.get_rng_state()


def _probe(problem: Problem, buffers: dict, x: Examples) -> tuple[tuple[int, ...], int, float]:
    """Forward ``x`` and its first example alone (on copies of the buffers); check the results.

    Returns the output shape per example, the activation count per example (all leaf module
    outputs) and the matmul/convolution flops per example: from the layers' output shapes
    when every module is a known layer (:mod:`._flops`), else ``torch.utils.flop_counter``.
    """
    n = len(x)
    copies = {k: b.clone() for k, b in buffers.items()}
    fixed = {**problem.fixed, **copies}
    sizes, flops = [0], [0.0]
    from_layers = counts_from_layers(problem.model)

    def count(module, args, out):
        if isinstance(out, torch.Tensor) and not list(module.children()):
            sizes[0] += out.numel()
            if from_layers:
                flops[0] += layer_flops(module, out)

    if from_layers:
        counter = contextlib.nullcontext()
    else:
        from torch.utils.flop_counter import FlopCounterMode  # imports torch._dynamo when used

        counter = FlopCounterMode(display=False)
    handle = nn.modules.module.register_module_forward_hook(count)
    rng_before = _rng_state(problem.device)
    try:
        with counter, check_forward_grad_mode(problem.model):
            out = _forward(problem, x, fixed)
    finally:
        handle.remove()
    if not torch.equal(rng_before, _rng_state(problem.device)):
        raise ModelError(
            "the forward pass draws random numbers (e.g. F.dropout(..., training=True), "
            "torch.randn or torch.bernoulli in forward), so the model is a random function "
            "and its NTK is not defined; make the forward deterministic (for dropout: "
            "F.dropout(x, p, training=self.training) and model.eval())"
        )
    for k, b in buffers.items():
        if not torch.equal(copies[k], b):
            raise ModelError(
                f"the forward pass changed buffer {k!r}; the NTK needs a pure forward. Call "
                "model.eval() (BatchNorm then uses its running statistics), or remove the update"
            )
    alone = _forward(problem, x[:1], fixed)
    tol = 1e3 * torch.finfo(out.dtype).eps * (1.0 + float(out.abs().max()))
    if alone.shape != out[:1].shape or float((alone - out[:1]).abs().max()) > tol:
        again = _forward(problem, x, fixed)  # tell randomness from coupling
        if not torch.equal(out, again):
            raise ModelError(
                "two forward passes on the same inputs gave different outputs (random layers "
                "such as dropout in training mode?); call model.eval() or remove the randomness"
            )
        raise ModelError(
            "the output for one example depends on the other examples in the batch (BatchNorm "
            "using batch statistics?); the NTK needs a per-example function: call model.eval()"
        )
    total = flops[0] if from_layers else counter.get_total_flops()
    return tuple(out.shape[1:]), max(1, sizes[0] // n), total / n
