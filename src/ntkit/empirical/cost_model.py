"""The cost model behind ``method="auto"``.

Costs are estimated times, in units of one matmul flop, on the problem actually asked
(``n1``, ``n2``, symmetry, output, block size). They follow the complexity analysis of
Novak et al. 2022 ("Fast finite width neural tangent kernel", Table 1):

- Jacobian contraction ``N·O·[FP] + N²·O²·P`` (``N²·O·P`` for the trace or diagonal), plus
  writing the ``N·O·P`` per-example Jacobian entries;
- NTK-vector products ``N²·O·[FP]``: per column one VJP of one example and one JVP of the
  row block;
- structured derivatives: one forward and ``O`` backward passes per example, then per layer
  the cheaper of the Gram form and the per-layer Jacobian (see ``structured.py``).

``[FP]`` is measured once by the probe forward (``torch.utils.flop_counter``: matmul and
convolution flops per example); ``act`` is the number of activations per example. The
weights below say how many matmul flops one unit of each kind of work costs; they were
fitted (non-negative least squares on relative errors) to 44 timed runs of the three
methods on MLPs and CNNs of various widths, output counts and batch sizes, float64, one
CPU thread, where ``auto`` then picked the fastest method in every run. The vmapped
per-example passes of ``jacobian``/``ntk_vp`` are memory- and overhead-bound, hence the
large weights: writing one per-example Jacobian entry costs about 300 matmul flops.
"""

from __future__ import annotations

import math

from ._params import Problem

#: jacobian: per per-example Jacobian entry written by ``vmap(jacrev)``.
JACOBIAN_ENTRY = 300.0
#: jacobian: fixed cost of a call (vmap setup, the once-per-call nested-vmap check).
JACOBIAN_FIXED = 2e8
#: ntk_vp: per column (one VJP, one vmapped JVP) and forward flop of one example.
VP_COLUMN_FLOP = 60.0
#: ntk_vp: per (pair, output) and forward flop, and per (pair, output) and activation.
VP_PAIR_FLOP = 3.0
VP_PAIR_ACTIVATION = 115.0
#: ntk_vp: per entry of the full ``(o, o)`` block it always forms; fixed cost of a call.
VP_OUTPUT_ENTRY = 285.0
VP_FIXED = 3e7
#: structured: per (example, output) and activation (the batched backward of ``O``
#: cotangents), per output entry per layer term (memory-bound accumulation), fixed cost
#: (the verification pass and hooks).
STRUCTURED_ACTIVATION = 200.0
STRUCTURED_OUTPUT_ENTRY = 40.0
STRUCTURED_FIXED = 1.1e8
#: structured: per entry of a per-layer Jacobian built by ``bmm``.
MEMORY_WEIGHT = 4.0


def forward_flops(problem: Problem) -> float:
    """Matmul/convolution flops of one example's forward pass (measured by the probe)."""
    return max(problem.forward_flops, 1.0)


def _evaluations(n1: int, n2: int, symmetric: bool, block: int, cached: bool) -> float:
    """How many per-example feature computations the block loop does."""
    if cached:
        return n1 if symmetric else n1 + n2
    rows = math.ceil(n1 / block)
    return n1 + (n1 * (rows - 1) / 2 if symmetric else n2 * rows)


def _pairs(n1: int, n2: int, symmetric: bool, block: int) -> float:
    """Example pairs the block loop computes (whole blocks on and above the diagonal)."""
    if not symmetric:
        return n1 * n2
    blocks = math.ceil(n1 / block)
    return min(n1 * n1, blocks * (blocks + 1) / 2 * block * block)


def _per_pair_outputs(output: str, n_out: int) -> int:
    return n_out * n_out if output == "full" else n_out


def jacobian_cost(problem: Problem, fp: float, n1: int, n2: int, symmetric: bool, output: str,
                  block: int, cached: bool, groups: int = 1) -> float:
    """With ``groups > 1`` parameter groups every block pair recomputes both blocks'
    Jacobians, group by group (a forward and ``o`` backward passes per group)."""
    o, P = problem.n_out, problem.n_params
    if groups > 1:
        pair_blocks = _pairs(n1, n2, symmetric, block) / (block * block)
        evaluations = pair_blocks * 2 * block
        per_example = groups * o * fp + JACOBIAN_ENTRY * o * P
        contract = 2 * _pairs(n1, n2, symmetric, block) * _per_pair_outputs(output, o) * P
        return JACOBIAN_FIXED + evaluations * per_example + contract
    evaluations = _evaluations(n1, n2, symmetric, block, cached)
    per_example = o * fp + JACOBIAN_ENTRY * o * P
    contract = 2 * _pairs(n1, n2, symmetric, block) * _per_pair_outputs(output, o) * P
    return JACOBIAN_FIXED + evaluations * per_example + contract


def ntk_vp_cost(problem: Problem, fp: float, n1: int, n2: int, symmetric: bool, output: str,
                block: int, cached: bool) -> float:
    o = problem.n_out
    rows = math.ceil(n1 / block)
    columns = (n1 * (rows + 1) / 2 if symmetric else n2 * rows) * o
    pairs = _pairs(n1, n2, symmetric, block)
    per_pair = o * (VP_PAIR_FLOP * fp + VP_PAIR_ACTIVATION * problem.act_numel) + VP_OUTPUT_ENTRY * o * o
    return VP_FIXED + columns * VP_COLUMN_FLOP * fp + pairs * per_pair


def structured_cost(method, fp: float, n1: int, n2: int, symmetric: bool, output: str,
                    block: int, cached: bool) -> float:
    problem = method.problem
    o = problem.n_out
    o_pair = _per_pair_outputs(output, o)
    groups = math.ceil(o / method.n_out)  # output groups: one forward pass each
    per_example = (groups + 2 * o) * fp + STRUCTURED_ACTIVATION * o * problem.act_numel
    per_pair = STRUCTURED_OUTPUT_ENTRY * o_pair * len(method.terms)
    for term in method.terms:
        s = term.shape
        G, P, K, C = s["G"], s["P"], s["K"], s["C"]
        if term.kind == "rest":  # vmap(jacrev) through the model for this parameter
            per_example += (o * fp if term.form == "vmap" else 0) + JACOBIAN_ENTRY * o * K
            per_pair += 2 * o_pair * K
        elif term.kind in ("bias", "scale"):
            per_pair += 2 * o_pair * G * C
        elif term.form == "gram":
            per_pair += G * P * P * (2 * K + 2 * o_pair * C + 2 * o_pair)
        else:
            per_example += 2 * o * G * C * P * K + MEMORY_WEIGHT * o * G * C * K
            per_pair += 2 * o_pair * G * C * K
    evaluations = _evaluations(n1, n2, symmetric, block, cached)
    return STRUCTURED_FIXED + evaluations * per_example + _pairs(n1, n2, symmetric, block) * per_pair


COSTS = {"jacobian": jacobian_cost, "ntk_vp": ntk_vp_cost, "structured": structured_cost}
