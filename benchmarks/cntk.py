"""Convolutional NTK (CNTK): ntkit vs neural-tangents, side by side.

``Conv(256, 3x3, same)-ReLU-Conv(256, 3x3, same)-ReLU-{Flatten | GlobalAvgPool}-Dense(10)``
(``W_std=1``, no biases, NTK parameterization, as neural-tangents' defaults) on the first
``n`` scikit-learn digits (8x8x1, pixels / 16), NNGP + NTK with ``x2=None``.

Each case runs in a fresh subprocess (clean peak RSS), ntkit then neural-tangents, and
reports the median of ``--repeats`` timings after one warm-up call (for neural-tangents
the warm-up includes jit compilation, which is therefore not timed; ntkit warms up on 8
images) and the peak resident size of the process (``ru_maxrss``, everything included:
Python, torch/jax, inputs, outputs). When both ran, the largest relative difference of
the two NTK matrices is printed too (a cross-check of the kernels, not only of speed).
ntkit runs with ``OMP_WAIT_POLICY=PASSIVE`` (unless ``--omp-active``): on shared, busy
cores torch's spinning OpenMP threads were measured 4-25x slower than passive ones (the
CNTK-Flatten at n=400: 2.4-14.7 s against 0.56 s at load 4.6 on 2 cores).
The neural-tangents process gets an address-space cap (``--nt-memory-gb``, default 18) so
that a case too large for the machine fails with its out-of-memory error instead of
waking the kernel's OOM killer.

Reproduce:
    bash scripts/setup_nt_venv.sh                  # once: .venv-nt with jax 0.4.25 + neural-tangents
    .venv/bin/python benchmarks/cntk.py            # full grid: n in {100, 200, 400}, both dtypes
    .venv/bin/python benchmarks/cntk.py --n 400 --dtype float64 --readout gap --repeats 1
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
from sklearn.datasets import load_digits
n, dtype, readout, repeats, out_path = {n}, "{dtype}", "{readout}", {repeats}, "{out_path}"
x = (load_digits().data[:n] / 16.0).astype(dtype).reshape(n, 1, 8, 8)   # NCHW
"""

NTKIT_CASE = _COMMON + """
import torch
import ntkit as nk
from ntkit.infinite.conv import Conv
from ntkit.infinite.pooling import Flatten, GlobalAvgPool
torch.set_num_threads({threads})
arch = nk.serial(Conv(256, 3, padding="same"), nk.ReLU(), Conv(256, 3, padding="same"), nk.ReLU(),
                 GlobalAvgPool() if readout == "gap" else Flatten(), nk.Dense(10))
xt = torch.from_numpy(x)
def call(inputs=xt):
    return arch.kernel(inputs, dtype=getattr(torch, dtype))
call(xt[:8])
"""

NT_CASE = _COMMON + """
import jax
jax.config.update("jax_enable_x64", dtype == "float64")
import jax.numpy as jnp
from neural_tangents import stax
_, _, kernel_fn = stax.serial(
    stax.Conv(256, (3, 3), padding="SAME"), stax.Relu(),
    stax.Conv(256, (3, 3), padding="SAME"), stax.Relu(),
    stax.GlobalAvgPool() if readout == "gap" else stax.Flatten(), stax.Dense(10))
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
xj = jnp.asarray(x.transpose(0, 2, 3, 1))   # NHWC, neural-tangents' default layout
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


def run_case(
    python: Path, template: str, memory_gb: float | None = None, env: dict | None = None, **params
) -> dict:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--readout", nargs="+", default=["flatten", "gap"], choices=["flatten", "gap"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for ntkit")
    parser.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    parser.add_argument("--omp-active", action="store_true",
                        help="leave torch's OpenMP threads spinning (default: OMP_WAIT_POLICY=PASSIVE)")
    parser.add_argument("--nt-memory-gb", type=float, default=18.0,
                        help="address-space cap of the neural-tangents process (0: none)")
    args = parser.parse_args()
    have_nt = NT_PYTHON.exists() and not args.no_nt
    if not have_nt:
        print(f"neural-tangents skipped: {NT_PYTHON} not found (bash scripts/setup_nt_venv.sh)"
              if not args.no_nt else "neural-tangents skipped (--no-nt)")
    print(f"{'readout':>7} {'n':>4} {'dtype':>8} | {'ntkit s':>8} {'RSS GB':>7} |"
          f" {'NT s':>8} {'NT GB':>6} | {'time ratio':>10} {'max rel diff':>12}")
    omp_env = None if args.omp_active else {"OMP_WAIT_POLICY": "PASSIVE"}
    with tempfile.TemporaryDirectory() as tmp:
        for readout in args.readout:
            for dtype in args.dtype:
                for n in args.n:
                    params = dict(n=n, dtype=dtype, readout=readout, repeats=args.repeats,
                                  threads=args.threads)
                    ours_path, nt_path = Path(tmp, "ntkit.npy"), Path(tmp, "nt.npy")
                    ours = run_case(Path(sys.executable), NTKIT_CASE, env=omp_env, out_path=ours_path,
                                    **params)
                    theirs = (run_case(NT_PYTHON, NT_CASE, args.nt_memory_gb, out_path=nt_path, **params)
                              if have_nt else None)
                    line = f"{readout:>7} {n:>4} {dtype:>8} | "
                    if "error" in ours:
                        line += f"ntkit failed: {ours['error'][:60]}"
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
