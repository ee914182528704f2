"""Finite-network oracles for the normalization, dropout, product and attention layers.

:func:`batch_kernels` evaluates one finite net on the whole batch in a single forward
pass (so a dropout mask is drawn once per example and shared by its NTK entries, as in the
kernel of ``nk.Dropout``) and forms the empirical NNGP ``f fᵀ/o`` and NTK by one backward
pass per output entry. :func:`monte_carlo` averages them over seeds; :func:`relative_errors`
returns the relative errors against ``arch.kernel`` per width (RMS over seeds).
"""

from __future__ import annotations

import numpy as np
import torch


def batch_kernels(net: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None, ntk: bool = True):
    """Empirical ``(nngp, ntk)`` ``(n, n)`` of ``net`` on ``x`` from one forward pass.

    NNGP: ``f(x) f(x')ᵀ / o`` over the ``o`` outputs; NTK: ``Σ_o <∂f_o(x)/∂w, ∂f_o(x')/∂w>/o``
    (``None`` with ``ntk=False``).
    """
    params = [p for p in net.parameters() if p.requires_grad]
    with torch.set_grad_enabled(ntk):
        out = net(x) if mask is None else net(x, mask=mask)
    out = out.reshape(out.shape[0], -1)
    n, o = out.shape
    if not ntk:
        return out @ out.T / o, None
    grads = []
    for i in range(n):
        rows = []
        for j in range(o):
            g = torch.autograd.grad(out[i, j], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([
                (gi if gi is not None else torch.zeros_like(p)).reshape(-1) for gi, p in zip(g, params)
            ]))
        grads.append(torch.stack(rows))
    g = torch.stack(grads)  # (n, o, P)
    ntk = torch.einsum("iop,jop->ij", g, g) / o
    f = out.detach()
    return f @ f.T / o, ntk.detach()


def monte_carlo(arch, x, seeds, mask=None, get="ntk"):
    """Average of :func:`batch_kernels` over ``arch.build(seed=s)`` (torch seeded per draw)."""
    total = None
    for s in seeds:
        net = arch.build(tuple(x.shape[1:]), seed=s)
        torch.manual_seed(10_000 + s)  # the dropout masks
        nngp, ntk = batch_kernels(net, x, mask, ntk=get == "ntk")
        value = ntk if get == "ntk" else nngp
        total = value if total is None else total + value
    return total / len(seeds)


def relative_errors(make, x, widths, seeds, mask=None, get="ntk"):
    """Root-mean-square over seeds of the relative Frobenius error of one net's empirical
    kernel, per width (``make(m)`` gives the architecture of width ``m``).

    Each net's error is dominated by its ``O(1/√m)`` fluctuation, so the RMS follows the
    ``1/√m`` law without the ``O(1/m)`` bias taking over at large widths.
    """
    errors = []
    for m in widths:
        arch = make(m)
        exact = arch.kernel(x, get=get) if mask is None else arch.kernel(x, get=get, mask1=mask)
        sq = [float(((monte_carlo(arch, x, [s], mask=mask, get=get) - exact).norm() / exact.norm()) ** 2)
              for s in seeds]
        errors.append((sum(sq) / len(sq)) ** 0.5)
    return errors


def loglog_slope(xs, ys) -> float:
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])
