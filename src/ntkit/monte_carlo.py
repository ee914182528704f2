"""Monte-Carlo NNGP and NTK over random initializations of an architecture's finite net."""

from __future__ import annotations

from typing import Any

import torch

from ._validation import as_tensor, check_positive_int
from .empirical import empirical_ntk
from .errors import ShapeError
from .kernel import Kernel


def monte_carlo_kernel(
    arch,
    x1: Any,
    x2: Any = None,
    n_samples: int = 16,
    seed: int = 0,
    *,
    method: str = "auto",
    dtype: Any = torch.float64,
) -> Kernel:
    """Average empirical kernels of ``arch.build(in_shape, seed=seed + s)``, ``s < n_samples``.

    NNGP: ``f(x1) f(x2)ᵀ / o`` (outputs averaged); NTK: the empirical NTK traced over the
    ``o`` outputs and divided by ``o``. Both converge to ``arch.kernel`` as widths grow (the
    error ∝ 1/√(width·n_samples)). Shapes: ``x1 (n1, *in_shape)``, ``x2 (n2, *in_shape)``;
    kernels ``(n1, n2)``; ``var1``/``var2`` are the NNGP diagonals ``(n1,)``/``(n2,)``.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    x1 = as_tensor(x1, "x1", dtype=dtype, min_ndim=2)
    if x2 is not None:
        x2 = as_tensor(x2, "x2", dtype=dtype, min_ndim=2, device=x1.device)
        if x2.shape[1:] != x1.shape[1:]:
            raise ShapeError(
                f"x1 and x2 must have the same example shape, got {tuple(x1.shape[1:])} and "
                f"{tuple(x2.shape[1:])}"
            )
    nngp = ntk = var1 = var2 = 0.0
    for s in range(n_samples):
        net = arch.build(tuple(x1.shape[1:]), seed=seed + s, dtype=x1.dtype).to(x1.device)
        with torch.no_grad():
            f1 = net(x1).reshape(x1.shape[0], -1)
            f2 = f1 if x2 is None else net(x2).reshape(x2.shape[0], -1)
        o = f1.shape[1]
        nngp = nngp + f1 @ f2.T / o
        var1 = var1 + (f1 * f1).sum(1) / o
        var2 = var2 + (f2 * f2).sum(1) / o
        ntk = ntk + empirical_ntk(net, x1, x2, method=method) / o
    return Kernel(nngp=nngp / n_samples, ntk=ntk / n_samples, var1=var1 / n_samples,
                  var2=var2 / n_samples, diagonal=False)
