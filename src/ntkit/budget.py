"""Memory budgets: one parser, one default, one formatter, one output check.

Every public ``memory_budget=`` argument of ntkit (``Layer.kernel``, ``empirical_ntk``,
``monte_carlo_kernel``, ``KernelOperator``, the solvers, the scikit-learn estimators) takes
the same values and means the same thing: **the peak bytes of temporary kernel work** —
the temporaries of the tiles in flight, and caches such as a ``KernelOperator``'s stored
tiles — *not* counting the inputs and the returned matrix.

Accepted spellings (:func:`parse_budget`): ``None`` (the default,
:data:`DEFAULT_MEMORY_BUDGET` = 1 GiB), an int or float number of bytes ``>= 1``
(``2**28``, ``2.5e8``), a string such as ``"512MiB"``, ``"4GiB"``, ``"2GB"`` (``KiB``/
``MiB``/``GiB``/``TiB`` are powers of 1024, ``KB``/``MB``/``GB``/``TB`` powers of 1000, a
bare ``K``/``M``/``G``/``T`` means the binary unit), or a :class:`Budget`. Anything else —
``"lots"``, ``-1``, ``0``, ``True``, NaN — raises :class:`~ntkit.errors.ParameterError`
naming these forms.

Outputs are not part of the budget, but they are checked before they are allocated
(:func:`check_output`): a result larger than the output limit — the ``NTKIT_MAX_OUTPUT``
environment variable (any budget spelling) if set, else the memory available on the
result's device — raises :class:`~ntkit.errors.MemoryBudgetError` naming its size and the
alternatives, instead of failing in the allocator after the work.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import MemoryBudgetError, ParameterError

#: The library-wide default ``memory_budget``: 1 GiB of temporary kernel work.
DEFAULT_MEMORY_BUDGET = 2**30

#: Environment variable that caps the size of one returned kernel (a budget spelling).
OUTPUT_LIMIT_ENV = "NTKIT_MAX_OUTPUT"

ACCEPTED_FORMS = (
    "an int or float number of bytes >= 1 (e.g. 2**28 or 2.5e8) or a string such as "
    "'512MiB', '4GiB' or '2GB'"
)

_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
    "t": 2**40, "tib": 2**40, "tb": 10**12,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class Budget:
    """A memory budget in bytes (see the module docstring for its meaning).

    ``Budget(2**30)``, ``Budget.parse("4GiB")``; ``int(budget)`` is the byte count and
    ``str(budget)`` its human-readable form (``'1.0 GiB'``).
    """

    bytes: int

    def __post_init__(self) -> None:
        if isinstance(self.bytes, bool) or not isinstance(self.bytes, (int, np.integer)) or self.bytes < 1:
            raise ParameterError(f"Budget needs a whole number of bytes >= 1, got {self.bytes!r}")

    @classmethod
    def parse(cls, value: Any, name: str = "memory_budget") -> Budget:
        """The budget ``value`` spells (``None``: the default); ParameterError otherwise."""
        return cls(parse_budget(value, name))

    def __int__(self) -> int:
        return int(self.bytes)

    def __index__(self) -> int:
        return int(self.bytes)

    def __str__(self) -> str:
        return format_bytes(self.bytes)

    def share(self, parts: int) -> int:
        """Bytes of one of ``parts`` equal shares (at least 1)."""
        return max(1, int(self.bytes) // max(1, int(parts)))


def parse_budget(value: Any, name: str = "memory_budget") -> int:
    """Bytes from any budget spelling (see the module docstring); ``None``: the default.

    Raises:
        ParameterError: ``value`` is not one of the accepted forms, or is below 1 byte.
    """
    if value is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(value, Budget):
        return int(value.bytes)
    raw = value
    if isinstance(value, str):
        match = _PATTERN.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ParameterError(f"{name} must be {ACCEPTED_FORMS}; got {raw!r}")
        value = float(match.group(1)) * _UNITS[unit]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ParameterError(f"{name} must be {ACCEPTED_FORMS}; got {raw!r}")
    if not math.isfinite(value) or value < 1:
        raise ParameterError(f"{name} must be {ACCEPTED_FORMS}; got {raw!r} (not a positive size)")
    return int(value)


#: The name used by ``ntkit.linalg`` before there was one budget module.
parse_bytes = parse_budget


def format_bytes(n: float, unit: str | None = None) -> str:
    """The one human-readable size of every error message: ``1536 -> '1.5 KiB'``.

    Below 1 KiB in bytes, else one decimal in the largest binary unit that keeps the number
    at least 1 (``64 * 2**20 -> '64.0 MiB'``); ``unit`` (``"KiB"``, ``"MiB"``, ``"GiB"``,
    ``"TiB"``) forces one (``format_bytes(100000, "MiB") -> '0.1 MiB'``).
    """
    units = ("KiB", "MiB", "GiB", "TiB")
    if unit is not None:
        return f"{n / 1024 ** (units.index(unit) + 1):.1f} {unit}"
    if abs(n) < 1024:
        return f"{n:.0f} B"
    power = 1
    while power < len(units) and abs(n) >= 1024 ** (power + 1):
        power += 1
    return f"{n / 1024**power:.1f} {units[power - 1]}"


def describe(n: int) -> str:
    """``'268435456 bytes (256.0 MiB)'``: a byte count as error messages state it."""
    return f"{int(n)} bytes ({format_bytes(n)})"


def available_bytes(device: Any = None) -> int:
    """Memory that a new result could take now on ``device`` (CPU: available RAM)."""
    import torch

    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type != "cpu":  # pragma: no cover - other accelerators: no reliable query
        return 2**62
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    try:  # pragma: no cover - not Linux
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 2**62


def output_limit(device: Any = None) -> int:
    """Largest result ntkit allocates: ``$NTKIT_MAX_OUTPUT`` if set, else :func:`available_bytes`."""
    env = os.environ.get(OUTPUT_LIMIT_ENV)
    if env:
        return parse_budget(env, OUTPUT_LIMIT_ENV)
    return available_bytes(device)


def check_output(nbytes: int, what: str, alternatives: str, device: Any = None) -> None:
    """Raise MemoryBudgetError *before* allocating a result of ``nbytes`` that cannot fit.

    Args:
        nbytes: size of the result (all arrays returned together).
        what: the result, e.g. ``"the 60000×60000 float64 NNGP and NTK"``.
        alternatives: what to use instead (a phrase ending the message).
        device: the result's device (its free memory is the limit).
    """
    limit = output_limit(device)
    if nbytes > limit:
        source = f"${OUTPUT_LIMIT_ENV}" if os.environ.get(OUTPUT_LIMIT_ENV) else "available memory"
        raise MemoryBudgetError(
            f"{what} would take {describe(nbytes)}, more than the {source} "
            f"({describe(limit)}); outputs are allocated whole. Instead: {alternatives}"
        )
