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
from .dense import Dense
from .dropout import Dropout
from .layers import Layer
from .normalization import LayerNorm
from .pooling import AvgPool, Flatten, GlobalAvgPool
from .products import FanInProd
from .state import KernelState

__all__ = [
    "GELU",
    "ABReLU",
    "Abs",
    "Activation",
    "AvgPool",
    "Conv",
    "Dense",
    "Dropout",
    "ElementwiseLayer",
    "Erf",
    "FanInConcat",
    "FanInProd",
    "FanInSum",
    "FanOut",
    "Flatten",
    "GlobalAvgPool",
    "GlobalSelfAttention",
    "Identity",
    "KernelState",
    "Layer",
    "LayerNorm",
    "LeakyReLU",
    "ReLU",
    "Sigmoid",
    "Softplus",
    "Tanh",
    "mlp",
    "parallel",
    "serial",
]
