"""The lab: experiments that show the theory of the lazy regime on real data.

This first version runs the width-convergence check of the lecture's two-layer ReLU net
on scikit-learn's digits and summarizes the infinite-width kernels of a few architectures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import load_dataset
from ..infinite import mlp
from ..theory import TwoLayerNet, two_layer_finite_ntk, two_layer_ntk


def _unit_rows(x: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def width_convergence(x: torch.Tensor, widths: list[int], seeds: int) -> dict[str, Any]:
    """Relative Frobenius error of the finite two-layer NTK against its limit, per width."""
    exact = two_layer_ntk(x)
    errors = []
    for m in widths:
        errs = []
        for seed in range(seeds):
            net = TwoLayerNet(x.shape[1], m, seed=seed)
            k = two_layer_finite_ntk(x, a=net.a.detach(), B=net.B.detach())
            errs.append(float(torch.linalg.norm(k - exact) / torch.linalg.norm(exact)))
        errors.append(float(np.mean(errs)))
    slope = float(np.polyfit(np.log(widths), np.log(errors), 1)[0])
    return {"widths": widths, "relative_error": errors, "slope": slope}


def run(out: str | Path = "lab-report", *, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run the lab on digits and write ``metrics.json`` into ``out``; returns the metrics."""
    torch.manual_seed(seed)
    x_all, _ = load_dataset("digits")
    rng = np.random.default_rng(seed)
    n = 100 if quick else 400
    x = _unit_rows(x_all[rng.choice(len(x_all), n, replace=False)])
    widths = [64, 256, 1024] if quick else [64, 256, 1024, 4096]
    start = time.perf_counter()
    metrics: dict[str, Any] = {"dataset": "digits", "n": n, "seed": seed}
    metrics["width"] = width_convergence(x, widths, seeds=3)
    kernels = {}
    for name, arch in {
        "relu_depth3": mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1),
        "erf_depth3": mlp(3, 512, "erf", W_std=1.5, b_std=0.1),
    }.items():
        eig = torch.linalg.eigvalsh(arch.kernel(x, get="ntk"))
        kernels[name] = {"lambda_min": float(eig[0]), "lambda_max": float(eig[-1])}
    metrics["kernels"] = kernels
    metrics["seconds"] = time.perf_counter() - start
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
