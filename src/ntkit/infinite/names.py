"""Activations by name: ``"relu"``, ``"gelu"``, ``"sin"``, ``"hermite(3)"``, ``"erf(a=2, b=0.5)"``.

Used by ``nk.mlp`` and the scikit-learn estimators (``nk.sklearn``). A name may carry the
layer's arguments in call syntax; they are read with :func:`ast.literal_eval` (numbers and
lists only, nothing is executed).
"""

from __future__ import annotations

import ast
from collections.abc import Callable

from ..errors import ParameterError
from .activations import GELU, Abs, Erf, Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from .custom import Elementwise
from .exponential import Cos, Exp, ExpNormalized, Gaussian, Rbf, Sin
from .layers import Layer
from .polynomial import Hermite, Monomial, Polynomial, RectifiedMonomial, Sign

BY_NAME: dict[str, Callable[..., Layer]] = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "abs": Abs,
    "erf": Erf,
    "identity": Identity,
    "linear": Identity,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "gelu": GELU,
    "softplus": Softplus,
    "sin": Sin,
    "cos": Cos,
    "rbf": Rbf,
    "exp": Exp,
    "gaussian": Gaussian,
    "exp_normalized": ExpNormalized,
    "sign": Sign,
    "hermite": Hermite,
    "monomial": Monomial,
    "rectified_monomial": RectifiedMonomial,
    "polynomial": Polynomial,
}


def activation_from_name(name: str | Layer) -> Layer:
    """A layer from a name such as ``"relu"`` or ``"hermite(3)"`` (or the layer itself).

    Raises:
        ParameterError: for an unknown name or arguments that are not literals.
    """
    if isinstance(name, Layer):
        return name
    text = str(name).strip()
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        tree = None
    args, kwargs = [], {}
    if isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name):
        key = tree.func.id.lower()
        try:
            args = [ast.literal_eval(a) for a in tree.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in tree.keywords}
        except ValueError:
            raise ParameterError(f"activation arguments must be numbers or lists, got {name!r}") from None
    elif isinstance(tree, ast.Name):
        key = tree.id.lower()
    else:
        key = text.lower()
    if key not in BY_NAME:
        raise ParameterError(
            f"unknown activation {name!r}; use one of {', '.join(sorted(BY_NAME))} (arguments in "
            "call syntax, e.g. 'hermite(3)'), or pass a layer"
        )
    try:
        return BY_NAME[key](*args, **kwargs)
    except TypeError as err:
        raise ParameterError(f"bad arguments for activation {name!r}: {err}") from None


__all__ = ["BY_NAME", "Elementwise", "activation_from_name"]
