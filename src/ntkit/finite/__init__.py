"""Finite ``nn.Module`` building blocks that ``arch.build`` assembles.

Each module matches one infinite-width layer of :mod:`ntkit.infinite` (the file layout mirrors
it) in the same parameterization, so that the empirical kernels of the finite net converge to
``arch.kernel`` as the widths grow. Branches (after ``FanOut``) travel as tuples of tensors.
"""

from .activations import Elementwise
from .attention import GlobalSelfAttentionModule
from .combinators import (
    FanInConcatModule,
    FanInProdModule,
    FanInSumModule,
    FanOutModule,
    Parallel,
    Serial,
)
from .conv import NTKConv, check_images, pad_images
from .dense import NTKDense
from .normalization import LayerNormModule
from .pooling import AvgPoolModule, FlattenModule, GlobalAvgPoolModule

__all__ = [
    "AvgPoolModule",
    "Elementwise",
    "FanInConcatModule",
    "FanInProdModule",
    "FanInSumModule",
    "FanOutModule",
    "FlattenModule",
    "GlobalAvgPoolModule",
    "GlobalSelfAttentionModule",
    "LayerNormModule",
    "NTKConv",
    "NTKDense",
    "Parallel",
    "Serial",
    "check_images",
    "pad_images",
]
