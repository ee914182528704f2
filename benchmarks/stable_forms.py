"""Cost of the stable activation forms (issue 13): FC kernel, base checkout vs this one, in one process.

Both versions of ntkit are imported side by side (the base copied under the package name
``ntkit_old``), then ``nk.mlp(3, 512, "relu", W_std=√2, b_std=0.1).kernel(x)`` (the FC
benchmark's net, ``x2=None``, NNGP + NTK, d = 64) is timed alternately, ``--rounds`` times
each, on one thread, in CPU time (``time.process_time``), which a loaded machine disturbs
less than wall-clock time. Prints medians and minima and this/base.

Reproduce:
    git archive <base-commit> src | tar -x -C /tmp/ntkit_base
    mkdir -p /tmp/ntkit_oldpkg && cp -r /tmp/ntkit_base/src/ntkit /tmp/ntkit_oldpkg/ntkit_old
    PYTHONPATH=src .venv/bin/python benchmarks/stable_forms.py --old /tmp/ntkit_oldpkg --n 2000
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="folder holding the base package as ntkit_old")
    parser.add_argument("--n", type=int, nargs="+", default=[2000])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    sys.path.insert(0, args.old)
    old, new = importlib.import_module("ntkit_old"), importlib.import_module("ntkit")
    torch.set_num_threads(1)
    for n in args.n:
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(n, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
            archs = {k: m.mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1)
                     for k, m in (("base", old), ("this", new))}
            for a in archs.values():
                a.kernel(x, dtype=dtype)
            times: dict[str, list[float]] = {"base": [], "this": []}
            for r in range(args.rounds):
                for k in ("base", "this") if r % 2 == 0 else ("this", "base"):
                    t0 = time.process_time()
                    archs[k].kernel(x, dtype=dtype)
                    times[k].append(time.process_time() - t0)
            b, t = statistics.median(times["base"]), statistics.median(times["this"])
            bm, tm = min(times["base"]), min(times["this"])
            print(f"n={n} {str(dtype)[6:]}: median base {b:.3f}s this {t:.3f}s this/base {t / b:.3f} | "
                  f"min base {bm:.3f}s this {tm:.3f}s this/base {tm / bm:.3f}", flush=True)


if __name__ == "__main__":
    main()
