"""The :class:`Kernel` value returned by ``arch.kernel`` and ``nk.monte_carlo_kernel``."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Kernel:
    """Infinite-width (or Monte-Carlo) kernels of an architecture on a pair of batches.

    Attributes:
        nngp: ``(n1, n2)`` covariance of the outputs at initialization (the NNGP kernel),
            or ``(n,)`` with ``diagonal=True``; ``None`` if it was not requested.
        ntk: the neural tangent kernel, same shape as ``nngp``; ``None`` if not requested.
        var1: ``(n1,)`` output variance ``nngp(x1_i, x1_i)`` of each row input.
        var2: ``(n2,)`` output variance of each column input (equal to ``var1`` when ``x2``
            was ``None``).
        diagonal: ``True`` when only the pairs ``(x1_i, x2_i)`` were computed.

    Spatial architectures that end without a readout keep their spatial axes after the
    batch axes (see the convolutional layers' documentation).
    """

    nngp: torch.Tensor | None
    ntk: torch.Tensor | None
    var1: torch.Tensor
    var2: torch.Tensor
    diagonal: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the kernel matrices: ``(n1, n2)`` (or ``(n,)`` when diagonal)."""
        present = self.ntk if self.ntk is not None else self.nngp
        return tuple(present.shape) if present is not None else ()

    def get(self, name: str) -> torch.Tensor:
        """Return ``self.nngp`` or ``self.ntk`` by name, with a clear error if absent."""
        from .errors import ParameterError

        if name not in ("nngp", "ntk"):
            raise ParameterError(f"kernel name must be 'nngp' or 'ntk', got {name!r}")
        value = getattr(self, name)
        if value is None:
            raise ParameterError(f"{name} was not computed; ask for it with get=({name!r}, ...)")
        return value
