"""Quadrature activations (Tanh, Sigmoid, GELU, Softplus): time and accuracy, before/after.

Net ``Dense(512, W_std, b_std=0.1) - act - Dense(1)`` on ``n`` standard-normal inputs in
``d = 64`` (pre-activation variance ``≈ W_std²``), NNGP + NTK with ``x2=None``, float64. Each
case runs in a fresh subprocess; with ``--compare-src`` the base checkout's ntkit (its default
quadrature) runs alternately with this one. Accuracy: the largest error over the first
``--check`` rows (all their pairs), relative to the largest kernel entry, against this
checkout's quadrature at degree 24 per panel (which agrees with independent nested adaptive
quadrature to ~1e-15; tests/test_activation_reference.py).

Reproduce:
    git archive <base-commit> src | tar -x -C /tmp/ntkit_base
    .venv/bin/python benchmarks/quadrature_activations.py --compare-src /tmp/ntkit_base/src --n 4000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASE = """
import json, time, torch
import ntkit as nk
torch.set_num_threads({threads})
x = torch.randn({n}, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
arch = nk.serial(nk.Dense(512, W_std={w}, b_std=0.1), getattr(nk, "{act}")(), nk.Dense(1))
t0, c0 = time.perf_counter(), time.process_time()
k = arch.kernel(x)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
c = {check}
out = {{"seconds": seconds, "cpu": cpu, "nngp": k.nngp[:c, :c].tolist(), "ntk": k.ntk[:c, :c].tolist()}}
print(json.dumps(out))
"""

REFERENCE = """
import json, torch
import ntkit as nk
x = torch.randn({n}, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)[:{check}]
arch = nk.serial(nk.Dense(512, W_std={w}, b_std=0.1), getattr(nk, "{act}")(degree=24), nk.Dense(1))
k = arch.kernel(x)
print(json.dumps({{"nngp": k.nngp.tolist(), "ntk": k.ntk.tolist()}}))
"""


def run(code: str, src: Path, **params) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code).format(**params)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def error(res: dict, ref: dict) -> float:
    import numpy as np

    worst = 0.0
    for key in ("nngp", "ntk"):
        a, b = np.asarray(res[key]), np.asarray(ref[key])
        worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--w", type=float, nargs="+", default=[2**0.5, 10.0])
    parser.add_argument("--act", nargs="+", default=["Tanh", "Sigmoid", "GELU", "Softplus"])
    parser.add_argument("--check", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare-src", type=Path)
    args = parser.parse_args()
    srcs = [("this", ROOT / "src")]
    if args.compare_src is not None:
        srcs.insert(0, ("base", args.compare_src))
    # CPU seconds beside wall seconds: on a shared machine the wall time mostly measures the load.
    print(f"{'act':>9} {'W_std':>6} {'q≈':>6} | "
          + " | ".join(f"{s:>4} s {s:>4} cpu {s:>4} err" for s, _ in srcs), flush=True)
    for act in args.act:
        for w in args.w:
            params = dict(n=args.n, w=w, act=act, check=args.check, threads=args.threads)
            ref = run(REFERENCE, ROOT / "src", **params)
            cells = []
            for _, src in srcs:
                res = run(CASE, src, **params)
                cells.append(f"{res['seconds']:6.1f} {res['cpu']:8.1f} {error(res, ref):8.1e}")
            print(f"{act:>9} {w:6.2f} {w * w:6.1f} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
