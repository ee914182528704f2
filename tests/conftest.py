"""Shared test helpers: independent reference routes that the library is checked against."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

# Relative tolerances per dtype for quantities computed two ways in floating point.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def naive_empirical_ntk(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None):
    """Empirical NTK ``Σ_o <∇_w f_o(x), ∇_w f_o(x')>`` by one backward pass per example.

    Deliberately simple (no torch.func) so that it is an independent route. Returns
    ``(n1, n2)`` (summed over outputs).
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(x):
        rows = []
        for xi in x:
            out = model(xi[None]).reshape(-1)
            per_output = []
            for o in range(out.numel()):
                g = torch.autograd.grad(out[o], params, retain_graph=True, allow_unused=True)
                per_output.append(
                    torch.cat([
                        (gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                        for gi, p in zip(g, params)
                    ])
                )
            rows.append(torch.stack(per_output))
        return torch.stack(rows)  # (n, o, P)

    g1 = grads(x1)
    g2 = g1 if x2 is None else grads(x2)
    return torch.einsum("iop,jop->ij", g1, g2).detach()


def relative_error(a, b) -> float:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def loglog_slope(xs, ys) -> float:
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


# One torch thread by default: the CI machine has 2 shared cores, where oversubscribed BLAS
# threads made the suite many times slower. Results must not depend on it: the suite also
# runs with NTKIT_TEST_THREADS=2 (and under MKL_CBWR=COMPATIBLE), see README.md, "Tests".
torch.set_num_threads(int(os.environ.get("NTKIT_TEST_THREADS", "1")))


class WeightUsedOutside(torch.nn.Module):
    """An MLP whose readout weight is also used directly through ``F.linear``: the
    structured empirical NTK must refuse it (the weight acts outside its layer)."""

    def __init__(self):
        super().__init__()
        self.inner, self.out = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.inner(x))
        return self.out(h) + torch.nn.functional.linear(h, self.out.weight)
