"""Partly random labels, shared by ``random-labels``, ``bound`` and ``spectrum`` (the fits on
them are in :mod:`ntkit.lab.fits`)."""

from __future__ import annotations

import math

import torch

from .context import Context


def corrupted_labels(ctx: Context, fraction: float) -> torch.Tensor:
    """Training labels of which a ``fraction`` is re-drawn uniformly from ``{−1, +1}``.

    As in Zhang et al. 2017, each corrupted label is a uniformly random class, so about half
    of them keep their value. The corrupted sets are nested: one random order of the
    examples and one random label per example are drawn from the run's seed, and the
    fraction ``f`` re-draws the first ``round(f·n)`` examples of that order — so a larger
    fraction corrupts everything a smaller one does, and curves against the fraction are
    not blurred by independent draws.
    """
    y = ctx.data.y_train
    n = y.shape[0]
    rng = ctx.rng("corrupt")
    order = rng.permutation(n)
    fresh = torch.as_tensor(rng.choice([-1.0, 1.0], size=n), dtype=y.dtype, device=y.device)
    k = math.floor(float(fraction) * n + 0.5)
    idx = torch.as_tensor(order[:k], device=y.device)
    out = y.clone()
    out[idx] = fresh[idx]
    return out
