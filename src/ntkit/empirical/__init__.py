"""Empirical (finite-width) NTK of any ``torch.nn.Module``."""

from .core import empirical_ntk

__all__ = ["empirical_ntk"]
