"""Transformer block kernel: ntkit vs neural-tangents, side by side (issue 16).

``Dense(256) - LayerNorm(channels) - [GlobalSelfAttention(256, 256, 256, 4 heads, linear
scaling, softmax) + identity] - LayerNorm(channels) - Dense(256) - ReLU - Dense(256) -
GlobalAvgPool - Dense(1)`` on ``n`` random sequences of 8 features and length ``T``
(standard normal, seed 0), NNGP + NTK with ``x2=None``. ntkit takes ``(n, 8, T)``
(channels first), neural-tangents ``(n, T, 8)`` (its default NWC layout).

Each case runs in a fresh subprocess (clean peak RSS): ntkit, then neural-tangents, ``--alternate``
times (the median of the alternations and each one's ratio are reported). Reported:
the median of ``--repeats`` timings after one warm-up call (neural-tangents' warm-up includes
jit compilation, not timed; ntkit warms up on 4 sequences), the peak resident size of the
process (``ru_maxrss``: Python, torch/jax, inputs and outputs included) and, when both ran,
the largest relative difference of the two NTK matrices (a cross-check of the kernels).
ntkit runs with ``OMP_WAIT_POLICY=PASSIVE`` and its default memory budget; the
neural-tangents process gets an address-space cap (``--nt-memory-gb``) so that a case too
large fails with its out-of-memory error instead of waking the OOM killer.

Reproduce:
    bash scripts/setup_nt_venv.sh                  # once: .venv-nt with jax 0.4.25 + neural-tangents
    .venv/bin/python benchmarks/attention.py       # T in {16, 64}, n = 200, both dtypes
    .venv/bin/python benchmarks/attention.py --length 64 --dtype float64 --repeats 1 --no-nt
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NT_PYTHON = ROOT / ".venv-nt" / "bin" / "python"

_COMMON = """
import json, resource, statistics, sys, time
import numpy as np
n, length, dtype, repeats, out_path = {n}, {length}, "{dtype}", {repeats}, "{out_path}"
x = np.random.default_rng(0).standard_normal((n, 8, length)).astype(dtype)   # (n, C, T)
"""

NTKIT_CASE = _COMMON + """
import torch
import ntkit as nk
torch.set_num_threads({threads})
att = nk.GlobalSelfAttention(256, 256, 256, 4, linear_scaling=True, attention_mechanism="softmax")
arch = nk.serial(nk.Dense(256), nk.LayerNorm(axis=1), nk.FanOut(2), nk.parallel(att, nk.Identity()),
                 nk.FanInSum(), nk.LayerNorm(axis=1), nk.Dense(256), nk.ReLU(), nk.Dense(256),
                 nk.GlobalAvgPool(), nk.Dense(1))
xt = torch.from_numpy(x)
def call(inputs=xt):
    return arch.kernel(inputs, dtype=getattr(torch, dtype))
call(xt[:4])
"""

NT_CASE = _COMMON + """
import warnings
warnings.filterwarnings("ignore")
import jax
jax.config.update("jax_enable_x64", dtype == "float64")
import jax.numpy as jnp
from neural_tangents import stax
_, _, kernel_fn = stax.serial(
    stax.Dense(256), stax.LayerNorm(axis=-1), stax.FanOut(2),
    stax.parallel(stax.GlobalSelfAttention(256, 256, 256, 4, linear_scaling=True,
                                           attention_mechanism="SOFTMAX"), stax.Identity()),
    stax.FanInSum(), stax.LayerNorm(axis=-1), stax.Dense(256), stax.Relu(), stax.Dense(256),
    stax.GlobalAvgPool(), stax.Dense(1))
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
xj = jnp.asarray(x.transpose(0, 2, 1))   # (n, T, C), neural-tangents' default layout
def call():
    k = kernel_fn(xj, None, get=("nngp", "ntk"))
    k.ntk.block_until_ready()
    return k
call()  # jit compilation
"""

_TIMING = """
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); k = call(); times.append(time.perf_counter() - t0)
np.save(out_path, np.asarray(k.ntk, dtype=np.float64))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"seconds": statistics.median(times), "peak_rss": peak}}))
"""


def run_case(python: Path, template: str, memory_gb: float | None = None, env: dict | None = None,
             **params) -> dict:
    code = textwrap.dedent(template + _TIMING).format(**params)

    def cap() -> None:  # a failed allocation instead of the OOM killer on a shared machine
        if memory_gb:
            limit = int(memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, preexec_fn=cap,
                          env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() if proc.stderr else []
        errors = [ln for ln in lines if "Error" in ln or "RESOURCE_EXHAUSTED" in ln]
        return {"error": (errors or lines or [f"exit code {proc.returncode}"])[-1].strip()}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_run(runs: list[dict]) -> dict:
    """The run of median time (peak RSS: the largest), or the first error."""
    good = [r for r in runs if "seconds" in r]
    if not good:
        return runs[0]
    good.sort(key=lambda r: r["seconds"])
    return {"seconds": good[len(good) // 2]["seconds"], "peak_rss": max(r["peak_rss"] for r in good)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200])
    parser.add_argument("--length", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for ntkit")
    parser.add_argument("--alternate", type=int, default=1,
                        help="run ntkit and neural-tangents this many times each, alternating "
                             "(medians and per-alternation ratios: for a shared machine)")
    parser.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    parser.add_argument("--nt-python", type=Path, default=NT_PYTHON,
                        help="python of a neural-tangents environment (default: .venv-nt)")
    parser.add_argument("--nt-memory-gb", type=float, default=18.0,
                        help="address-space cap of the neural-tangents process (0: none)")
    args = parser.parse_args()
    have_nt = args.nt_python.exists() and not args.no_nt
    if not have_nt:
        print(f"neural-tangents skipped: {args.nt_python} not found (bash scripts/setup_nt_venv.sh)"
              if not args.no_nt else "neural-tangents skipped (--no-nt)")
    print(f"{'T':>4} {'n':>4} {'dtype':>8} | {'ntkit s':>8} {'RSS GB':>7} |"
          f" {'NT s':>8} {'NT GB':>6} | {'time ratio':>10} {'max rel diff':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.length:
            for dtype in args.dtype:
                for n in args.n:
                    params = dict(n=n, length=length, dtype=dtype, repeats=args.repeats,
                                  threads=args.threads)
                    ours_path, nt_path = Path(tmp, "ntkit.npy"), Path(tmp, "nt.npy")
                    runs_ours, runs_theirs = [], []
                    for _ in range(args.alternate):  # ntkit and neural-tangents alternating
                        runs_ours.append(run_case(Path(sys.executable), NTKIT_CASE,
                                                  env={"OMP_WAIT_POLICY": "PASSIVE"}, out_path=ours_path,
                                                  **params))
                        if have_nt:
                            runs_theirs.append(run_case(args.nt_python, NT_CASE, args.nt_memory_gb,
                                                        out_path=nt_path, **params))
                    ours = _median_run(runs_ours)
                    theirs = _median_run(runs_theirs) if have_nt else None
                    if args.alternate > 1 and "seconds" in ours and theirs and "seconds" in theirs:
                        ratios = [a["seconds"] / b["seconds"] for a, b in zip(runs_ours, runs_theirs)]
                        print(f"     per alternation: ntkit/NT = {', '.join(f'{r:.2f}' for r in ratios)}; "
                              f"load average {os.getloadavg()[0]:.1f}")
                    line = f"{length:>4} {n:>4} {dtype:>8} | "
                    if "error" in ours:
                        line += f"ntkit failed: {ours['error'][:60]} | "
                    else:
                        line += f"{ours['seconds']:8.3f} {ours['peak_rss'] / 1e9:7.2f} | "
                    if theirs is None:
                        line += f"{'-':>8} {'-':>6} | {'-':>10} {'-':>12}"
                    elif "error" in theirs:
                        line += f"NT failed: {theirs['error'][:60]}"
                    elif "seconds" in ours:
                        a, b = np.load(ours_path), np.load(nt_path)
                        diff = float(np.abs(a - b).max() / np.abs(b).max())
                        line += (f"{theirs['seconds']:8.3f} {theirs['peak_rss'] / 1e9:6.2f} | "
                                 f"{ours['seconds'] / theirs['seconds']:10.3f} {diff:12.2e}")
                    print(line, flush=True)


if __name__ == "__main__":
    main()
