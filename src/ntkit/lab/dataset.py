"""The lab's view of a data set: a two-class subset, standardized inputs on the sphere, labels ``±1``.

Every experiment of the lab works on a binary problem, as the lecture and Arora et al. 2019
do (their bound is stated for labels ``±1`` and inputs of unit norm):

1. two classes are kept: ``classes=("A", "B")`` (``--classes A,B``; ``A`` becomes ``+1``)
   or, by default, the two most frequent classes (ties go to the smaller label); on
   scikit-learn's digits these are the digits **3** (183 images, label ``+1``) and **1**
   (182, label ``−1``). Class names are compared as text: ``3`` for the integer label 3,
   ``yes`` for a CSV/NPZ target holding class names. A target with many distinct
   non-integer values (a regression target from a CSV/NPZ file) is split at its median
   instead: ``+1`` above, ``−1`` at or below;
2. the examples are shuffled with the run's seed and split: at most ``n_train`` examples and
   at most 70% of the subset train, at most ``n_test`` of the rest test;
3. inputs are **standardized** with statistics of the training set (``standardize=True``,
   the default; ``--no-standardize`` only centres each input): tabular *features* each to
   mean 0 and variance 1 (a constant feature to 0); *images* (``digits``, ``mnist``,
   ``mnist1d``, an NPZ ``x`` of rank ≥ 3, or flat rows with ``image_shape``) by one mean and
   standard deviation per channel over all pixels, because scaling every pixel on its own
   would blow up the nearly constant border pixels and change what the image looks like;
4. each example is then scaled to unit Euclidean norm — inputs on the sphere, as the theory
   of the lecture and of Arora et al. 2019 assumes.

Images keep their shape (:attr:`LabData.image_shape`, ``(C, H, W)`` or ``(C, L)``), so the
lab's CNN (``--arch cnn``) sees them as images; everything else is called *features* in the
report, images *pixels*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import load_dataset
from ..errors import DataError
from .config import Sizes

#: Fraction of the two-class subset that may be used for training.
TRAIN_FRACTION = 0.7

#: The image shape ``(C, H, W)`` / ``(C, L)`` of the embedded image data sets.
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "mnist1d": (1, 40)}


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become the lab's inputs (module docstring, steps 3–4).

    ``mean`` and ``scale`` broadcast against ``(n, d)`` rows: per feature, or per channel
    repeated over that channel's pixels.
    """

    standardize: bool
    per: str  # "feature" | "channel"
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, raw: np.ndarray, standardize: bool, image_shape: tuple[int, ...] | None) -> Preprocessing:
        if image_shape is None:
            mean = raw.mean(0)
            std = raw.std(0)
            scale = np.where(std > 1e-12 * max(float(np.abs(raw).max()), 1e-300), std, np.inf)
            per = "feature"
        else:
            c = image_shape[0]
            chans = raw.reshape(raw.shape[0], c, -1)
            mean_c = chans.mean(axis=(0, 2))
            std_c = chans.std(axis=(0, 2))
            std_c = np.where(std_c > 0, std_c, 1.0)
            reps = chans.shape[2]
            mean, scale = np.repeat(mean_c, reps), np.repeat(std_c, reps)
            per = "channel"
            if not standardize:
                mean = raw.mean(0)
        if not standardize:
            scale = np.ones_like(mean)
            per = "feature"
        return cls(bool(standardize), per, mean, scale)

    def __call__(self, raw: np.ndarray, what: str) -> torch.Tensor:
        z = (raw - self.mean) / self.scale
        return _unit_rows(z, what)

    def describe(self) -> str:
        if not self.standardize:
            return "centred (not standardized), unit norm"
        if self.per == "channel":
            return "standardized per channel, unit norm"
        return "standardized per feature, unit norm"


@dataclass(frozen=True)
class LabData:
    """A prepared two-class problem (see the module docstring).

    Attributes:
        name: the data set's name as given (``"digits"``, ``"csv:PATH"``, ...).
        classes: ``(label of +1, label of −1)`` as strings.
        x_train, x_test: ``(n, d)`` float64 tensors with unit-norm rows, on the run's device.
        y_train, y_test: ``(n,)`` float64 tensors of ``±1``.
        raw_train: ``(n_train, d)`` NumPy inputs before preprocessing (for input variants).
        n_available: examples in the two-class subset.
        image_shape: ``(C, H, W)`` or ``(C, L)`` when the inputs are images, else ``None``.
        prep: the preprocessing fitted on the training set.
    """

    name: str
    classes: tuple[str, str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    raw_train: np.ndarray
    n_available: int
    image_shape: tuple[int, ...] | None = None
    prep: Preprocessing | None = field(default=None, repr=False)

    @property
    def d(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def is_image(self) -> bool:
        return self.image_shape is not None

    @property
    def unit(self) -> str:
        """What one input coordinate is called in the report: ``"pixel"`` or ``"feature"``."""
        return "pixel" if self.is_image else "feature"

    def as_images(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, d)`` rows as ``(n, *image_shape)`` images (error for tabular data)."""
        if self.image_shape is None:
            raise DataError(
                f"{self.name} holds tabular features, not images; give --image-shape C,H,W "
                "(or H,W) when its rows are flattened images"
            )
        return x.reshape(x.shape[0], *self.image_shape)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (recorded in ``metrics.json`` and ``config.json``)."""
        return {
            "name": self.name,
            "classes": {"+1": self.classes[0], "-1": self.classes[1]},
            "n_available": self.n_available,
            "n_train": int(self.x_train.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "features": self.d,
            "inputs": "images" if self.is_image else "features",
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "preprocessing": self.prep.describe() if self.prep is not None else "centred, unit norm",
            "train_positive_fraction": round(float((self.y_train > 0).double().mean()), 6),
        }

    def variant(self, kind: str, rng: np.random.Generator) -> torch.Tensor:
        """Training inputs transformed as in Zhang et al. 2017 (Fig. 1a), prepared as usual.

        ``"shuffled_pixels"``: one random permutation of the pixels (features), the same for
        every example; ``"random_pixels"``: an independent permutation per example;
        ``"gaussian"``: each pixel (feature) drawn from a normal with its mean and standard
        deviation over the training set. The result is standardized and put on the sphere
        like the real inputs (statistics of the transformed set). Returns ``(n_train, d)``
        unit-norm rows on the data's device.
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
        standardize = True if self.prep is None else self.prep.standardize
        prep = Preprocessing.fit(out, standardize, self.image_shape)
        return prep(out, "a transformed input").to(self.x_train.device)


def _unit_rows(z: np.ndarray, what: str) -> torch.Tensor:
    norms = np.linalg.norm(z, axis=1)
    scale = max(float(norms.max()), 1e-300)
    zero = norms <= 1e-12 * scale
    if zero.any():
        raise DataError(
            f"{int(zero.sum())} example(s) of {what} equal the mean input, so they cannot be scaled "
            "to unit norm; drop those rows or add informative features"
        )
    return torch.from_numpy(z / norms[:, None])


#: Unit rows whose inner product is at least this are duplicates: their kernel rows are equal,
#: so every kernel matrix on the training set is singular (the bound's ``H⁻¹``, the solves).
DUPLICATE_COSINE = 1.0 - 1e-12


def _check_no_duplicates(x_train: torch.Tensor, rows: np.ndarray, dataset: str) -> None:
    """DataError naming the first duplicated training examples (by row of the data file)."""
    gram = x_train @ x_train.T
    gram.fill_diagonal_(0.0)
    i, j = np.nonzero(np.triu(gram.numpy() >= DUPLICATE_COSINE, 1))
    if i.size:
        pairs = ", ".join(f"{int(rows[a])} and {int(rows[b])}" for a, b in zip(i[:3], j[:3]))
        raise DataError(
            f"{dataset} has {i.size} pair(s) of training examples that are identical after "
            f"centring and scaling to unit norm (rows {pairs}{', ...' if i.size > 3 else ''}, "
            "counted from 0 in the data); their kernel rows are equal, so the kernel matrix is "
            "singular. Remove the duplicated rows from the data"
        )


def binary_labels(
    y: np.ndarray, name: str, classes: tuple[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """Pick the two-class subset: returns ``(index, labels ±1, (class of +1, class of −1))``.

    ``classes``: the two class names to keep (first one ``+1``), compared with the labels'
    text (:func:`class_name`); ``None``: the two most frequent (module docstring).

    Raises:
        DataError: a single class, an unknown class name, the same class twice, or
            ``classes`` given for a continuous (regression) target.
    """
    y = np.asarray(y)
    text = y.dtype.kind in "USO"
    if text:
        y = y.astype(str)
    integral = text or np.issubdtype(y.dtype, np.integer) or bool(np.all(y == np.round(y)))
    values, counts = np.unique(y, return_counts=True)
    if integral or values.size <= 2:
        if values.size < 2:
            raise DataError(
                f"the target of {name} has a single class ({values[0]!r}); the lab needs two classes"
            )
        names = [class_name(v) for v in values]
        if classes is None:
            order = np.lexsort((np.arange(values.size), -counts))  # most frequent; ties: smaller
            pos, neg = values[order[0]], values[order[1]]
        else:
            picked = []
            for c in classes:
                if str(c).strip() not in names:
                    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
                    raise DataError(
                        f"class {c!r} is not in the target of {name} (classes: {shown}); "
                        "choose two of them with --classes A,B"
                    )
                picked.append(values[names.index(str(c).strip())])
            if class_name(picked[0]) == class_name(picked[1]):
                raise DataError(f"--classes names {classes[0]!r} twice; choose two different classes")
            pos, neg = picked
        index = np.flatnonzero((y == pos) | (y == neg))
        labels = np.where(y[index] == pos, 1.0, -1.0)
        return index, labels, (class_name(pos), class_name(neg))
    if classes is not None:
        raise DataError(
            f"the target of {name} is continuous (a regression target), so it has no classes to "
            "choose; leave out --classes (the lab splits it at its median)"
        )
    median = float(np.median(y))
    labels = np.where(y > median, 1.0, -1.0)
    if np.unique(labels).size < 2:
        raise DataError(f"the target of {name} is constant; the lab needs two classes")
    return np.arange(y.size), labels, (f"> {median:.4g}", f"<= {median:.4g}")


def class_name(v: Any) -> str:
    """A class label as text: ``"3"`` for 3 or 3.0, ``"0.5"``, ``"yes"``."""
    if isinstance(v, (str, np.str_)):
        return str(v)
    f = float(v)
    return str(int(f)) if f == int(f) else f"{f:.4g}"


def parse_classes(text: str | tuple[str, str] | list[str] | None) -> tuple[str, str] | None:
    """``"A,B"`` (or a pair) as two class names; ``None`` stays ``None``."""
    if text is None:
        return None
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else map(str, text))]
    if len(parts) != 2 or not all(parts):
        raise DataError(f"--classes takes two class names separated by a comma, e.g. 3,8; got {text!r}")
    return parts[0], parts[1]


def parse_image_shape(text: str | tuple[int, ...] | list[int] | None) -> tuple[int, ...] | None:
    """``"H,W"``, ``"C,H,W"`` or ``"L"`` (or a tuple) as ``(C, H, W)`` / ``(C, L)``."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or any(p < 1 for p in parts):
        raise DataError(f"--image-shape takes H,W or C,H,W (positive integers), e.g. 28,28; got {text!r}")
    return tuple(parts) if len(parts) == 3 else (1, *parts)


def _image_shape(dataset: str, d: int, given: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if given is not None:
        if int(np.prod(given)) != d:
            raise DataError(
                f"--image-shape {','.join(map(str, given))} holds {int(np.prod(given))} values but "
                f"{dataset} has {d} per example; give a shape whose product is {d}"
            )
        return given
    if dataset in IMAGE_SHAPES:
        return IMAGE_SHAPES[dataset]
    if dataset.startswith("npz:"):
        try:
            with np.load(dataset[4:], allow_pickle=False) as archive:
                shape = tuple(int(k) for k in archive["x"].shape[1:])
        except Exception:
            return None
        if len(shape) == 2:  # (n, H, W): one channel
            return (1, *shape)
        if len(shape) in (3,):  # (n, C, H, W)
            return shape
    return None


def prepare(
    dataset: str,
    sizes: Sizes,
    seed: int,
    device: torch.device,
    target: str | None = None,
    *,
    classes: tuple[str, str] | str | None = None,
    standardize: bool = True,
    image_shape: tuple[int, ...] | str | None = None,
) -> LabData:
    """Load ``dataset`` and prepare the lab's two-class problem (module docstring).

    Raises:
        DataError: unreadable data, unknown classes, a bad image shape, too few examples.
    """
    X, y = load_dataset(dataset, target=target)
    wanted = parse_classes(classes)
    shape = _image_shape(dataset, X.shape[1], parse_image_shape(image_shape))
    index, labels, names = binary_labels(y, dataset, wanted)
    n = index.size
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1AB]))
    perm = rng.permutation(n)
    n_train = min(sizes.n_train, int(TRAIN_FRACTION * n))
    n_test = min(sizes.n_test, n - n_train)
    tr, te = index[perm[:n_train]], index[perm[n_train:n_train + n_test]]
    y_tr, y_te = labels[perm[:n_train]], labels[perm[n_train:n_train + n_test]]
    if n_train < 2 or n_test < 1 or np.unique(y_tr).size < 2:
        which = "its two largest classes" if wanted is None else f"the classes {names[0]} and {names[1]}"
        raise DataError(
            f"{dataset} has only {n} example(s) in {which}; the lab needs at least "
            "30 (20 to train, 10 to test): use a larger data set"
        )
    raw_train = np.asarray(X[tr], dtype=np.float64)
    prep = Preprocessing.fit(raw_train, standardize, shape)
    x_train = prep(raw_train, f"the training set of {dataset}")
    x_test = prep(np.asarray(X[te], dtype=np.float64), f"the test set of {dataset}")
    _check_no_duplicates(x_train, tr, dataset)
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float64).to(device)  # noqa: E731
    return LabData(
        name=dataset,
        classes=names,
        x_train=x_train.to(device),
        y_train=as_t(y_tr),
        x_test=x_test.to(device),
        y_test=as_t(y_te),
        raw_train=raw_train,
        n_available=int(n),
        image_shape=shape,
        prep=prep,
    )
