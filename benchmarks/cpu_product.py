"""Where one matrix-free ``KernelOperator @ v`` goes on this CPU, against a roofline model.

The product of the n = 100,000 CG row of ``benchmarks/scale.py`` (depth-3 ReLU NTK on
40-feature inputs, float32 tiles recomputed at every product, 10 right-hand sides), at a
smaller ``--n`` (time ∝ n², so the n = 100,000 figure is scaled by ``(10⁵/n)²``):

1. **machine**: CPU model (``ntkit.hardware.cpu_info``), float32 GEMM rate (torch ``mm`` and
   oneDNN, 1 and ``--threads`` threads), memory bandwidth of a large copy and add (256 MiB
   arrays), and the choices ``ntkit.hardware`` made (product route, tile side, workers);
2. **one product**: wall-clock time of ``op @ v`` (best of ``--repeats``);
3. **split**: a sample of tiles run single-threaded under a dispatch hook that times every
   torch op in CPU seconds: the Gram and ``K_IJ v_J`` products (``mm``), the elementwise
   passes over the tile (ops on at least half a tile of entries, views excluded), everything
   else (small vector ops, Python between ops); the thread pool's overhead is the product's
   CPU time (all threads) against the tiles' single-threaded CPU time, and its wall time
   against that CPU time divided by the workers (on a shared machine, mostly the other
   processes' share of the cores);
4. **model**: Gram GEMM flops at the measured 1-thread rate + one pass over the tile per
   elementwise op (its inputs read, its output written) at the measured bandwidth, divided by
   the workers; the acceptance of issue 21 is ``product ≤ 2 × model``.

Items 2–4 are the layer engine's tiles (``NTKIT_FUSED=0``: one torch op per elementwise
step, the memory-bound route the model describes). ``--fused`` adds the compiled one-loop
tiles of :mod:`ntkit.infinite.fused_fc` side by side: engine and compiled operators'
products alternate (after one warm-up product each, which compiles), best of ``--repeats``.

    PYTHONPATH=src .venv/bin/python benchmarks/cpu_product.py --n 20000 --fused
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ntkit as nk
from ntkit import hardware
from ntkit.linalg import KernelOperator

ARCH = dict(depth=3, width=512, activation="relu", W_std=2**0.5, b_std=0.1)


class _OpClock(TorchDispatchMode):
    """CPU seconds and bytes of every torch op, grouped by kind."""

    def __init__(self, tile_entries: int) -> None:
        super().__init__()
        self.big = tile_entries // 2
        self.seconds = {"gemm": 0.0, "elementwise": 0.0, "small": 0.0}
        self.passes = 0
        self.bytes = 0
        self.flops = 0
        self.ops: dict[str, int] = {}
        self.small: dict[str, float] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.thread_time()
        out = func(*args, **(kwargs or {}))
        dt = time.thread_time() - t0
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        name = str(func).split(".")[1] if "." in str(func) else str(func)
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) or "linear" in name:
            self.seconds["gemm"] += dt
            a, b = tensors[-2], tensors[-1]
            self.flops += 2 * a.shape[0] * a.shape[1] * (b.shape[0] if "linear" in name else b.shape[1])
        elif (isinstance(out, torch.Tensor) and out.numel() >= self.big
              and not any(out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
                          for t in tensors if not func._schema.is_mutable)):  # views move nothing
            self.seconds["elementwise"] += dt
            self.passes += 1
            self.bytes += sum(t.numel() * t.element_size() for t in tensors if t.numel() >= self.big)
            self.bytes += out.numel() * out.element_size()
            self.ops[name] = self.ops.get(name, 0) + 1
        else:
            self.seconds["small"] += dt
            self.small[name] = self.small.get(name, 0.0) + dt
        return out


def machine(threads: int) -> dict:
    info = hardware.cpu_info()
    out = {"cpu": info.describe(), "route": hardware.matmul_route(torch.float32)}
    for t in sorted({1, threads}):
        torch.set_num_threads(t)
        out[f"gflops_mm_{t}t"] = hardware.gemm_rate(torch.float32, "mm")
        if out["route"] == "onednn" or torch.backends.mkldnn.is_available():
            try:
                out[f"gflops_onednn_{t}t"] = hardware.gemm_rate(torch.float32, "onednn")
            except Exception:  # pragma: no cover - a build without the op
                pass
        out[f"gflops_tile_gram_{t}t"] = hardware.gemm_rate(torch.float32, "auto", (512, 40, 512))
        out[f"copy_GBs_{t}t"] = hardware.bandwidth("copy") / 1e9
        out[f"add_GBs_{t}t"] = hardware.bandwidth("add") / 1e9
    torch.set_num_threads(threads)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sample", type=int, default=6, help="tiles timed op by op")
    p.add_argument("--tile", type=int, help="force this tile side (default: ntkit.hardware's choice)")
    p.add_argument("--fused", action="store_true", help="also time the compiled tiles, alternating")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()
    os.environ["NTKIT_FUSED"] = "0"  # items 2-4: the engine's tiles (module docstring)
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()}", flush=True)
    t0 = time.perf_counter()
    m = machine(args.threads)
    print(f"machine probes {time.perf_counter() - t0:.1f} s")
    print(f"CPU: {m['cpu']}")
    print("GEMM float32 GFLOP/s (1024³): " + ", ".join(
        f"{k.removeprefix('gflops_')} {v:.0f}" for k, v in m.items() if k.startswith("gflops_")))
    print("bandwidth GB/s (256 MiB arrays): " + ", ".join(
        f"{k.removesuffix('_GBs_1t').removesuffix('_GBs_2t')}"
        f"{' ' + k[-2:] if k.endswith('t') else ''} {v:.1f}" for k, v in m.items() if "GBs" in k))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 40, generator=g)
    x = x / x.norm(dim=1, keepdim=True)
    v = torch.randn(args.n, 10, generator=g)
    arch = nk.mlp(ARCH["depth"], ARCH["width"], ARCH["activation"], W_std=ARCH["W_std"], b_std=ARCH["b_std"])
    t0 = time.perf_counter()
    op = KernelOperator(arch, x, dtype=torch.float32, cache=False, memory_budget=2**31, tile=args.tile)
    setup = time.perf_counter() - t0
    print(f"operator: tile {op.tile}, {op.threads} workers, route {m['route']} "
          f"(set-up incl. probes {setup:.2f} s)")
    tiles = op.tile_grid()
    best = best_cpu = math.inf
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        op @ v
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    entries = sum(t.pairs for t in tiles)

    # one tile at a time, op by op (single thread), on off-diagonal tiles of full size
    full = [t for t in tiles if not t.diagonal and t.pairs == op.tile**2][: args.sample]
    clock = _OpClock(op.tile**2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    for t in full[:1]:  # warm-up, with and without the hook (its first use costs seconds)
        with _OpClock(op.tile**2):
            op.source.block(t.rows, t.cols) @ v[t.cols]
        op.source.block(t.rows, t.cols) @ v[t.cols]
    for t in full:
        with clock:
            tile = op.source.block(t.rows, t.cols)
            tile @ v[t.cols]
            tile.T @ v[t.rows]
    plain = 0.0
    for t in full:
        c0 = time.thread_time()
        tile = op.source.block(t.rows, t.cols)
        tile @ v[t.cols]
        tile.T @ v[t.rows]
        plain += time.thread_time() - c0
    torch.set_num_threads(before)
    k = len(full)
    per_entry = plain / (k * op.tile**2)  # CPU s per entry, without the hook
    ops_total = sum(clock.seconds.values())
    share = {key: val / max(plain, ops_total) for key, val in clock.seconds.items()}
    overhead_in_tile = max(0.0, plain - ops_total) / plain
    top_small = sorted(clock.small.items(), key=lambda kv: -kv[1])[:6]
    work = per_entry * entries
    pool = best - work / op.threads

    rate1 = m["gflops_tile_gram_1t"] * 1e9
    bw = m[f"copy_GBs_{args.threads}t"] * 1e9
    gram_s = clock.flops / k / op.tile**2 * entries / rate1 / op.threads
    pass_s = clock.bytes / k / op.tile**2 * entries / bw
    model = gram_s + pass_s
    scale = (1e5 / args.n) ** 2
    print(f"\none product, n = {args.n}: {best:.2f} s wall ({best * scale:.0f} s scaled to n = 100,000); "
          f"{entries / 1e6:.0f} M kernel entries, {per_entry * 1e9:.1f} ns CPU per entry on one thread")
    print(f"split of the tiles' CPU time (sample of {k} tiles, hook on): GEMM {share['gemm']:.0%}, "
          f"elementwise passes {share['elementwise']:.0%} ({clock.passes // k} per tile: "
          f"{dict(sorted(clock.ops.items(), key=lambda kv: -kv[1]))}), small ops {share['small']:.0%} "
          f"(most: {', '.join(f'{n} {s / k * 1e3:.2f} ms' for n, s in top_small)} a tile), "
          f"Python between ops {overhead_in_tile:.0%}")
    print(f"thread pool: work / workers = {work / op.threads:.2f} s, product {best:.2f} s wall "
          f"(wall overhead {pool:.2f} s, {pool / best:.0%}, includes other processes' share of the "
          f"cores); CPU time of the product {best_cpu:.2f} s vs the tiles' {work:.2f} s on one "
          f"thread: pool CPU overhead {best_cpu / work - 1:+.0%}")
    print(f"model: Gram GEMM {gram_s:.2f} s ({clock.flops / k / 1e6:.0f} MFLOP a tile at "
          f"{rate1 / 1e9:.0f} GFLOP/s per worker) + {clock.passes // k} passes "
          f"({clock.bytes / k / op.tile**2:.0f} B per entry) at {bw / 1e9:.1f} GB/s = {pass_s:.2f} s "
          f"-> {model:.2f} s; product / model = {best / model:.2f}")
    if args.fused:
        result_fused = compare_fused(arch, x, v, args.tile, args.repeats, entries)
        print(f"compiled tiles: product {result_fused['fused_product_s']:.2f} s wall vs the engine's "
              f"{result_fused['engine_product_s']:.2f} s in the same alternation "
              f"(engine / compiled = {result_fused['speedup']:.2f}; "
              f"{result_fused['fused_product_s'] * scale:.0f} s scaled to n = 100,000); "
              f"decision {result_fused['decision']}, "
              f"first product (compiles) {result_fused['first_s']:.1f} s; "
              f"max relative difference {result_fused['max_rel_diff']:.1e}")
    else:
        result_fused = {}
    result = dict(m, **result_fused, n=args.n, tile=op.tile, workers=op.threads, product_s=best,
                  product_s_at_1e5=best * scale, ns_per_entry=per_entry * 1e9, split=share,
                  python_in_tile=overhead_in_tile, pool_overhead_s=pool, product_cpu_s=best_cpu,
                  tiles_cpu_s=work, model_s=model,
                  gram_model_s=gram_s, pass_model_s=pass_s, passes=clock.passes // k,
                  bytes_per_entry=clock.bytes / k / op.tile**2, ratio=best / model,
                  load=os.getloadavg())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


def compare_fused(arch, x, v, tile, repeats: int, entries: int) -> dict:
    """Products of the engine's and the compiled tiles' operators, alternating (best of
    ``repeats`` each), with the compiled route forced on (still checked against the engine)."""
    os.environ["NTKIT_FUSED"] = "1"
    fused = KernelOperator(arch, x, dtype=torch.float32, cache=False, memory_budget=2**31, tile=tile)
    os.environ["NTKIT_FUSED"] = "0"
    engine = KernelOperator(arch, x, dtype=torch.float32, cache=False, memory_budget=2**31, tile=tile)
    t0 = time.perf_counter()
    fused @ v  # compiles (or loads the compiled loop) and decides
    first_s = time.perf_counter() - t0
    times = {"engine": [], "fused": []}
    out = {}
    for _ in range(repeats):
        for name, op in (("engine", engine), ("fused", fused)):
            t0 = time.perf_counter()
            out[name] = op @ v
            times[name].append(time.perf_counter() - t0)
    decision = fused.source._fused.choice()
    diff = float((out["fused"] - out["engine"]).abs().max() / out["engine"].abs().max())
    e, f = min(times["engine"]), min(times["fused"])
    return dict(engine_product_s=e, fused_product_s=f, speedup=e / f, decision=decision, first_s=first_s,
                fused_ns_per_entry=f * fused.threads / entries * 1e9, max_rel_diff=diff)


if __name__ == "__main__":
    main()
