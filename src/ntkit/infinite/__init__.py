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
from .dense import Dense
from .layers import Layer
from .state import KernelState

__all__ = [
    "GELU",
    "ABReLU",
    "Abs",
    "Activation",
    "Dense",
    "ElementwiseLayer",
    "Erf",
    "FanInConcat",
    "FanInSum",
    "FanOut",
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
