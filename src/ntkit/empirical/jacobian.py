"""Jacobian contraction: per-example Jacobians ``J (b, o, P)``, then ``J1 J2ᵀ``.

Cost ``N·O·[FP] + N²·O²·P`` (``N²·O·P`` for the trace), memory ``b·O·P`` per block of ``b``
examples (Novak et al. 2022, "Fast finite width neural tangent kernel", implementation 1).
The Jacobians come from ``torch.func.vmap(jacrev)`` over single examples, so no assumption is
made about how the model treats a batch. Nested ``vmap`` relies on every op's batching rule
being right at two levels, which is not always so (torch 2.13: ``prelu``'s backward gives
wrong Jacobians or shape errors under ``vmap(jacrev)``). The method therefore checks it
once on the probe examples against a single-level ``vmap`` of one VJP per example (reused for
all outputs) and uses that slower, safe form when they disagree; a forward that cannot run
under ``vmap`` at all (in-place writes into tensors it allocates, ops without batching
rules) gets a plain loop of ``torch.autograd.grad`` per example and output.

**Parameter blocks.** When the Jacobians of one example for all parameters,
``o × P`` entries, do not fit in the memory budget, the parameters are cut into groups
(whole tensors, in model order) that do: each block pair then computes and contracts the
Jacobians group by group (``J1 J2ᵀ = Σ_g J1_g J2_gᵀ``), never holding ``n × o × P``.

:class:`Accumulator` holds one block of the kernel in a layout where every contraction is a
single ``addmm``/``baddbmm``; :mod:`ntkit.empirical.structured` uses it too.
"""

from __future__ import annotations

import torch
from torch.func import jacrev, vjp, vmap

from .._fast_matmul import matmul
from ..errors import MemoryBudgetError
from ..hardware import MMAP_THRESHOLD_BYTES
from ._blocks import describe
from ._memo import recall, remember
from ._params import Problem
from .inputs import Examples

#: Bytes of one per-step parameter gradient of a ``vmap`` call (:meth:`JacobianMethod.vmap_examples`):
#: half of the mmap threshold ntkit sets (:func:`ntkit.hardware.keep_freed_memory`), above which
#: every temporary is fresh pages.
VMAP_STEP_BYTES = MMAP_THRESHOLD_BYTES // 2


class Accumulator:
    """One kernel block being summed, for ``output`` in ``trace``/``full``/``diagonal``.

    Internal layouts: trace ``(b1, b2)``, full ``(b1, o, b2, o)``, diagonal ``(o, b1, b2)``;
    :meth:`result` returns ``(b1, b2)``, ``(b1, b2, o, o)`` or ``(b1, b2, o)``.
    """

    def __init__(self, output: str, b1: int, b2: int, n_out: int, like: torch.Tensor) -> None:
        self.output, self.b1, self.b2, self.n_out = output, b1, b2, n_out
        shape = {"trace": (b1, b2), "full": (b1, n_out, b2, n_out), "diagonal": (n_out, b1, b2)}
        self.data = like.new_zeros(shape[output])

    def add_jacobians(self, j1: torch.Tensor, j2: torch.Tensor) -> None:
        """Add ``J1 J2ᵀ`` for per-example Jacobians ``j1 (b1, o, F)`` and ``j2 (b2, o, F)``."""
        b1, b2, o = self.b1, self.b2, self.n_out
        if self.output == "trace":
            self.data.add_(matmul(j1.reshape(b1, -1), j2.reshape(b2, -1).T))
        elif self.output == "full":
            self.data.add_(matmul(j1.reshape(b1 * o, -1), j2.reshape(b2 * o, -1).T).view(b1, o, b2, o))
        else:
            self.data.add_(torch.bmm(j1.transpose(0, 1), j2.permute(1, 2, 0)))

    def part(self, r0: int, r1: int, c0: int, c1: int) -> Accumulator:
        """The accumulator of the sub-block ``[r0:r1, c0:c1]`` (a view: adding to it adds here)."""
        view = object.__new__(Accumulator)
        view.output, view.n_out, view.b1, view.b2 = self.output, self.n_out, r1 - r0, c1 - c0
        if self.output == "diagonal":
            view.data = self.data[:, r0:r1, c0:c1]
        else:
            view.data = self.data[r0:r1, :, c0:c1] if self.output == "full" else self.data[r0:r1, c0:c1]
        return view

    def mirror(self, r0: int, r1: int, c0: int, c1: int) -> None:
        """Write the swapped pairs of sub-block ``[r0:r1, c0:c1]`` into ``[c0:c1, r0:r1]``."""
        if self.output == "trace":
            self.data[c0:c1, r0:r1] = self.data[r0:r1, c0:c1].T
        elif self.output == "full":
            self.data[c0:c1, :, r0:r1] = self.data[r0:r1, :, c0:c1].permute(2, 3, 0, 1)
        else:
            self.data[:, c0:c1, r0:r1] = self.data[:, r0:r1, c0:c1].transpose(1, 2)

    def result(self) -> torch.Tensor:
        if self.output == "trace":
            return self.data
        if self.output == "full":
            return self.data.permute(0, 2, 1, 3)
        return self.data.permute(1, 2, 0)


def out_entries(output: str, n_out: int) -> int:
    """Kernel entries per example pair: 1, ``o²`` or ``o``."""
    return {"trace": 1, "full": n_out * n_out, "diagonal": n_out}[output]


class JacobianMethod:
    """``method="jacobian"``: features are the per-example Jacobians of a block (or, with
    several parameter groups, the block's inputs: Jacobians are then formed per group)."""

    name = "jacobian"
    symmetric_pairs = False  # symmetric kernels: the caller skips blocks below the diagonal

    def __init__(self, problem: Problem, probe: Examples, budget: int | None = None) -> None:
        self.problem = problem
        self.probe = probe
        self.groups = [list(problem.selected)]
        if budget is not None:
            self.groups = self._param_groups(int(budget))
        self.modes: dict[int, str] = {}  # group → "nested" | "single" | "loop", on first use

    # ------------------------------------------------------------ parameter groups
    def _one_example_bytes(self, numel: int) -> int:
        p = self.problem
        return p.n_out * (2 * numel + 2 * p.act_numel) * p.itemsize

    def _param_groups(self, budget: int) -> list[list[str]]:
        """The selected parameters cut into groups whose Jacobians for one example pair fit."""
        p = self.problem
        fixed = self.pair_bytes(1, 1, "full")
        if 2 * self._one_example_bytes(p.n_params) + fixed <= budget:
            return [list(p.selected)]
        groups: list[list[str]] = []
        size = 0
        for name, value in p.selected.items():
            need = 2 * self._one_example_bytes(value.numel()) + fixed
            if need > budget:
                raise MemoryBudgetError(
                    f"method='jacobian' needs {describe(need)} for the smallest block (one example "
                    f"pair, the {p.n_out} outputs' gradients for parameter {name!r} of "
                    f"{value.numel()} entries), but memory_budget is {describe(budget)}; raise "
                    f"memory_budget to at least {need} bytes, or use method='ntk_vp' (memory O(P))"
                )
            if groups and 2 * self._one_example_bytes(size + value.numel()) + fixed <= budget:
                groups[-1].append(name)
                size += value.numel()
            else:
                groups.append([name])
                size = value.numel()
        return groups

    @property
    def group_params(self) -> int:
        """Entries of the largest parameter group."""
        return max(sum(self.problem.selected[k].numel() for k in g) for g in self.groups)

    # ------------------------------------------------------------ Jacobians
    def _mode(self, g: int) -> str:
        """The form for group ``g``: decided on the probe once per model structure (memo)."""
        if g not in self.modes:
            what = "jacobian-mode:" + ",".join(self.groups[g])
            mode = recall(self.problem.model, self.problem.key, what)
            if mode is None:
                mode = self._check_modes(self.groups[g])
                remember(self.problem.model, self.problem.key, what, mode)
            self.modes[g] = mode
        return self.modes[g]

    def _check_modes(self, names: list[str]) -> str:
        """The fastest form that runs and agrees with a safer one on the probe examples."""
        try:
            safe, mode = self._single_level(self.probe, names), "single"
        except RuntimeError:
            safe, mode = self._loop(self.probe, names), "loop"
        try:
            fast = self._nested(self.probe, names)
        except (RuntimeError, NotImplementedError):
            return mode
        for a, b in zip(fast, safe):
            scale = float(b.abs().max()) + torch.finfo(b.dtype).tiny
            if float((a - b).abs().max()) > 1e3 * torch.finfo(b.dtype).eps * scale:
                return mode
        return "nested"

    def _function(self, names: list[str]):
        p = self.problem
        rest = {k: v for k, v in p.selected.items() if k not in names}

        def single(w: dict, leaves: tuple) -> torch.Tensor:
            return p.f({**rest, **w}, self.probe.with_tensors(leaves, add_batch_axis=True))[0]

        return single

    def _nested(self, x: Examples, names: list[str]) -> list[torch.Tensor]:
        w = {k: self.problem.selected[k] for k in names}
        jac = vmap(jacrev(self._function(names)), in_dims=(None, 0))(w, x.tensors)
        return [jac[k].reshape(len(x), self.problem.n_out, -1) for k in names]

    def _single_level(self, x: Examples, names: list[str]) -> list[torch.Tensor]:
        values = tuple(self.problem.selected[k] for k in names)
        o = self.problem.n_out
        single = self._function(names)

        def per_example(leaves: tuple) -> tuple[torch.Tensor, ...]:
            _, pullback = vjp(lambda *w: single(dict(zip(names, w)), leaves), *values)
            basis = torch.eye(o, dtype=values[0].dtype, device=values[0].device)
            rows = [pullback(basis[k]) for k in range(o)]
            return tuple(torch.stack([r[i].reshape(-1) for r in rows]) for i in range(len(values)))

        return list(vmap(per_example)(x.tensors))

    def _loop(self, x: Examples, names: list[str]) -> list[torch.Tensor]:
        """One ``torch.autograd.grad`` per example and output (no ``torch.func``)."""
        p = self.problem
        rows: list[list[torch.Tensor]] = [[] for _ in names]
        with torch.enable_grad():
            w = {k: p.selected[k].detach().requires_grad_() for k in names}
            for i in range(len(x)):
                out = p.f({**p.selected, **w}, x[i : i + 1])[0]
                per_output: list[list[torch.Tensor]] = [[] for _ in names]
                for k in range(p.n_out):
                    grads = torch.autograd.grad(out[k], list(w.values()), retain_graph=k + 1 < p.n_out,
                                                allow_unused=True)
                    for j, (g, v) in enumerate(zip(grads, w.values())):
                        per_output[j].append((torch.zeros_like(v) if g is None else g).reshape(-1))
                for j in range(len(names)):
                    rows[j].append(torch.stack(per_output[j]))
        return [torch.stack(r).detach() for r in rows]

    def jacobians(self, x: Examples, g: int = 0) -> list[torch.Tensor]:
        """Per-example Jacobians for parameter group ``g``, one ``(b, o, numel)`` per tensor.

        ``vmap`` runs over at most :meth:`vmap_examples` examples at a time (results joined).
        """
        names = self.groups[g]
        mode = self._mode(g)
        if mode == "loop":
            return self._loop(x, names)
        run = self._nested if mode == "nested" else self._single_level
        step = self.vmap_examples(names)
        if len(x) <= step:
            return run(x, names)
        parts = [run(x[i : i + step], names) for i in range(0, len(x), step)]
        return [torch.cat(p) for p in zip(*parts)]

    def vmap_examples(self, names: list[str]) -> int:
        """Examples per ``vmap`` call: the backward's per-step gradient of the largest
        parameter, ``examples × o × numel`` entries, stays under :data:`VMAP_STEP_BYTES`, so
        that glibc serves it from the heap it reuses instead of fresh ``mmap`` pages
        (an LSTM's ``weight_hh`` gets one such temporary per time step: 3.7× faster with one
        example per call than with 16, benchmarks/RESULTS.md)."""
        p = self.problem
        largest = max(p.selected[k].numel() for k in names)
        return max(1, VMAP_STEP_BYTES // max(p.n_out * largest * p.itemsize, 1))

    # ------------------------------------------------------------ block protocol
    def features(self, x: Examples):
        """All Jacobians of the block (one group), or the block itself (several groups)."""
        return self.jacobians(x) if len(self.groups) == 1 else x

    def pair(self, f1, f2, output: str) -> torch.Tensor:
        o = self.problem.n_out
        if len(self.groups) == 1:
            acc = Accumulator(output, f1[0].shape[0], f2[0].shape[0], o, f1[0])
            for j1, j2 in zip(f1, f2):
                acc.add_jacobians(j1, j2)
            return acc.result()
        acc = None
        for g in range(len(self.groups)):
            j1 = self.jacobians(f1, g)
            j2 = j1 if f2 is f1 else self.jacobians(f2, g)
            if acc is None:
                acc = Accumulator(output, len(f1), len(f2), o, j1[0])
            for a, b in zip(j1, j2):
                acc.add_jacobians(a, b)
            del j1, j2
        return acc.result()

    def self_diagonal(self, f) -> torch.Tensor:
        """``(b,)``: ``Σ_o |∂f_o(x_i)/∂w|²`` for each example of a features block."""
        if len(self.groups) == 1:
            return sum(j.square().sum((1, 2)) for j in f)
        return sum(j.square().sum((1, 2)) for g in range(len(self.groups)) for j in self.jacobians(f, g))

    def feature_bytes(self, b: int) -> int:
        """Peak bytes of :meth:`features` for ``b`` examples (Jacobians and backward scratch)."""
        if len(self.groups) > 1:
            return 0
        return b * self._one_example_bytes(self.problem.n_params)

    def pair_bytes(self, b1: int, b2: int, output: str) -> int:
        p = self.problem
        out = 2 * b1 * b2 * out_entries(output, p.n_out) * p.itemsize
        if len(self.groups) > 1:  # the Jacobians of one group for both blocks
            out += (b1 + b2) * self._one_example_bytes(self.group_params)
        return out
