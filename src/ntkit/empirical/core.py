"""``empirical_ntk``: the finite-width NTK ``Σ_p ∂f(x)/∂w_p ∂f(x')/∂w_p`` of any module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._validation import as_tensor, check_choice, check_positive_int
from ..errors import ModelError, ShapeError
from . import methods, structured
from ._params import ParamSelector, check_pure, flat_outputs, make_fn, select_params

OUTPUTS = ("trace", "full", "diagonal")
METHODS = ("auto", "jacobian", "ntk_vp", "structured")
#: Bytes allowed for per-example Jacobians / tangents of one block.
DEFAULT_BLOCK_BYTES = 512 * 2**20


def empirical_ntk(
    model: nn.Module,
    x1: Any,
    x2: Any = None,
    *,
    output: str = "trace",
    method: str = "auto",
    params: ParamSelector = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Empirical NTK ``k(x, x') = Σ_p ∂f(x)/∂w_p · ∂f(x')/∂w_p`` at the current weights.

    Args:
        model: any module ``torch.func.functional_call`` can run, mapping ``(n, ...)`` to
            ``(n, ...)`` outputs (flattened to ``o`` outputs; ``(n,)`` is ``o = 1``).
            Buffers pass through unchanged; a forward that changes them is refused.
        x1: ``(n1, ...)`` inputs; x2: ``(n2, ...)`` or ``None`` (``x2 = x1``, symmetric half).
        output: ``"trace"`` → ``(n1, n2)`` summed over outputs, ``"full"`` →
            ``(n1, n2, o, o)``, ``"diagonal"`` → ``(n1, n2, o)`` (each output with itself).
        method: ``"jacobian"`` (Jacobian contraction, ``N·O·[FP] + N²·O²·P``),
            ``"ntk_vp"`` (NTK-vector products, ``N²·O·[FP]``), ``"structured"`` (products of
            input and output-gradient Grams, for networks whose parameters all sit in
            ``nn.Linear``/ntkit Dense layers), or ``"auto"`` (structured where it applies,
            else the cheaper of the other two by the cost model).
        params: which parameters count: ``None`` (all with ``requires_grad``), a list of
            names, or a predicate ``(name, parameter) -> bool`` — e.g. the first layer only.
        batch_size: examples per block (default: from a 512 MiB budget for Jacobians).

    Returns:
        The kernel in the model's dtype, on the inputs' device.
    """
    check_choice(output, "output", OUTPUTS)
    check_choice(method, "method", METHODS)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    selected, fixed = select_params(model, params)
    check_pure(model)
    ref = next(iter(selected.values()))
    x1 = as_tensor(x1, "x1", dtype=ref.dtype, min_ndim=1, device=ref.device)
    if x2 is not None:
        x2 = as_tensor(x2, "x2", dtype=ref.dtype, min_ndim=1, device=ref.device)
        if x2.shape[1:] != x1.shape[1:]:
            raise ShapeError(
                f"x1 and x2 must have the same example shape, got {tuple(x1.shape[1:])} and "
                f"{tuple(x2.shape[1:])}"
            )
    buffers = {k: b for k, b in model.named_buffers()}
    fn = make_fn(model, fixed, buffers)
    n_out = _probe(model, fn, selected, buffers, x1)
    n_params = sum(p.numel() for p in selected.values())
    full = output != "trace"

    layers = structured.supported_layers(model, selected)
    requested = method
    if method == "auto":
        method = "structured" if layers is not None else _cheaper(model, x1, n_out, n_params, full)
    kernel = None
    if method == "structured":
        if layers is not None:
            kernel = _structured(model, layers, selected, x1, x2, full, batch_size)
        if kernel is None and requested == "structured":
            raise ModelError(
                "method='structured' needs every selected parameter in an nn.Linear or ntkit "
                "Dense layer, each called once per forward on (n, features) inputs; use "
                "method='jacobian' or 'ntk_vp'"
            )
        if kernel is None:
            method = _cheaper(model, x1, n_out, n_params, full)
    if kernel is None:
        block_fn = methods.jacobian_block if method == "jacobian" else methods.ntk_vp_block
        block = _block(batch_size, n_out, n_params, x1)
        kernel = _tiled(block_fn, fn, selected, x1, x2, full, block)
    if output == "diagonal":
        return kernel.diagonal(dim1=2, dim2=3)
    return kernel


def _probe(model, fn, selected, buffers, x1) -> int:
    """Run one forward on two examples: check purity and the output layout; return ``o``."""
    before = {k: b.clone() for k, b in buffers.items()}
    with torch.no_grad():
        out = fn(selected, x1[:2])
    for k, b in buffers.items():
        if not torch.equal(before[k], b):
            raise ModelError(
                f"the forward pass changed buffer {k!r}; the NTK needs a pure forward: call "
                "model.eval() (or use track_running_stats=False)"
            )
    return flat_outputs(out, min(2, x1.shape[0])).shape[1]


def _block(batch_size, n_out, n_params, x) -> int:
    if batch_size is not None:
        return check_positive_int(batch_size, "batch_size")
    per_example = n_out * n_params * x.element_size() * 3
    return max(1, min(x.shape[0], DEFAULT_BLOCK_BYTES // per_example))


def _forward_cost(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds of one example's forward through Linear/Conv layers (a cost proxy)."""
    total = [0.0]

    def hook(mod, args, out):
        total[0] += mod.weight.numel() * (out[0].numel() / out.shape[1] if out.ndim > 2 else 1)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim >= 2]
    with torch.no_grad():
        model(x[:1])
    for h in handles:
        h.remove()
    return max(total[0], 1.0)


def _cheaper(model, x, n_out, n_params, full) -> str:
    """Cost model of Novak et al. 2022 (Table 1): pick the method with fewer flops."""
    n = x.shape[0]
    fp = 2.0 * _forward_cost(model, x)
    jac = n * n_out * 3 * fp + n * n * (n_out if full else 1) * n_out * n_params
    vp = n * n * n_out * 3 * fp
    return "jacobian" if jac <= vp else "ntk_vp"


def _tiled(block_fn, fn, params, x1, x2, full, block) -> torch.Tensor:
    """Tile the pair grid; only the upper block triangle when ``x2`` is None."""
    symmetric = x2 is None
    cols = x1 if symmetric else x2
    n1, n2 = x1.shape[0], cols.shape[0]
    out = None
    for r0 in range(0, n1, block):
        r1 = min(n1, r0 + block)
        for c0 in range(r0 if symmetric else 0, n2, block):
            c1 = min(n2, c0 + block)
            same = symmetric and c0 == r0
            tile = block_fn(fn, params, x1[r0:r1], None if same else cols[c0:c1], full)
            if out is None:
                out = tile.new_empty((n1, n2, *tile.shape[2:]))
            if same:  # exactly symmetric diagonal blocks
                tile = 0.5 * (tile + _swap(tile))
            out[r0:r1, c0:c1] = tile
            if symmetric and not same:
                out[c0:c1, r0:r1] = _swap(tile)
    return out


def _swap(tile: torch.Tensor) -> torch.Tensor:
    """The block of the swapped pairs: ``(b2, b1)`` or ``(b2, b1, o, o)`` with outputs swapped."""
    return tile.T if tile.ndim == 2 else tile.permute(1, 0, 3, 2)


def _structured(model, layers, selected, x1, x2, full, batch_size):
    """Features for all examples in blocks, then the Gram products (``None``: not applicable)."""
    block = batch_size or max(1, min(x1.shape[0], 4096))

    def feats(x):
        parts = [structured.structured_features(model, layers, selected, x[i : i + block])
                 for i in range(0, x.shape[0], block)]
        if any(p is None for p in parts):
            return None
        return {name: (torch.cat([p[name][0] for p in parts]), torch.cat([p[name][1] for p in parts], 1))
                for name, _ in layers}

    f1 = feats(x1)
    if f1 is None:
        return None
    f2 = f1 if x2 is None else feats(x2)
    kernel = structured.structured_block(layers, selected, f1, f2, full)
    return 0.5 * (kernel + _swap(kernel)) if x2 is None else kernel


