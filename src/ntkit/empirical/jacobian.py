"""Jacobian contraction: per-example Jacobians ``J (b, o, P)``, then ``J1 J2ᵀ``.

Cost ``N·O·[FP] + N²·O²·P`` (``N²·O·P`` for the trace), memory ``b·O·P`` per block of ``b``
examples (Novak et al. 2022, "Fast finite width neural tangent kernel", implementation 1).
The Jacobians come from ``torch.func.vmap(jacrev)`` over single examples, so no assumption is
made about how the model treats a batch. Nested ``vmap`` relies on every op's batching rule
being right at two levels, which is not always so (torch 2.13: ``prelu``'s backward gives
wrong Jacobians or shape errors under ``vmap(jacrev)``). The method therefore checks it
once on the probe examples against a single-level ``vmap`` of one VJP per example (reused for
all outputs) and uses that slower, safe form when they disagree.

:class:`Accumulator` holds one block of the kernel in a layout where every contraction is a
single ``addmm``/``baddbmm``; :mod:`ntkit.empirical.structured` uses it too.
"""

from __future__ import annotations

import torch
from torch.func import jacrev, vjp, vmap

from .._fast_matmul import matmul
from ._params import Problem


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
            self.data.view(b1 * o, b2 * o).add_(matmul(j1.reshape(b1 * o, -1), j2.reshape(b2 * o, -1).T))
        else:
            self.data.baddbmm_(j1.transpose(0, 1), j2.permute(1, 2, 0))

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
    """``method="jacobian"``: features are the per-example Jacobians of a block."""

    name = "jacobian"
    symmetric_pairs = False  # symmetric kernels: the caller skips blocks below the diagonal

    def __init__(self, problem: Problem, probe: torch.Tensor) -> None:
        self.problem = problem
        self.probe = probe
        self.nested: bool | None = None  # decided on first use

    def _check_nested(self) -> bool:
        """Whether nested ``vmap(jacrev)`` agrees with the single-level form on the probe."""
        try:
            fast = self._nested(self.probe)
        except RuntimeError:
            return False
        safe = self._single_level(self.probe)
        for a, b in zip(fast, safe):
            scale = float(b.abs().max()) + torch.finfo(b.dtype).tiny
            if float((a - b).abs().max()) > 1e3 * torch.finfo(b.dtype).eps * scale:
                return False
        return True

    def _single(self, p: dict, xi: torch.Tensor) -> torch.Tensor:
        return self.problem.f(p, xi[None])[0]

    def _nested(self, x: torch.Tensor) -> list[torch.Tensor]:
        jac = vmap(jacrev(self._single), in_dims=(None, 0))(self.problem.selected, x)
        return [j.reshape(x.shape[0], self.problem.n_out, -1) for j in jac.values()]

    def _single_level(self, x: torch.Tensor) -> list[torch.Tensor]:
        names = list(self.problem.selected)
        values = tuple(self.problem.selected.values())
        o = self.problem.n_out

        def per_example(xi: torch.Tensor) -> tuple[torch.Tensor, ...]:
            _, pullback = vjp(lambda *w: self._single(dict(zip(names, w)), xi), *values)
            basis = torch.eye(o, dtype=xi.dtype, device=xi.device)
            rows = [pullback(basis[k]) for k in range(o)]
            return tuple(torch.stack([r[i].reshape(-1) for r in rows]) for i in range(len(values)))

        return list(vmap(per_example)(x))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-example Jacobians, one ``(b, o, numel)`` tensor per selected parameter."""
        if self.nested is None:
            self.nested = self._check_nested()
        return self._nested(x) if self.nested else self._single_level(x)

    def pair(self, f1: list[torch.Tensor], f2: list[torch.Tensor], output: str) -> torch.Tensor:
        acc = Accumulator(output, f1[0].shape[0], f2[0].shape[0], self.problem.n_out, f1[0])
        for j1, j2 in zip(f1, f2):
            acc.add_jacobians(j1, j2)
        return acc.result()

    def feature_bytes(self, b: int) -> int:
        """Peak bytes of :meth:`features` for ``b`` examples (Jacobians and backward scratch)."""
        p = self.problem
        return b * p.n_out * (2 * p.n_params + 2 * p.act_numel) * p.itemsize

    def pair_bytes(self, b1: int, b2: int, output: str) -> int:
        p = self.problem
        return 2 * b1 * b2 * out_entries(output, p.n_out) * p.itemsize
