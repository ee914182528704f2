"""The sharpness of a finite net's training loss: the top eigenvalue of its Hessian.

For ``L(w) = (1/2n)‖f(w, X) − y‖²`` the Hessian is

    ∇²L = (1/n) JᵀJ + (1/n) Σ_i r_i ∇²f_i,       r = f − y,

the Gauss–Newton part, whose non-zero eigenvalues are those of the empirical NTK ``JJᵀ/n``,
plus a residual term. As the width grows the residual term vanishes (its norm falls like
``1/√width``: Liu, Zhu & Belkin 2020) and the sharpness tends to ``λ_max(H)/n`` of the
infinite-width NTK ``H`` — the curvature that :func:`ntkit.predict.max_learning_rate` uses.
For a narrow net it can be several times larger (the lab's 16-channel stride-2 CNN on MNIST:
4.3×), and gradient descent is stable only for steps below ``2/sharpness`` (Cohen et al.
2021; Lewkowycz et al. 2020), not ``2n/λ_max(H)``.
"""

from __future__ import annotations

import math

import torch


def loss_sharpness(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, iters: int = 20,
                   seed: int = 0) -> float:
    """Top eigenvalue of the Hessian of ``(1/2n)‖net(x) − y‖²`` in the net's parameters.

    Power iteration on Hessian-vector products (double backward; ``iters`` products). The
    Hessian is indefinite (the residual term); when the eigenvalue of largest magnitude is
    negative, the iteration is repeated on ``∇²L + |λ|·I`` to reach the largest one.

    Args:
        net: a module mapping ``x`` to outputs ``(n,)`` or ``(n, 1)``.
        x: inputs ``(n, ...)`` in the net's dtype.
        y: targets ``(n,)``.
        iters: Hessian-vector products per power iteration.
        seed: seed of the random start.

    Returns:
        The largest eigenvalue (a float; ``0.0`` if every eigenvalue is ``≤ 0``).
    """
    params = [p for p in net.parameters() if p.requires_grad]

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.enable_grad():
            loss = 0.5 * ((net(x).reshape(-1) - y) ** 2).mean()
            g = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((gi * vi).sum() for gi, vi in zip(g, v))
            return [t.detach() for t in torch.autograd.grad(dot, params)]

    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for p in params]

    def power(shift: float) -> float:
        v, lam = start, 0.0
        for _ in range(iters):
            norm = math.sqrt(sum(float((t * t).sum()) for t in v))
            v = [t / norm for t in v]
            hv = [a + shift * b for a, b in zip(hvp(v), v)]
            lam = sum(float((a * b).sum()) for a, b in zip(hv, v))
            v = hv
        return lam - shift

    top = power(0.0)
    if top < 0:
        top = power(-top)
    return max(top, 0.0)
