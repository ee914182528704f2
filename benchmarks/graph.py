"""Graph NTK (Du et al. 2019): ntkit vs neural-tangents vs a naive NumPy GNTK.

GNTK with 2 BLOCKs — each ``Aggregate → Dense(√2) → ReLU → Dense(√2) → ReLU`` — then a sum
readout and ``Dense(1)``; no biases (as Du et al.), so graphs padded with isolated zero nodes
to a common size have exactly the kernel of the unpadded graphs. Random undirected graphs of
20–40 nodes (edge probability 0.2, self-loops added), 8 node features, float64, NNGP + NTK
with ``x2=None``. ntkit and neural-tangents alternate ``--repeats`` times (medians and
per-repeat ratios are reported, with the load average). neural-tangents runs in
``.venv-nt`` (``bash scripts/setup_nt_venv.sh``) in a subprocess, jitted, batched with
``nt.batch`` so that it fits in memory; the naive reference (tests/gntk_reference.py) runs
at ``--naive-n`` graphs only and is compared with ntkit there.

Reproduce:
    bash scripts/setup_nt_venv.sh            # once
    .venv/bin/python benchmarks/graph.py --n 500 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

import ntkit as nk

ROOT = Path(__file__).resolve().parents[1]
NT_PYTHON = ROOT / ".venv-nt" / "bin" / "python"
W = 2**0.5

NT_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax
    data = np.load(sys.argv[1])
    x, a, batch = jnp.asarray(data["x"].transpose(0, 2, 1)), jnp.asarray(data["a"]), int(sys.argv[2])
    block = [stax.Aggregate(aggregate_axis=1, batch_axis=0, channel_axis=-1),
             stax.Dense(512, W_std=2**0.5), stax.Relu(), stax.Dense(512, W_std=2**0.5), stax.Relu()]
    _, _, kernel_fn = stax.serial(*block, *block, stax.GlobalSumPool(batch_axis=0, channel_axis=-1),
                                  stax.Dense(1))
    kernel_fn = nt.batch(kernel_fn, batch_size=batch, store_on_device=False)
    def run():
        k = kernel_fn(x, None, ("nngp", "ntk"), pattern=(a, a))
        return np.asarray(k.nngp), np.asarray(k.ntk)
    t0 = time.perf_counter(); nngp, ntk = run(); first = time.perf_counter() - t0
    t0 = time.perf_counter(); nngp, ntk = run(); second = time.perf_counter() - t0
    np.savez(sys.argv[3], nngp=nngp, ntk=ntk)
    print(json.dumps({"first": first, "second": second}))
""")


def random_graphs(n: int, channels: int = 8, low: int = 20, high: int = 40, p: float = 0.2, seed: int = 0):
    """Features ``(n, C, high)`` and patterns ``(n, high, high)``, zero-padded to ``high`` nodes."""
    g = np.random.default_rng(seed)
    x = np.zeros((n, channels, high))
    a = np.zeros((n, high, high))
    for i in range(n):
        nodes = int(g.integers(low, high + 1))
        x[i, :, :nodes] = g.standard_normal((channels, nodes))
        upper = np.triu(g.random((nodes, nodes)) < p, 1)
        a[i, :nodes, :nodes] = upper + upper.T + np.eye(nodes)
    return x, a


def ntkit_arch():
    block = [nk.Aggregate(), nk.Dense(512, W), nk.ReLU(), nk.Dense(512, W), nk.ReLU()]
    return nk.serial(*block, *block, nk.GlobalSumPool(), nk.Dense(1))


def naive(x, a):
    sys.path.insert(0, str(ROOT / "tests"))
    from gntk_reference import gntk

    layers = [("aggregate",), ("dense", W, None), ("relu",), ("dense", W, None), ("relu",)] * 2
    layers += [("sum",), ("out", 1.0, None)]
    return gntk(list(x), list(a), layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--naive-n", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nt-batch", type=int, default=25)
    parser.add_argument("--no-nt", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="ntkit/neural-tangents alternations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, a = random_graphs(args.n)
    xt, at = torch.from_numpy(x), torch.from_numpy(a)
    arch = ntkit_arch()
    arch.kernel(xt[:4], pattern1=at[:4])  # warm-up
    run_nt = not args.no_nt and NT_PYTHON.exists()
    if not args.no_nt and not run_nt:
        print("neural-tangents: .venv-nt missing (bash scripts/setup_nt_venv.sh); skipped")
    ntkit_times, nt_times, nt_first, k, nt_k = [], [], [], None, None
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/in.npz", x=x, a=a)
        for r in range(args.repeats):  # ntkit and neural-tangents alternating
            t0 = time.perf_counter()
            k = arch.kernel(xt, pattern1=at)
            ntkit_times.append(time.perf_counter() - t0)
            line = f"repeat {r}: ntkit {ntkit_times[-1]:.2f} s"
            if run_nt:
                env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count=1 "
                                    f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'}",
                       "PATH": "/usr/bin:/bin"}
                out = subprocess.run([str(NT_PYTHON), "-c", NT_SCRIPT, f"{tmp}/in.npz", str(args.nt_batch),
                                      f"{tmp}/out.npz"], capture_output=True, text=True, env=env)
                if out.returncode:
                    print("neural-tangents failed:", out.stderr[-2000:])
                    run_nt = False
                else:
                    times = json.loads(out.stdout.strip().splitlines()[-1])
                    nt_times.append(times["second"])
                    nt_first.append(times["first"])
                    nt_k = np.load(f"{tmp}/out.npz")
                    line += (f", neural-tangents {nt_times[-1]:.2f} s "
                             f"(first call incl. jit {times['first']:.1f} s)")
            print(line + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    t_ntkit = statistics.median(ntkit_times)
    print(f"ntkit  n={args.n}: median {t_ntkit:.2f} s over {len(ntkit_times)}")
    result = {"n": args.n, "ntkit_s": t_ntkit, "ntkit_all_s": ntkit_times,
              "load_average": os.getloadavg()}
    if nt_times:
        t_nt = statistics.median(nt_times)
        diff = float(np.abs(nt_k["ntk"] - k.ntk.numpy()).max() / np.abs(nt_k["ntk"]).max())
        print(f"neural-tangents n={args.n}: median {t_nt:.2f} s; ntkit/nt = {t_ntkit / t_nt:.2f} "
              f"(per repeat: {', '.join(f'{a / b:.2f}' for a, b in zip(ntkit_times, nt_times))}); "
              f"max rel. difference {diff:.1e}")
        result.update(nt_s=t_nt, nt_all_s=nt_times, nt_first_s=nt_first, nt_vs_ntkit=diff,
                      ratio=t_ntkit / t_nt)
    m = args.naive_n
    if m:
        t0 = time.perf_counter()
        _, ref_ntk = naive(x[:m], a[:m])
        t_naive = time.perf_counter() - t0
        k_small = arch.kernel(xt[:m], pattern1=at[:m])
        err = float(np.abs(k_small.ntk.numpy() - ref_ntk).max() / np.abs(ref_ntk).max())
        print(f"naive  n={m}: {t_naive:.1f} s (ntkit at n={m}: max rel. difference {err:.1e}; "
              f"naive extrapolated to n={args.n}: {t_naive * (args.n / m) ** 2:.0f} s)")
        result.update(naive_n=m, naive_s=t_naive, naive_vs_ntkit=err)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
