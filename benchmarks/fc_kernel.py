"""Fully-connected infinite-width kernel: ntkit vs neural-tangents, side by side.

Depth-3 ReLU MLP ``Dense(512)-ReLU-Dense(512)-ReLU-Dense(1)``, ``W_std=√2, b_std=0.1``,
NNGP + NTK with ``x2=None``. Each case runs in a fresh subprocess (clean peak RSS),
alternating ntkit and neural-tangents, and reports the median of ``--repeats`` timings
(after one warm-up call, which for neural-tangents includes jit compilation) and the peak
RSS above the process's RSS once the inputs exist.

Reproduce:
    bash scripts/setup_nt_venv.sh          # once: .venv-nt with jax 0.4.25 + neural-tangents
    .venv/bin/python benchmarks/fc_kernel.py                      # full grid
    .venv/bin/python benchmarks/fc_kernel.py --n 8000 --d 784 --dtype float64

Before/after a change of ntkit itself (``--compare-src``: another checkout's ``src``; the two
are run alternately, ``--rounds`` times each, in fresh subprocesses; medians and new/old):
    git archive <base-commit> src | tar -x -C /tmp/ntkit_base
    .venv/bin/python benchmarks/fc_kernel.py --compare-src /tmp/ntkit_base/src --n 2000 4000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NT_PYTHON = ROOT / ".venv-nt" / "bin" / "python"

_COMMON = """
import json, resource, statistics, sys, time
import numpy as np
import psutil
n, d, dtype, repeats = {n}, {d}, "{dtype}", {repeats}
x = np.random.default_rng(0).standard_normal((n, d)).astype(dtype)
"""

NTKIT_CASE = _COMMON + """
import torch
import ntkit as nk
torch.set_num_threads({threads})
arch = nk.mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1)
xt = torch.from_numpy(x)
base = psutil.Process().memory_info().rss
def call():
    k = arch.kernel(xt, dtype=getattr(torch, dtype))
    return float(k.ntk[0, 0]) + float(k.nngp[-1, -1])
"""

NT_CASE = _COMMON + """
import jax
jax.config.update("jax_enable_x64", dtype == "float64")
import jax.numpy as jnp
from neural_tangents import stax
_, _, kernel_fn = stax.serial(
    stax.Dense(512, W_std=2**0.5, b_std=0.1), stax.Relu(),
    stax.Dense(512, W_std=2**0.5, b_std=0.1), stax.Relu(),
    stax.Dense(1, W_std=2**0.5, b_std=0.1))
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
xj = jnp.asarray(x)
base = psutil.Process().memory_info().rss
def call():
    k = kernel_fn(xj, None, get=("nngp", "ntk"))
    k.ntk.block_until_ready()
    return float(k.ntk[0, 0]) + float(k.nngp[-1, -1])
"""

_TIMING = """
call()  # warm-up (jit for neural-tangents)
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); call(); times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"seconds": statistics.median(times), "peak_above_inputs": peak - base}}))
"""


def run_case(python: Path, template: str, src: Path | None = None, **params) -> dict | None:
    code = textwrap.dedent(template + _TIMING).format(**params)
    env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--d", type=int, nargs="+", default=[64, 784])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    parser.add_argument("--compare-src", type=Path, help="ntkit src of a base checkout: before/after")
    parser.add_argument("--rounds", type=int, default=5, help="alternations with --compare-src")
    args = parser.parse_args()
    if args.compare_src is not None:
        compare(args)
        return
    have_nt = NT_PYTHON.exists() and not args.no_nt
    if not have_nt:
        print("neural-tangents venv not found (bash scripts/setup_nt_venv.sh); ntkit only")
    print(f"{'n':>6} {'d':>4} {'dtype':>8} | {'ntkit s':>8} {'peak GB':>8} {'budget GB':>9} |"
          f" {'NT s':>8} {'NT GB':>7} | {'ratio':>6}")
    for dtype in args.dtype:
        for d in args.d:
            for n in args.n:
                params = dict(n=n, d=d, dtype=dtype, repeats=args.repeats, threads=args.threads)
                ours = run_case(Path(sys.executable), NTKIT_CASE, **params)
                theirs = run_case(NT_PYTHON, NT_CASE, **params) if have_nt else None
                budget = 3 * n * n * 8 / 1e9
                line = f"{n:>6} {d:>4} {dtype:>8} | "
                if "error" in ours:
                    line += f"ntkit failed: {ours['error']}"
                else:
                    line += (f"{ours['seconds']:8.3f} {ours['peak_above_inputs'] / 1e9:8.2f} "
                             f"{budget:9.2f} | ")
                if theirs is None:
                    line += f"{'-':>8} {'-':>7} | {'-':>6}"
                elif "error" in theirs:
                    line += f"NT failed: {theirs['error'][:40]}"
                else:
                    ratio = ours["seconds"] / theirs["seconds"] if "seconds" in ours else float("nan")
                    line += (f"{theirs['seconds']:8.3f} {theirs['peak_above_inputs'] / 1e9:7.2f} | "
                             f"{ratio:6.2f}")
                print(line, flush=True)


def compare(args) -> None:
    """This checkout's ntkit against ``args.compare_src``, alternating, medians of rounds."""
    print(f"{'n':>6} {'d':>4} {'dtype':>8} | {'base s':>8} {'this s':>8} | {'this/base':>9}")
    for dtype in args.dtype:
        for d in args.d:
            for n in args.n:
                params = dict(n=n, d=d, dtype=dtype, repeats=args.repeats, threads=args.threads)
                base, this = [], []
                for _ in range(args.rounds):
                    for src, out in ((args.compare_src, base), (ROOT / "src", this)):
                        res = run_case(Path(sys.executable), NTKIT_CASE, src, **params)
                        if "error" in res:
                            sys.exit(f"{src}: {res['error']}")
                        out.append(res["seconds"])
                b, t = statistics.median(base), statistics.median(this)
                print(f"{n:>6} {d:>4} {dtype:>8} | {b:8.3f} {t:8.3f} | {t / b:9.3f}", flush=True)


if __name__ == "__main__":
    main()
