"""Infinite-width NNGP/NTK kernels, built layer by layer."""

from .activations import (
    GELU,
    ABReLU,
    Abs,
    Activation,
    ElementwiseLayer,
    Erf,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softplus,
    Tanh,
)
from .attention import GlobalSelfAttention
from .combinators import FanInConcat, FanInSum, FanOut, mlp, parallel, serial
from .conv import Conv
from .conv_zoo import ConvLocal, ConvTranspose
from .custom import Elementwise
from .dense import Dense
from .depths import mlp_kernels
from .dropout import Dropout
from .exponential import Cos, Exp, ExpNormalized, Gaussian, Rbf, Sin
from .fixed import FixedLayers, fix_layers
from .graph import Aggregate
from .layers import Layer
from .normalization import LayerNorm
from .polynomial import Hermite, Monomial, Polynomial, RectifiedMonomial, Sign
from .pooling import AvgPool, Flatten, GlobalAvgPool
from .products import FanInProd
from .resize import ImageResize
from .source import LayerSource
from .state import KernelState
from .sum_pooling import GlobalSumPool, SumPool

__all__ = [
    "GELU",
    "ABReLU",
    "Abs",
    "Activation",
    "Aggregate",
    "AvgPool",
    "Conv",
    "ConvLocal",
    "ConvTranspose",
    "Cos",
    "Dense",
    "Dropout",
    "Elementwise",
    "ElementwiseLayer",
    "Erf",
    "Exp",
    "ExpNormalized",
    "FanInConcat",
    "FanInProd",
    "FanInSum",
    "FanOut",
    "FixedLayers",
    "Flatten",
    "Gaussian",
    "GlobalAvgPool",
    "GlobalSelfAttention",
    "GlobalSumPool",
    "Hermite",
    "Identity",
    "ImageResize",
    "KernelState",
    "Layer",
    "LayerNorm",
    "LayerSource",
    "LeakyReLU",
    "Monomial",
    "Polynomial",
    "Rbf",
    "ReLU",
    "RectifiedMonomial",
    "Sigmoid",
    "Sign",
    "Sin",
    "Softplus",
    "SumPool",
    "Tanh",
    "fix_layers",
    "mlp",
    "mlp_kernels",
    "parallel",
    "serial",
]
