"""Two versions of ntkit's source on the floor's hot paths, timed in CPU seconds, one thread.

On a shared machine wall-clock times mostly measure the neighbours (a load average of 10 on
2 cores makes ``compare_versions.py``'s ratios swing 0.5–2×). This script times the process
CPU time (``time.process_time``) of each case with torch on one thread, which a busy
machine disturbs far less (cache and memory-bandwidth contention remain). Each case runs in
a fresh subprocess with ``PYTHONPATH`` set to one source tree, one warm-up call, then the
best of ``--repeats`` calls; versions alternate (A B, then B A, ...) for ``--rounds``
rounds, and the best over rounds is reported with the ratio new / old.

Cases: the infinite-width FC kernel (``arch.kernel``, dense walk, both dtypes), a CNTK with
global average pooling (flat-pair walk), the empirical NTK of an MLP (structured and
Jacobian methods: the block walk) and a cached ``KernelOperator`` (tiles, then products).

Reproduce:
    git archive <old-commit> src | tar -x -C /tmp/old
    .venv/bin/python benchmarks/cpu_time_compare.py --old /tmp/old/src --new src --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# The empirical NTK of a 3-layer MLP on 128 examples; width and method filled in per case.
EMPIRICAL_MLP = """
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, {width}), nn.ReLU(), nn.Linear({width}, {width}), nn.ReLU(),
                      nn.Linear({width}, 10)).double()
x = torch.randn(128, 64, dtype=torch.float64, generator=g)
def call():
    return nk.empirical_ntk(model, x, {method_args})
"""

CASES = {
    "fc 2000x64 float64": """
arch = nk.mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1)
x = torch.randn(2000, 64, dtype=torch.float64, generator=g)
def call():
    return arch.kernel(x, get="ntk")
""",
    "fc 2000x784 float32": """
arch = nk.mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1)
x = torch.randn(2000, 784, dtype=torch.float32, generator=g)
def call():
    return arch.kernel(x, get="ntk", dtype=torch.float32)
""",
    "cntk gap 40 float64": """
arch = nk.serial(nk.Conv(256, (3, 3), padding="same"), nk.ReLU(), nk.Conv(256, (3, 3), padding="same"),
                 nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(10))
x = torch.randn(40, 3, 8, 8, dtype=torch.float64, generator=g)
def call():
    return arch.kernel(x, get="ntk")
""",
    "empirical mlp 128 structured": EMPIRICAL_MLP.format(width=512, method_args='method="structured"'),
    "empirical mlp 128 jacobian": EMPIRICAL_MLP.format(
        width=256, method_args='method="jacobian", batch_size=32'),
    "operator 3000x40 cached, 20 products": """
arch = nk.mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1)
x = torch.randn(3000, 40, dtype=torch.float64, generator=g)
v = torch.randn(3000, 10, dtype=torch.float64, generator=g)
def call():
    op = nk.linalg.KernelOperator(arch, x, memory_budget="256MiB", threads=1)
    for _ in range(20):
        out = op @ v
    return out
""",
}

_WORKER = """
import json, time, torch
torch.set_num_threads(1)
import ntkit as nk
g = torch.Generator().manual_seed(0)
{case}
call()
best = float("inf")
for _ in range({repeats}):
    t = time.process_time(); call(); best = min(best, time.process_time() - t)
print(json.dumps({{"cpu_s": best}}))
"""


def run(tree: str, case: str, repeats: int) -> float | None:
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _WORKER.format(case=CASES[case], repeats=repeats)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        print(f"{case} failed under {tree}: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["cpu_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="old source tree (the folder holding ntkit/)")
    parser.add_argument("--new", required=True, help="new source tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    trees = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
    best: dict[tuple[str, str], float] = {}
    for r in range(args.rounds):
        for case in args.cases:
            for version in (["old", "new"] if r % 2 == 0 else ["new", "old"]):
                t = run(trees[version], case, args.repeats)
                if t is not None:
                    best[case, version] = min(t, best.get((case, version), float("inf")))
        print(f"best of {r + 1} round(s), CPU seconds on one thread; load average "
              f"{os.getloadavg()[0]:.1f}; ratio = new / old", flush=True)
        print(f"| {'case':<38} | {'old s':>8} | {'new s':>8} | {'ratio':>6} |")
        print(f"|{'-' * 40}|{'-' * 10}|{'-' * 10}|{'-' * 8}|")
        for case in args.cases:
            old, new = best.get((case, "old")), best.get((case, "new"))
            ratio = f"{new / old:6.3f}" if old and new else "-"
            print(f"| {case:<38} | {old or float('nan'):8.3f} | {new or float('nan'):8.3f} | {ratio:>6} |",
                  flush=True)


if __name__ == "__main__":
    main()
