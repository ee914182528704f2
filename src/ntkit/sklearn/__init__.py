r"""scikit-learn estimators and kernels built on the infinite-width NTK / NNGP.

The architecture is a fully-connected network ``nk.mlp(depth, ...)`` in the NTK
parameterization (docs/DESIGN.md): ``depth`` Dense layers counting the readout, so ``depth=1`` is
the linear kernel ``<x, x'>/d`` (+ ``b_std²``) and ``depth=3`` has two hidden layers. The
widths do not matter: these are the infinite-width kernels.

* :class:`NTKRegressor` — kernel regression on the NTK (or NNGP), i.e. the prediction of an
  infinitely wide network trained by gradient flow on the MSE to time ``t``
  (``t=None``: to convergence, :func:`ntkit.predict.kernel_regression`; finite ``t``:
  :func:`ntkit.predict.gradient_descent_mse`). Multi-output targets are supported.
* :class:`NTKClassifier` — the same regression on one-hot (0/1) targets, predicting the
  class of the largest output.
* Both take ``kernel="precomputed"`` (like ``SVC``): ``fit(k(X, X), y)``,
  ``predict(k(X_test, X))`` — for any other ntkit kernel (convolutional, empirical).
* :class:`NTKClassifierCV` / :class:`NTKRegressorCV` — depth, ``fix_layers``, ridge (or the
  SVM's ``C``) and activation chosen by cross-validation, as ``GridSearchCV`` would, from one
  kernel recursion per activation (:mod:`ntkit.sklearn.search`).
* :func:`ntk_kernel` — a picklable callable ``f(X, Y) -> ndarray`` for
  ``sklearn.svm.SVC(kernel=ntk_kernel(depth=3))`` and other estimators taking a kernel
  callable (the NTK-SVM of Arora et al. 2020).
* :class:`NTK` — a :class:`sklearn.gaussian_process.kernels.Kernel` for
  ``GaussianProcessRegressor``, with hyperparameters ``W_std`` and ``b_std`` optimized in
  log-space; gradients come from torch autograd through the kernel recursion.

Inputs are not standardized here (as with every scikit-learn kernel method): put a
``StandardScaler`` in front, ``make_pipeline(StandardScaler(), NTKClassifier())``.
The input kernel is ``<x, x'>/d``, so standardized features give ``k(x, x) ≈ 1`` at the
input and the defaults ``W_std=√2`` (variance preserved by ReLU), ``b_std=0.1`` keep every
layer at that scale.

Example:
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from ntkit.sklearn import NTKClassifier
    >>> clf = make_pipeline(StandardScaler(), NTKClassifier(depth=3)).fit(X, y)
"""

from .estimators import NTKClassifier, NTKRegressor
from .gp_kernel import NTK
from .kernel_function import NTKKernelFunction, ntk_kernel
from .search import NTKClassifierCV, NTKRegressorCV

__all__ = ["NTK", "NTKClassifier", "NTKClassifierCV", "NTKKernelFunction", "NTKRegressor", "NTKRegressorCV",
           "ntk_kernel"]
