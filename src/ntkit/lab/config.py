"""Sizes of the lab's experiments: the default run and the ``quick`` one.

Every number that decides how long the lab runs lives here, so that a run is described by
``(dataset, seed, quick, sizes)`` alone and ``config.json`` can record all of it. The
defaults are chosen so that ``ntkit lab`` finishes in a few minutes on two CPU cores and
``ntkit lab --quick`` in well under a minute, while every effect the report describes is
already visible at these sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..errors import ParameterError

#: Experiment names in the order they run (the CLI also accepts ``random_labels``).
EXPERIMENT_NAMES = ("width", "lazy", "random-labels", "bound", "spectrum")


@dataclass(frozen=True)
class Sizes:
    """How big each experiment is. ``Sizes.default()`` / ``Sizes.quick()`` are the presets.

    Attributes:
        n_train, n_test: training / test examples of the two-class subset (fewer when the
            data set is smaller: at most 70% of it trains).
        width_points: inputs (a prefix of the training set) on which kernels are compared.
        width_two_layer: widths ``m`` of the lecture's two-layer net.
        width_deep: hidden widths of the depth-3 ReLU net.
        width_seeds: random initializations averaged per width.
        lazy_widths: widths of the two-layer nets trained in ``lazy``.
        lazy_steps: full-batch gradient-descent steps in ``lazy``.
        lazy_checkpoints: number of (log-spaced) steps at which kernels and gaps are measured.
        rl_width: width of the nets of ``random-labels`` (and of ``bound``'s test errors).
        rl_max_steps: step limit of one fit in ``random-labels``.
        rl_fractions: label-corruption fractions.
        rl_threshold: training loss ``(1/2n)‖f − y‖²`` counted as "fitted" (0.01: an RMS
            residual of 0.14 on labels ±1, every sign right; lower thresholds are reached only
            along the kernel's smallest eigenvalues, where the time to fit barely depends
            on how many labels are noise).
        rl_momentum: heavy-ball momentum of the ``random-labels`` fits (Zhang et al. 2017
            used SGD with momentum 0.9).
        cnn_channels: channels of the CNN of ``--arch cnn``.
        spectrum_width: width of the net and its linearization in ``spectrum``.
        spectrum_steps: gradient-descent steps in ``spectrum``.
    """

    n_train: int = 200
    n_test: int = 200
    width_points: int = 100
    width_two_layer: tuple[int, ...] = (64, 256, 1024, 4096, 16384)
    width_deep: tuple[int, ...] = (64, 128, 256, 512, 1024)
    width_seeds: int = 6
    lazy_widths: tuple[int, ...] = (64, 256, 1024, 4096)
    lazy_steps: int = 400
    lazy_checkpoints: int = 12
    rl_width: int = 1024
    rl_max_steps: int = 3000
    rl_fractions: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    rl_threshold: float = 1e-2
    rl_momentum: float = 0.9
    cnn_channels: int = 16
    spectrum_width: int = 2048
    spectrum_steps: int = 400
    _preset: str = field(default="default", repr=False, compare=False)

    @classmethod
    def default(cls) -> Sizes:
        """The sizes of ``ntkit lab``."""
        return cls()

    @classmethod
    def quick(cls) -> Sizes:
        """The sizes of ``ntkit lab --quick``: a first look, and the test suite's run."""
        return cls(
            n_train=150,
            n_test=100,
            width_points=60,
            width_two_layer=(64, 256, 1024, 4096),
            width_deep=(64, 128, 256, 512),
            width_seeds=5,
            lazy_widths=(64, 256, 1024, 4096),
            lazy_steps=150,
            lazy_checkpoints=8,
            rl_width=512,
            rl_max_steps=1500,
            rl_fractions=(0.0, 0.5, 1.0),
            spectrum_width=1024,
            spectrum_steps=150,
            _preset="quick",
        )

    def with_(self, **changes: Any) -> Sizes:
        """A copy with some fields changed (unknown names raise ``ParameterError``)."""
        known = {f.name for f in fields(self) if not f.name.startswith("_")}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ParameterError(
                f"unknown size {unknown[0]!r}; sizes are {', '.join(sorted(known))}"
            )
        new = replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        """Raise ``ParameterError`` on a size that cannot work."""
        for name in ("n_train", "n_test", "width_points", "width_seeds", "lazy_steps",
                     "lazy_checkpoints", "rl_width", "rl_max_steps", "spectrum_width", "cnn_channels",
                     "spectrum_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"size {name} must be a positive integer, got {value!r}")
        for name in ("width_two_layer", "width_deep", "lazy_widths"):
            value = getattr(self, name)
            if len(value) < 2 or any(int(w) < 1 for w in value) or list(value) != sorted(set(value)):
                raise ParameterError(
                    f"size {name} must list at least two increasing positive widths, got {value!r}"
                )
        if len(self.rl_fractions) < 2 or any(not 0 <= f <= 1 for f in self.rl_fractions):
            raise ParameterError(
                f"size rl_fractions must list at least two fractions in [0, 1], got {self.rl_fractions!r}"
            )
        if not 0 < self.rl_threshold < 1 or not 0 <= self.rl_momentum < 1:
            raise ParameterError("rl_threshold must be in (0, 1) and rl_momentum in [0, 1)")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists; the preset's name is included)."""
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        d["preset"] = d.pop("_preset")
        return d
