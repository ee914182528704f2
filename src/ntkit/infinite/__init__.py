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
from .combinators import FanInConcat, FanInSum, FanOut, mlp, parallel, serial
from .conv import Conv
from .dense import Dense
from .layers import Layer
from .pooling import AvgPool, Flatten, GlobalAvgPool
from .state import KernelState

__all__ = [
    "GELU",
    "ABReLU",
    "Abs",
    "Activation",
    "AvgPool",
    "Conv",
    "Dense",
    "ElementwiseLayer",
    "Erf",
    "FanInConcat",
    "FanInSum",
    "FanOut",
    "Flatten",
    "GlobalAvgPool",
    "Identity",
    "KernelState",
    "Layer",
    "LeakyReLU",
    "ReLU",
    "Sigmoid",
    "Softplus",
    "Tanh",
    "mlp",
    "parallel",
    "serial",
]
