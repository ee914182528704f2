"""ntkit: Neural Tangent Kernels for PyTorch.

``import ntkit as nk`` gives the curated public API: layers and combinators that describe
an architecture (``nk.serial(nk.Dense(512), nk.ReLU(), nk.Dense(1))``), whose
``arch.kernel(x1, x2)`` is the infinite-width NNGP/NTK and whose ``arch.build(in_shape)`` is
the matching finite network; the lecture's closed forms in ``nk.theory``.
"""

import sys as _sys

if _sys.argv and _sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] in ("ntkit", "ntkit.exe"):
    # The `ntkit` command: Ctrl-C while torch loads (seconds) ends quietly, like Ctrl-C later
    # on (ntkit.cli.main), instead of printing a long import traceback.
    from ._startup import quiet_interrupt as _quiet_interrupt

    _quiet_interrupt()

from . import bounds, budget, errors, predict, theory
from .budget import DEFAULT_MEMORY_BUDGET, Budget
from .data import corrupt_labels
from .empirical import EmpiricalNTKSource, empirical_kernel, empirical_nngp, empirical_ntk, ntk_vp
from .errors import NtkitError
from .hyperparameters import HyperparameterFit, fit_hyperparameters, log_marginal_likelihood
from .infinite import (
    GELU,
    ABReLU,
    Abs,
    Activation,
    Aggregate,
    AvgPool,
    Conv,
    ConvLocal,
    ConvTranspose,
    Cos,
    Dense,
    Dropout,
    Elementwise,
    Erf,
    Exp,
    ExpNormalized,
    FanInConcat,
    FanInProd,
    FanInSum,
    FanOut,
    Flatten,
    Gaussian,
    GlobalAvgPool,
    GlobalSelfAttention,
    GlobalSumPool,
    Hermite,
    Identity,
    ImageResize,
    Layer,
    LayerNorm,
    LeakyReLU,
    Monomial,
    Polynomial,
    Rbf,
    RectifiedMonomial,
    ReLU,
    Sigmoid,
    Sign,
    Sin,
    Softplus,
    SumPool,
    Tanh,
    mlp,
    parallel,
    serial,
)
from .kernel import Kernel
from .linearize import linearize
from .monte_carlo import monte_carlo_kernel
from .predict import (
    gp_posterior,
    gradient_descent,
    gradient_descent_mse,
    kernel_regression,
    loss_curve,
    max_learning_rate,
)

__version__ = "0.1.0"

# Heavier submodules load on first use: `nk.lab` (matplotlib), `nk.sklearn`
# (scikit-learn's estimators), `nk.linalg` (solvers, the optional Dask backend).
_LAZY = ("lab", "linalg", "sklearn")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name in ("NTKRegressor", "NTKClassifier"):
        from . import sklearn as _sk

        return getattr(_sk, name)
    raise AttributeError(f"module 'ntkit' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "GELU",
    "ABReLU",
    "Abs",
    "Activation",
    "Aggregate",
    "AvgPool",
    "Budget",
    "Conv",
    "ConvLocal",
    "ConvTranspose",
    "Cos",
    "Dense",
    "Dropout",
    "Elementwise",
    "EmpiricalNTKSource",
    "Erf",
    "Exp",
    "ExpNormalized",
    "FanInConcat",
    "FanInProd",
    "FanInSum",
    "FanOut",
    "Flatten",
    "Gaussian",
    "GlobalAvgPool",
    "GlobalSelfAttention",
    "GlobalSumPool",
    "Hermite",
    "HyperparameterFit",
    "Identity",
    "ImageResize",
    "Kernel",
    "Layer",
    "LayerNorm",
    "LeakyReLU",
    "Monomial",
    "NtkitError",
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
    "__version__",
    "bounds",
    "budget",
    "corrupt_labels",
    "empirical_kernel",
    "empirical_nngp",
    "empirical_ntk",
    "errors",
    "fit_hyperparameters",
    "gp_posterior",
    "gradient_descent",
    "gradient_descent_mse",
    "kernel_regression",
    "lab",
    "linalg",
    "linearize",
    "log_marginal_likelihood",
    "loss_curve",
    "max_learning_rate",
    "mlp",
    "monte_carlo_kernel",
    "ntk_vp",
    "parallel",
    "predict",
    "serial",
    "sklearn",
    "theory",
]
