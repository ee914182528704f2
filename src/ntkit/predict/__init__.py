"""Predictions of training from a kernel: what gradient descent does to a wide network.

Works on any kernel matrices — infinite-width ones from ``arch.kernel(...)`` or empirical
NTKs — as torch tensors or NumPy arrays (computed in float64 by default; results are torch
tensors on the inputs' device). Targets ``y_train`` are ``(n,)`` or ``(n, o)``; outputs keep
that layout. Kernels are ``(n, n)`` (shared by all outputs) or, except in
:func:`gp_posterior`, multi-output ``(n, n, o, o)``.

Convention: the training loss is the mean over examples, ``(1/2n)‖f − y‖²``, so gradient
flow reads ``df/dt = −(1/n) H (f − y)`` and GD with step ``η`` multiplies the residual by
``I − ηH/n`` (Jacot et al. 2018; Lee et al. 2019, "Wide neural networks of any depth evolve
as linear models under gradient descent").

* :func:`kernel_regression` — the ``t = ∞`` predictor ``f_0(x) + k(x, X) H⁻¹ (y − f_0(X))``;
* :func:`gradient_descent_mse` — the whole GD / gradient-flow trajectory in closed form;
* :func:`loss_curve` — the training loss from the spectrum (Arora et al. 2019, Thm 4.1);
* :func:`gp_posterior` — NNGP posterior and NTK-GP (Lee et al. 2019, eqs. 15–16);
* :func:`gradient_descent` — any differentiable loss by integrating the function-space ODE;
* :func:`max_learning_rate` — ``2n / λ_max``, the discrete-GD stability limit.
"""

from .dynamics import GradientDescentMSE, LossCurve, gradient_descent_mse, loss_curve
from .gp import GPPosterior, gp_posterior
from .ode import GradientDescentODE, ODEPrediction, gradient_descent
from .regression import kernel_regression, max_learning_rate

__all__ = [
    "GPPosterior",
    "GradientDescentMSE",
    "GradientDescentODE",
    "LossCurve",
    "ODEPrediction",
    "gp_posterior",
    "gradient_descent",
    "gradient_descent_mse",
    "kernel_regression",
    "loss_curve",
    "max_learning_rate",
]
