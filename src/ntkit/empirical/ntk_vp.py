"""NTK-vector products: columns ``J1 (J2ᵀ e)`` without ever holding ``J1``.

For each column example ``x2_j`` and output ``o'``, a VJP of that single example gives the
parameter-space vector ``v = J2[j, o']ᵀ`` and one JVP (forward mode) of the row block along
``v`` gives the column ``K[:, j, :, o']``. Cost ``N²·O·[FP]``, memory ``O(P)`` per column;
columns are ``vmap``-ed in chunks that fit the memory budget (Novak et al. 2022,
"Fast finite width neural tangent kernel", implementation 2).
"""

from __future__ import annotations

import torch
from torch.func import jvp, vjp, vmap

from ._params import Problem
from .inputs import Examples
from .jacobian import out_entries


class NtkVpMethod:
    """``method="ntk_vp"``: no per-block features; every block pair does the products."""

    name = "ntk_vp"
    symmetric_pairs = False  # symmetric kernels: the caller skips blocks below the diagonal

    def __init__(self, problem: Problem, budget: int) -> None:
        self.problem = problem
        self.budget = budget

    def features(self, x: Examples) -> Examples:
        return x

    def column_bytes(self, b1: int) -> int:
        """Bytes per vmapped column: the parameter vector, its tangents, the JVP activations."""
        p = self.problem
        return (3 * p.n_params + 3 * b1 * p.act_numel + 4 * b1 * p.n_out) * p.itemsize

    def chunk(self, b1: int, b2: int, output: str) -> int:
        """Columns per vmap chunk so that a block pair fits the budget."""
        left = self.budget - self.pair_bytes(b1, b2, output, columns=0)
        return int(max(1, min(b2 * self.problem.n_out, left // self.column_bytes(b1))))

    def pair(self, x1: Examples, x2: Examples, output: str) -> torch.Tensor:
        p = self.problem
        names = list(p.selected)
        values = tuple(p.selected.values())
        o, b1, b2 = p.n_out, len(x1), len(x2)

        def rows(*w: torch.Tensor) -> torch.Tensor:
            return p.f(dict(zip(names, w)), x1)

        def column(leaves: tuple, e: torch.Tensor) -> torch.Tensor:
            def single(*w: torch.Tensor) -> torch.Tensor:
                return p.f(dict(zip(names, w)), x2.with_tensors(leaves, add_batch_axis=True))[0]

            _, pullback = vjp(single, *values)
            return jvp(rows, values, pullback(e))[1]  # (b1, o)

        xs = x2.repeat_interleave(o)
        basis = torch.eye(o, dtype=p.dtype, device=p.device).repeat(b2, 1)
        cols = vmap(column, chunk_size=self.chunk(b1, b2, output))(xs.tensors, basis)  # (b2·o, b1, o)
        block = cols.reshape(b2, o, b1, o).permute(2, 0, 3, 1)  # (b1, b2, o, o')
        if output == "full":
            return block.contiguous()
        diagonal = block.diagonal(dim1=2, dim2=3)
        return diagonal.sum(-1) if output == "trace" else diagonal.contiguous()

    def self_diagonal(self, x: Examples) -> torch.Tensor:
        """``(b,)``: ``Σ_o |∂f_o(x_i)/∂w|²``, one VJP per example and output (no JVP needed)."""
        p = self.problem
        names = list(p.selected)
        values = tuple(p.selected.values())
        o = p.n_out

        def norm(leaves: tuple) -> torch.Tensor:
            def single(*w: torch.Tensor) -> torch.Tensor:
                return p.f(dict(zip(names, w)), x.with_tensors(leaves, add_batch_axis=True))[0]

            _, pullback = vjp(single, *values)
            basis = torch.eye(o, dtype=p.dtype, device=p.device)
            return sum(sum(g.square().sum() for g in pullback(basis[k])) for k in range(o))

        chunk = int(max(1, self.budget // max(1, self.column_bytes(1))))
        return vmap(norm, chunk_size=chunk)(x.tensors)

    def feature_bytes(self, b: int) -> int:
        return 0

    def pair_bytes(self, b1: int, b2: int, output: str, columns: int = 1) -> int:
        p = self.problem
        out = (2 * b1 * b2 * p.n_out * p.n_out + b1 * b2 * out_entries(output, p.n_out)) * p.itemsize
        return out + columns * self.column_bytes(b1)
