"""``EmpiricalNTKSource``: the empirical NTK of a fixed model as a kernel source.

With it a :class:`~ntkit.linalg.KernelOperator` multiplies by the ``n1 × n2`` empirical NTK
(summed over outputs, ``output="trace"``) of a real network tile by tile, so CG and Nyström
kernel regression run at ``n`` where the matrix itself does not fit::

    src = nk.empirical.EmpiricalNTKSource(model, x)
    op = nk.linalg.KernelOperator(src, memory_budget="512MiB")
    alpha = nk.linalg.solve(op, y, solver="cg", ridge=1e-6)
    f_test = op.with_inputs(x_test, x) @ alpha

A tile ``K[I, J]`` is ``method.pair(features(x_I), features(x_J))`` with the method that
:func:`~ntkit.empirical.empirical_ntk` would choose for the whole kernel (planned once at
construction: :func:`~ntkit.empirical.plan_empirical_ntk`); its temporaries are the two
feature blocks and the pair's products, as the method estimates them
(``feature_bytes``/``pair_bytes``). The model's weights are read when each tile is
computed: do not train the model while the source is in use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..budget import describe, parse_budget
from ..errors import MemoryBudgetError, ModelError, NtkitError
from ..sources import KernelSource, as_index
from ..tiling import square_side
from ._params import ParamSelector
from .core import _plan, diagonal_batch
from .inputs import Examples, OutputFn
from .traceable import traceable

__all__ = ["EmpiricalNTKSource"]

#: What to change when a tile of the empirical NTK is NaN/Inf.
OVERFLOW_HINT = (
    "the model's outputs or gradients are not finite on these inputs (a NaN/Inf weight, or "
    "overflow): check the weights, rescale the inputs, use smaller initial weights, or a "
    "float64 model (model.double())"
)


class EmpiricalNTKSource(KernelSource):
    """The ``(n1, n2)`` empirical NTK ``Σ_o Σ_p ∂f_o(x)/∂w_p · ∂f_o(x')/∂w_p`` of ``model``.

    Args:
        model: a pure ``nn.Module``, as for :func:`~ntkit.empirical.empirical_ntk`.
        x1: the row inputs, batched along dim 0, of any layout :func:`~ntkit.empirical_ntk`
            takes (a tensor ``(n1, ...)``, a tuple/list or dict of them).
        x2: the column inputs in the same layout (``n2`` examples), or ``None`` (``x2 = x1``:
            a symmetric source; an ``x2`` equal to ``x1`` counts as ``None``).
        method, params, output_fn, model_kwargs: as for :func:`~ntkit.empirical_ntk`
            (``method="auto"`` is resolved once, here: :attr:`plan`).
        memory_budget: the budget the method is planned with (any :mod:`ntkit.budget`
            spelling; the Jacobian method splits its parameters into groups that fit it).
            The operator's own ``memory_budget`` sizes the tiles.

    Tiles are in the model's parameter dtype, on its device, computed one at a time
    (``thread_safe = False``: the structured method hooks the model's layers). The output
    size is not checked against the machine: tiles are all that is ever allocated.

    Raises:
        ModelError, ShapeError, ParameterError, DeviceError, NonFiniteError,
        MemoryBudgetError: as :func:`~ntkit.empirical_ntk` (from planning, on two examples).
    """

    thread_safe = False
    overflow_hint = OVERFLOW_HINT

    def __init__(self, model: nn.Module, x1: Any, x2: Any = None, *, method: str = "auto",
                 params: ParamSelector = None, output_fn: OutputFn = None,
                 model_kwargs: dict | None = None, memory_budget: Any = None) -> None:
        self.model = model
        self._settings = dict(params=params, output_fn=output_fn, model_kwargs=model_kwargs,
                              memory_budget=memory_budget)
        with torch.enable_grad(), traceable(model):
            problem, e1, e2, plan, runner = _plan(
                model, x1, x2, "trace", method, params, output_fn, model_kwargs, None, memory_budget,
                check_size=False,
            )
        if e2 is not None and _same_examples(e1, e2):
            e2 = None  # k(x, x): symmetric, as arch.kernel_source does
        self._init(problem, runner, plan, e1, e2)

    def _init(self, problem, runner, plan, x1: Examples, x2: Examples | None) -> None:
        self._problem, self._runner, self.plan = problem, runner, plan
        self.x1 = x1
        self._x2 = x2
        self.symmetric = x2 is None

    # ------------------------------------------------------------------ protocol
    @property
    def method(self) -> str:
        """The method computing the tiles (``"jacobian"``, ``"ntk_vp"`` or ``"structured"``)."""
        return self.plan.method

    @property
    def x2(self) -> Examples:
        """The column inputs (``x1`` itself for a symmetric source)."""
        return self.x1 if self._x2 is None else self._x2

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.x1), len(self.x2))

    @property
    def dtype(self) -> torch.dtype:
        return self._problem.dtype

    @property
    def device(self) -> torch.device:
        return self._problem.device

    @property
    def bytes_per_pair(self) -> int:
        return self.tile_bytes(1, 1)

    def tile_bytes(self, rows: int, cols: int) -> int:
        """Two feature blocks and the pair's temporaries, as the method estimates them."""
        r = self._runner
        return int(r.feature_bytes(rows) + r.feature_bytes(cols) + r.pair_bytes(rows, cols, "trace"))

    def check(self, budget: int) -> None:
        need = self.tile_bytes(1, 1)
        if need > budget:
            raise MemoryBudgetError(
                f"memory_budget is {describe(budget)}, too small for one tile of the empirical NTK "
                f"(method={self.method!r}): a single pair of examples needs {describe(need)}; raise "
                f"memory_budget to at least {need} bytes (or plan the source with a smaller one: "
                "EmpiricalNTKSource(..., memory_budget=...) splits the Jacobian method's parameters "
                "into smaller groups)"
            )

    def side(self, budget: int) -> int:
        """The largest square tile within ``budget`` (larger tiles amortize the features)."""
        self.check(budget)
        lo, hi = 1, max(1, min(max(self.shape), square_side(1, budget, None)))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.tile_bytes(mid, mid) <= budget else (lo, mid - 1)
        return lo

    def largest_side(self, budget: int, limit: int) -> int:
        return min(limit, self.side(budget))

    def block(self, rows: slice, cols: slice) -> torch.Tensor:
        """``K[rows, cols]``; on a symmetric source ``block(s, s)`` is exactly symmetric."""
        with self._running():
            f1 = self._runner.features(self.x1[rows])
            if self.symmetric and rows == cols:
                part = self._runner.pair(f1, f1, "trace")  # f1 is f2: the method may skip half
                return 0.5 * (part + part.T)
            return self._runner.pair(f1, self._runner.features(self.x2[cols]), "trace")

    def diagonal(self, memory_budget: Any = None) -> torch.Tensor:
        """``k(x1_i, x2_i)``, ``(min(n1, n2),)``: per example (symmetric: no pairs of
        different examples), else from the diagonals of ``side × side`` cross tiles."""
        side = self.side(parse_budget(memory_budget))
        if self.symmetric:
            with self._running():
                return diagonal_batch(self._runner, self.x1, side)
        m = min(self.shape)
        return torch.cat([self.block(slice(r0, min(m, r0 + side)), slice(r0, min(m, r0 + side))).diagonal()
                          for r0 in range(0, m, side)])

    def restrict(self, rows: Any = None, cols: Any = None) -> EmpiricalNTKSource:
        n1, n2 = self.shape
        ri = as_index(rows, n1, "rows", self.device)
        ci = as_index(cols, n2, "cols", self.device)
        if self.symmetric and (ri is None) == (ci is None) and (ri is None or torch.equal(ri, ci)):
            return self._new(self.x1 if ri is None else self.x1[ri], None)
        return self._new(self.x1 if ri is None else self.x1[ri], self.x2 if ci is None else self.x2[ci])

    def with_inputs(self, x1: Any, x2: Any = None) -> EmpiricalNTKSource:
        """The same model's NTK on other inputs, by the same method (not re-chosen)."""
        return EmpiricalNTKSource(self.model, x1, x2, method=self.method, **self._settings)

    # ------------------------------------------------------------------ helpers
    def _new(self, x1: Examples, x2: Examples | None) -> EmpiricalNTKSource:
        out = EmpiricalNTKSource.__new__(EmpiricalNTKSource)
        out.model, out._settings = self.model, self._settings
        out._init(self._problem, self._runner, self.plan, x1, x2)
        return out

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """Gradients on, RNNs/attention transformable, a failing transform as ModelError."""
        try:
            with torch.enable_grad(), traceable(self.model):
                yield
        except NtkitError:
            raise
        except (RuntimeError, NotImplementedError) as err:
            raise ModelError(
                f"method={self.method!r} failed on this model: {type(err).__name__}: {err}"
            ) from err

    def __repr__(self) -> str:
        n1, n2 = self.shape
        return (f"EmpiricalNTKSource({n1}×{n2}, method={self.method!r}, dtype={self.dtype}, "
                f"symmetric={self.symmetric})")


def _same_examples(a: Examples, b: Examples) -> bool:
    """Whether two batches are the same inputs (same layout and equal entries)."""
    if a.signature() != b.signature() or len(a) != len(b):
        return False
    return all(
        (s is None and t is None) or (s is not None and t is not None and torch.equal(s, t))
        for s, t in zip(a.leaves, b.leaves)
    )
