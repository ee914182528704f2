"""The lab's view of a data set: a two-class subset, unit-norm inputs, labels ``±1``.

Every experiment of the lab works on a binary problem, as the lecture and Arora et al. 2019
do (their bound is stated for labels ``±1`` and inputs of unit norm):

1. the two most frequent classes are kept (ties go to the smaller label); on scikit-learn's
   digits these are the digits **3** (183 images, label ``+1``) and **1** (182, label
   ``−1``). A target with many distinct non-integer values (a regression target from a
   CSV/NPZ file) is split at its median instead: ``+1`` above, ``−1`` at or below;
2. the examples are shuffled with the run's seed and split: at most ``n_train`` examples and
   at most 70% of the subset train, at most ``n_test`` of the rest test;
3. inputs are centred by the training mean and each row is scaled to unit Euclidean norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data import load_dataset
from ..errors import DataError
from .config import Sizes

#: Fraction of the two-class subset that may be used for training.
TRAIN_FRACTION = 0.7


@dataclass(frozen=True)
class LabData:
    """A prepared two-class problem (see the module docstring).

    Attributes:
        name: the data set's name as given (``"digits"``, ``"csv:PATH"``, ...).
        classes: ``(label of +1, label of −1)`` as strings.
        x_train, x_test: ``(n, d)`` float64 tensors with unit-norm rows, on the run's device.
        y_train, y_test: ``(n,)`` float64 tensors of ``±1``.
        raw_train: ``(n_train, d)`` NumPy inputs before centring (for input variants).
        n_available: examples in the two-class subset.
    """

    name: str
    classes: tuple[str, str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    raw_train: np.ndarray
    n_available: int

    @property
    def d(self) -> int:
        return int(self.x_train.shape[1])

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (recorded in ``metrics.json`` and ``config.json``)."""
        return {
            "name": self.name,
            "classes": {"+1": self.classes[0], "-1": self.classes[1]},
            "n_available": self.n_available,
            "n_train": int(self.x_train.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "features": self.d,
            "train_positive_fraction": round(float((self.y_train > 0).double().mean()), 6),
        }

    def variant(self, kind: str, rng: np.random.Generator) -> torch.Tensor:
        """Training inputs transformed as in Zhang et al. 2017 (Fig. 1a), prepared as usual.

        ``"shuffled_pixels"``: one random permutation of the features, the same for every
        example; ``"random_pixels"``: an independent permutation per example;
        ``"gaussian"``: each feature drawn from a normal with that feature's mean and
        standard deviation. Returns ``(n_train, d)`` unit-norm rows on the data's device.
        """
        raw = self.raw_train
        if kind == "shuffled_pixels":
            out = raw[:, rng.permutation(raw.shape[1])]
        elif kind == "random_pixels":
            out = np.stack([row[rng.permutation(raw.shape[1])] for row in raw])
        elif kind == "gaussian":
            out = rng.normal(raw.mean(0), raw.std(0), size=raw.shape)
        else:  # pragma: no cover - internal
            raise ValueError(kind)
        x, _ = _unit_rows(out, out.mean(0), "a transformed input")
        return x.to(self.x_train.device)


def _unit_rows(x: np.ndarray, mean: np.ndarray, what: str) -> tuple[torch.Tensor, np.ndarray]:
    centred = x - mean
    norms = np.linalg.norm(centred, axis=1)
    scale = max(float(norms.max()), 1e-300)
    zero = norms <= 1e-12 * scale
    if zero.any():
        raise DataError(
            f"{int(zero.sum())} example(s) of {what} equal the mean input, so they cannot be scaled "
            "to unit norm; drop those rows or add informative features"
        )
    return torch.from_numpy(centred / norms[:, None]), norms


def binary_labels(y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """Pick the two-class subset: returns ``(index, labels ±1, (class of +1, class of −1))``."""
    y = np.asarray(y)
    integral = np.issubdtype(y.dtype, np.integer) or bool(np.all(y == np.round(y)))
    values, counts = np.unique(y, return_counts=True)
    if integral or values.size <= 2:
        if values.size < 2:
            raise DataError(
                f"the target of {name} has a single class ({values[0]!r}); the lab needs two classes"
            )
        order = np.lexsort((values, -counts))  # most frequent first, ties: smaller label first
        pos, neg = values[order[0]], values[order[1]]
        index = np.flatnonzero((y == pos) | (y == neg))
        labels = np.where(y[index] == pos, 1.0, -1.0)
        return index, labels, (_label(pos), _label(neg))
    median = float(np.median(y))
    labels = np.where(y > median, 1.0, -1.0)
    if np.unique(labels).size < 2:
        raise DataError(f"the target of {name} is constant; the lab needs two classes")
    return np.arange(y.size), labels, (f"> {median:.4g}", f"<= {median:.4g}")


def _label(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f == int(f) else f"{f:.4g}"


def prepare(
    dataset: str, sizes: Sizes, seed: int, device: torch.device, target: str | None = None
) -> LabData:
    """Load ``dataset`` and prepare the lab's two-class problem (module docstring)."""
    X, y = load_dataset(dataset, target=target)
    index, labels, classes = binary_labels(y, dataset)
    n = index.size
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1AB]))
    perm = rng.permutation(n)
    n_train = min(sizes.n_train, int(TRAIN_FRACTION * n))
    n_test = min(sizes.n_test, n - n_train)
    tr, te = index[perm[:n_train]], index[perm[n_train:n_train + n_test]]
    y_tr, y_te = labels[perm[:n_train]], labels[perm[n_train:n_train + n_test]]
    if n_train < 2 or n_test < 1 or np.unique(y_tr).size < 2:
        raise DataError(
            f"{dataset} has only {n} example(s) in its two largest classes; the lab needs at least "
            "30 (20 to train, 10 to test): use a larger data set"
        )
    raw_train = np.asarray(X[tr], dtype=np.float64)
    mean = raw_train.mean(0)
    x_train, _ = _unit_rows(raw_train, mean, f"the training set of {dataset}")
    x_test, _ = _unit_rows(np.asarray(X[te], dtype=np.float64), mean, f"the test set of {dataset}")
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float64).to(device)  # noqa: E731
    return LabData(
        name=dataset,
        classes=classes,
        x_train=x_train.to(device),
        y_train=as_t(y_tr),
        x_test=x_test.to(device),
        y_test=as_t(y_te),
        raw_train=raw_train,
        n_available=int(n),
    )
