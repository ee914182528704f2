"""The run context an experiment receives: data, sizes, seeds, device, progress, cache."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .config import Sizes
from .dataset import LabData


@dataclass
class Context:
    """Everything an experiment needs: data, sizes, seed, device, progress, a shared cache."""

    data: LabData
    sizes: Sizes
    seed: int
    device: torch.device
    progress: bool = False
    cache: dict[Any, Any] = field(default_factory=dict)

    def seed_for(self, *keys: Any) -> int:
        """A deterministic 31-bit seed for ``keys`` (strings and ints), from the run's seed."""
        words = [int(self.seed)]
        for k in keys:
            words += [b for b in str(k).encode()] if isinstance(k, str) else [int(k)]
        return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)

    def rng(self, *keys: Any) -> np.random.Generator:
        return np.random.default_rng(self.seed_for(*keys))

    def bar(self, total: int, desc: str) -> tqdm:
        """A tqdm progress bar on stderr (shown only when ``progress`` is on)."""
        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, disable=not self.progress,
                    dynamic_ncols=True, mininterval=0.5)
