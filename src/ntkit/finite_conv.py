"""Former home of the finite convolution and pooling modules, kept as an import alias.

They live in :mod:`ntkit.finite.conv` and :mod:`ntkit.finite.pooling`.
"""

from .finite.conv import NTKConv, pad_images
from .finite.pooling import AvgPoolModule, FlattenModule, GlobalAvgPoolModule

__all__ = ["AvgPoolModule", "FlattenModule", "GlobalAvgPoolModule", "NTKConv", "pad_images"]
