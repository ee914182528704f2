"""ntkit.data.load_dataset: the embedded data sets used by the sklearn benchmark."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn import datasets

from ntkit.data import DATASETS, load_dataset
from ntkit.errors import DataError


@pytest.mark.parametrize(
    "name, shape, classes",
    [("breast_cancer", (569, 30), 2), ("digits", (1797, 64), 10), ("iris", (150, 4), 3),
     ("wine", (178, 13), 3)],
)
def test_sklearn_sets_match_sklearn_loaders(name, shape, classes):
    X, y = load_dataset(name)
    ref = getattr(datasets, f"load_{name}")()
    assert X.shape == shape and X.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_array_equal(X, ref.data)
    np.testing.assert_array_equal(y, ref.target)
    assert len(np.unique(y)) == classes


def test_mnist1d_offline_without_rng_side_effects(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    monkeypatch.chdir(tmp_path)  # nothing may be written to the working directory
    np.random.seed(123)
    random.seed(123)
    before_np, before_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    X, y = load_dataset("mnist1d")
    assert (np.random.random(), random.random()) == (before_np, before_py)
    assert X.shape == (5000, 40) and y.shape == (5000,)
    assert set(np.unique(y)) == set(range(10))
    assert np.all(np.isfinite(X))
    assert list(tmp_path.iterdir()) == []
    X2, _ = load_dataset("mnist1d")
    np.testing.assert_array_equal(X, X2)  # deterministic (seed 42 of mnist1d)


def test_returns_writable_copies():
    X, y = load_dataset("iris")
    X[0, 0] = -1e9
    y[0] = 7
    X2, y2 = load_dataset("iris")
    assert X2[0, 0] != -1e9 and y2[0] != 7


def test_unknown_name():
    assert "digits" in DATASETS
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("no_such_set")
