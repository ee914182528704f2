"""The run context an experiment receives: data, sizes, seeds, device, progress, cache."""

from __future__ import annotations

import sys
import time
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
    progress: bool | str = False
    cache: dict[Any, Any] = field(default_factory=dict)
    model: Any = None
    experiment: str = ""

    def seed_for(self, *keys: Any) -> int:
        """A deterministic 31-bit seed for ``keys`` (strings and ints), from the run's seed."""
        words = [int(self.seed)]
        for k in keys:
            words += [b for b in str(k).encode()] if isinstance(k, str) else [int(k)]
        return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)

    def rng(self, *keys: Any) -> np.random.Generator:
        return np.random.default_rng(self.seed_for(*keys))

    def bar(self, total: int, desc: str) -> tqdm:
        """Progress of one step of an experiment, on stderr.

        ``progress=True`` (or ``"bar"``): a tqdm bar; ``"log"`` (stderr is not a terminal:
        CI, nohup, a file): one timestamped line when the step ends; ``False``: nothing.
        """
        if self.progress == "log":
            return _LogLine(total, f"{self.experiment}: {desc}" if self.experiment else desc)
        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, disable=not self.progress,
                    dynamic_ncols=True, mininterval=0.5)


def log_line(text: str) -> None:
    """``HH:MM:SS ntkit lab: text`` on stderr, flushed at once."""
    print(f"{time.strftime('%H:%M:%S')} ntkit lab: {text}", file=sys.stderr, flush=True)


class _LogLine:
    """A stand-in for a tqdm bar that prints one timestamped line when its step ends."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self.start = time.perf_counter()

    def update(self, k: int = 1) -> None:
        self.n += k

    def __enter__(self) -> _LogLine:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            log_line(f"{self.desc} ({self.n}/{self.total}, {time.perf_counter() - self.start:.1f} s)")
