"""Data sets that ship inside installed packages — no network at run time.

:func:`load_dataset` returns ``(X, y)`` as NumPy arrays for a small set of named data sets:

============== ======== ========== ======= ==============================================
name           examples features   classes source
============== ======== ========== ======= ==============================================
breast_cancer  569      30         2       ``sklearn.datasets.load_breast_cancer``
digits         1797     64         10      ``sklearn.datasets.load_digits`` (8×8 images)
iris           150      4          3       ``sklearn.datasets.load_iris``
wine           178      13         3       ``sklearn.datasets.load_wine``
mnist1d        5000     40         10      ``mnist1d`` (Greydanus 2020), generated offline
============== ======== ========== ======= ==============================================

``mnist1d`` is generated from its templates with the package's default arguments
(``mnist1d.data.make_dataset(get_dataset_args())``, seed 42): nothing is downloaded and
nothing is written to disk. Its own train/test split (4000/1000) is concatenated, train
first. The generator reseeds Python's and NumPy's global random state; :func:`load_dataset`
restores both afterwards, so loading the data has no side effect on the caller's RNG.
"""

from __future__ import annotations

import random
from functools import cache

import numpy as np

from .errors import DataError

#: Names accepted by :func:`load_dataset`.
DATASETS = ("breast_cancer", "digits", "iris", "mnist1d", "wine")


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a named data set that ships with an installed package.

    Args:
        name: one of :data:`DATASETS` (``"breast_cancer"``, ``"digits"``, ``"iris"``,
            ``"mnist1d"``, ``"wine"``); see the module docstring for sizes and sources.

    Returns:
        ``(X, y)``: ``X`` float64 of shape ``(n, d)``, ``y`` int64 class labels ``0..C-1``
        of shape ``(n,)``. Fresh copies: callers may modify them.

    Raises:
        DataError: unknown name, or ``mnist1d`` requested without the ``mnist1d`` package.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; use one of {', '.join(DATASETS)}")
    X, y = _cached(name)
    return X.copy(), y.copy()


@cache
def _cached(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist1d":
        X, y = _make_mnist1d()
    else:
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")()
        X, y = bunch.data, bunch.target
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.int64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def _make_mnist1d() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise DataError(
            "the mnist1d data set needs the mnist1d package: pip install 'ntkit[mnist1d]'"
        ) from err
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    X = np.concatenate([data["x"], data["x_test"]])
    y = np.concatenate([data["y"], data["y_test"]])
    return X, y
