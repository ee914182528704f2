"""Kernel regression at scale: ntkit's Cholesky / CG / Nyström vs scikit-learn's KernelRidge.

Depth-3 ReLU NTK (``nk.mlp(3, 512, "relu", W_std=√2, b_std=0.1)``) on mnist1d generated
offline (40 features) with mnist1d's own generator at a larger ``num_samples`` (nothing
downloaded; the arrays go to a temporary directory, never the working tree). 10-class
one-hot regression, accuracy of ``argmax`` on a held-out test set (the last ``--test``
generated examples), ridge ``= ridge_rel · mean(diag K)`` (same for every method).

Every case runs in a fresh subprocess (clean peak RSS = ``ru_maxrss`` of that process,
everything included: interpreter, torch, data). Cases:

- ``sklearn``: ``K`` and ``K_test`` (``KernelOperator.to_dense``), then (timed, alternating)
  ``KernelRidge(kernel="precomputed").fit/predict`` and ntkit's exact path on the same
  matrices (``nk.linalg.solve(K, Y, solver="cholesky")`` and ``K_test @ α``);
- ``cholesky``: ntkit end to end — ``KernelOperator`` → ``solve(solver="cholesky")``
  (dense in budget, factorized in place) → ``predict`` (tile by tile);
- ``cg``: the operator caches the upper half of ``K`` when it fits the budget (else every
  product recomputes the tiles: matrix-free); CG with the rank-500 Nyström preconditioner
  (or ``rank`` columns, with ``tol``/``maxiter`` as given); ``predict``;
- ``nystrom``: FALKON-style with ``M`` centres (``K_nM`` cached when it fits the budget),
  ``NystromSolution.predict``.

Before the cases the driver prints the machine (``ntkit.hardware``: CPU model, float32 GEMM
rate through torch's ``mm`` and oneDNN, bandwidth of a large copy, the product route and tile
side chosen on this CPU) so that runs on different machines can be compared; every operator
case reports its time per product ``K v`` (``per product`` in the notes).

Reproduce (2 cores, a few tens of minutes in all; ``--quick`` for a smoke run):

    .venv/bin/python benchmarks/scale.py                 # the full grid below
    .venv/bin/python benchmarks/scale.py --only nystrom --n 100000 --M 5000
    .venv/bin/python benchmarks/scale.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
ARCH = dict(depth=3, width=512, activation="relu", W_std=2**0.5, b_std=0.1)

# (method, n, extra) — the default grid
GRID = [
    ("sklearn", 10_000, {}),
    ("cholesky", 10_000, {}),
    ("cg", 10_000, {}),
    ("nystrom", 10_000, {"M": 2000}),
    ("nystrom", 10_000, {"M": 5000}),
    ("nystrom", 10_000, {"M": 10_000}),
    ("sklearn", 20_000, {}),
    ("cholesky", 20_000, {}),
    ("cg", 20_000, {}),
    ("nystrom", 20_000, {"M": 5000}),
    ("cg", 40_000, {}),
    ("nystrom", 40_000, {"M": 5000}),
    ("nystrom", 100_000, {"M": 2000}),
    ("nystrom", 100_000, {"M": 5000}),
    ("nystrom", 100_000, {"M": 10_000, "dtype": "float32"}),
    # K_nM (12 GB) does not fit: one sweep forms K_nMᵀK_nM (the "gram" mode), 3·M² float64
    ("nystrom", 100_000, {"M": 15_000, "budget": 2**29}),
    # the exact problem, matrix-free: every CG step recomputes K (float32 tiles, compiled:
    # ~43 s a product here); a rank-2000 Nyström preconditioner makes ~10 steps enough for the
    # accuracy of the exact solve (measured at n = 40,000: flat from residual 5e-2 on)
    ("cg", 100_000, {"dtype": "float32", "rank": 2000, "tol": 2e-2, "maxiter": 15,
                     "budget": 2**31}),
]
QUICK = [
    ("sklearn", 2000, {}),
    ("cholesky", 2000, {}),
    ("cg", 2000, {}),
    ("nystrom", 2000, {"M": 500}),
    ("nystrom", 4000, {"M": 500}),
]


# --------------------------------------------------------------------------- data
def make_data(total: int, directory: str) -> tuple[str, str]:
    """Generate ``total`` mnist1d examples offline; save X, y as .npy in ``directory``."""
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = total
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    X = np.concatenate([data["x"], data["x_test"]]).astype(np.float64)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    xp, yp = os.path.join(directory, "X.npy"), os.path.join(directory, "y.npy")
    np.save(xp, X)
    np.save(yp, y)
    return xp, yp


# --------------------------------------------------------------------------- one case
def run_case(case: dict) -> dict:
    import resource

    import torch

    import ntkit as nk
    from ntkit.linalg import KernelOperator, nystrom, predict, solve
    from ntkit.linalg.preconditioner import NystromPreconditioner

    torch.set_num_threads(case.get("threads", 2))
    X = np.load(case["X"], mmap_mode="r")
    y = np.load(case["y"], mmap_mode="r")
    n, m = case["n"], case["test"]
    dtype = getattr(torch, case.get("dtype", "float64"))
    x = torch.from_numpy(np.array(X[:n]))
    xt = torch.from_numpy(np.array(X[-m:]))
    ytr, yte = np.array(y[:n]), np.array(y[-m:])
    Y = torch.nn.functional.one_hot(torch.from_numpy(ytr), 10).to(torch.float64)
    arch = nk.mlp(ARCH["depth"], ARCH["width"], ARCH["activation"], W_std=ARCH["W_std"], b_std=ARCH["b_std"])
    diag_mean = float(arch.kernel(x[:2000], get="ntk", diagonal=True).mean())
    ridge = case["ridge_rel"] * diag_mean
    out: dict = {k: case[k] for k in ("method", "n") if k in case}
    out.update(M=case.get("M"), dtype=case.get("dtype", "float64"), ridge=ridge, budget=case["budget"])

    def acc(f: torch.Tensor) -> float:
        return float((f.argmax(1).numpy() == yte).mean())

    method = case["method"]
    t0 = time.perf_counter()
    if method == "sklearn":
        from sklearn.kernel_ridge import KernelRidge

        big = 4 * n * n * 8
        K = KernelOperator(arch, x, memory_budget=big).to_dense()
        Kt = KernelOperator(arch, xt, x, memory_budget=big).to_dense()
        out["t_kernel"] = time.perf_counter() - t0
        Kn, Ktn, Yn = K.numpy(), Kt.numpy(), Y.numpy()
        t_sk, t_nt = [], []
        for _ in range(case.get("repeats", 1)):
            t = time.perf_counter()
            f_sk = KernelRidge(alpha=ridge, kernel="precomputed").fit(Kn, Yn).predict(Ktn)
            t_sk.append(time.perf_counter() - t)
            t = time.perf_counter()
            alpha = solve(K, Y, solver="cholesky", ridge=ridge)
            f_nt = Kt @ alpha
            t_nt.append(time.perf_counter() - t)
        out.update(t_sklearn=min(t_sk), t_ntkit_exact=min(t_nt), ratio=min(t_nt) / min(t_sk),
                   acc_sklearn=acc(torch.from_numpy(f_sk)), acc=acc(f_nt),
                   agree=float(np.abs(f_sk - f_nt.numpy()).max() / np.abs(f_sk).max()))
    else:
        budget = case["budget"]
        op = KernelOperator(arch, x, memory_budget=budget, dtype=dtype)
        out["cached"] = op.cached
        out["tile"] = op.tile
        product_times: list[float] = []
        matvec = op.backend_impl.matvec

        def timed_matvec(*a, **kw):
            t = time.perf_counter()
            r = matvec(*a, **kw)
            product_times.append(time.perf_counter() - t)
            if case.get("log"):
                print(f"  product {len(product_times)}: {product_times[-1]:.1f} s (at "
                      f"{time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.2f})",
                      file=sys.stderr, flush=True)
            return r

        op.backend_impl.matvec = timed_matvec
        if method == "nystrom":
            sol = nystrom(op, Y, centers=case["M"], ridge=ridge, seed=0, tol=case.get("tol", 1e-6),
                          progress=False)
            out["t_train"] = time.perf_counter() - t0
            out.update(iterations=sol.iterations, residual=sol.residual, mode=sol.mode)
            t1 = time.perf_counter()
            f = sol.predict(xt)
        else:
            pre = "auto"
            if case.get("rank"):
                pre = NystromPreconditioner(op, rank=case["rank"], ridge=ridge, seed=0)
                out["t_preconditioner"] = time.perf_counter() - t0
            alpha, info = solve(op, Y, solver=method, ridge=ridge, tol=case.get("tol", 1e-6),
                                maxiter=case.get("maxiter"), preconditioner=pre, progress=False,
                                return_info=True)
            out["t_train"] = time.perf_counter() - t0
            out.update(iterations=info.iterations, residual=info.residual)
            if product_times:
                out.update(products=len(product_times), t_product=float(np.median(product_times)))
            op.close()
            del op
            t1 = time.perf_counter()
            # test kernel in the case's dtype too (float32 tiles, float64 sums of K α)
            f = predict(arch, xt, x, alpha, memory_budget=budget, dtype=dtype)
        out["t_test"] = time.perf_counter() - t1
        out["acc"] = acc(f.double())
    out["t_total"] = time.perf_counter() - t0
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


# --------------------------------------------------------------------------- driver
def machine_line() -> str:
    """CPU model, float32 GEMM rates, copy bandwidth and ntkit's choices (2 threads, as the
    cases; measured in a subprocess so that the cases start from a fresh process)."""
    code = (
        "import json, os, torch\n"
        "from ntkit import hardware as h\n"
        "torch.set_num_threads(2)\n"
        "r = dict(cpu=h.cpu_info().describe(), load=os.getloadavg()[0], route=h.matmul_route(),\n"
        "         mm=h.gemm_rate(torch.float32, 'mm'), copy=h.bandwidth('copy') / 1e9,\n"
        "         tile=int(h.tile_entries(torch.float32) ** 0.5), workers=h.tile_threads())\n"
        "try:\n"
        "    r['onednn'] = h.gemm_rate(torch.float32, 'onednn')\n"
        "except Exception:\n"
        "    r['onednn'] = float('nan')\n"
        "print(json.dumps(r))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"machine: not measured ({done.stderr.strip().splitlines()[-1:]})"
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return (f"machine: {r['cpu']}; load average {r['load']:.2f}\n"
            f"  float32 GEMM 1024³ on 2 threads: mm {r['mm']:.0f} GFLOP/s, oneDNN {r['onednn']:.0f} "
            f"GFLOP/s (route: {r['route']}); copy bandwidth {r['copy']:.1f} GB/s; float32 tile side "
            f"{r['tile']}, {r['workers']} tile workers")


def budget_for(method: str, n: int, M: int | None, itemsize: int) -> int:
    """Memory budget per case: enough for the matrices the method keeps, plus 512 MiB."""
    extra = 512 * 2**20
    if method == "sklearn":
        return 0  # not used: dense matrices from arch.kernel
    if method == "cholesky":
        return n * n * itemsize + extra
    if method == "cg":
        return n * n * itemsize // 2 + n * 1024 * itemsize + extra
    return n * M * itemsize + extra  # nystrom: K_nM cached


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small smoke grid")
    parser.add_argument("--only", choices=["sklearn", "cholesky", "cg", "nystrom"])
    parser.add_argument("--n", type=int, nargs="*", help="restrict to these n")
    parser.add_argument("--M", type=int, nargs="*", help="restrict Nyström to these M")
    parser.add_argument("--test", type=int, default=10_000, help="held-out test examples")
    parser.add_argument("--pool", type=int, default=110_000,
                        help="examples to generate (the same pool, hence the same data, for any "
                             "subset of cases; at least max n + test)")
    parser.add_argument("--ridge-rel", type=float, default=1e-3, help="ridge / mean(diag K)")
    parser.add_argument("--repeats", type=int, default=1, help="sklearn-vs-ntkit repeats")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--log", action="store_true",
                        help="print each operator product's time as it ends (stderr)")
    parser.add_argument("--summarize", help="print the table and summary of a --json file")
    args = parser.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(json.loads(args.case))), flush=True)
        return
    if args.summarize:
        results = json.loads(Path(args.summarize).read_text())
        for r in results:
            print(_row(r))
        _summary(results)
        return

    grid = QUICK if args.quick else GRID
    if args.quick:
        args.test = min(args.test, 1000)
    grid = [
        c for c in grid
        if (args.only is None or c[0] == args.only)
        and (not args.n or c[1] in args.n)
        and (not args.M or c[2].get("M") in (None, *args.M))
    ]
    if not grid:
        sys.exit("no case matches the filters")
    print(machine_line(), flush=True)
    total = max(n for _, n, _ in grid) + args.test
    if not args.quick:
        total = max(total, args.pool)
    with tempfile.TemporaryDirectory(prefix="ntkit-scale-") as tmp:
        t = time.perf_counter()
        xp, yp = make_data(math.ceil(total / 10) * 10, tmp)
        print(f"generated {total} mnist1d examples in {time.perf_counter() - t:.0f} s", flush=True)
        results = []
        header = (f"{'method':>9} {'n':>7} {'M':>6} {'dtype':>8} | {'train s':>8} {'test s':>7} "
                  f"{'total s':>8} {'peak GiB':>8} | {'acc':>6} {'iters':>5} | notes")
        print(header + "\n" + "-" * len(header), flush=True)
        for method, n, extra in grid:
            itemsize = 4 if extra.get("dtype") == "float32" else 8
            case = dict(method=method, n=n, test=args.test, X=xp, y=yp, ridge_rel=args.ridge_rel,
                        repeats=args.repeats, log=args.log, **extra)
            case.setdefault("budget", budget_for(method, n, extra.get("M"), itemsize))
            done = subprocess.run(
                [sys.executable, str(HERE), "--case", json.dumps(case)],
                stdout=subprocess.PIPE, stderr=None if args.log else subprocess.PIPE, text=True,
                check=False,
            )
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                why = done.stderr.strip().splitlines()[-1:] if done.stderr else f"status {done.returncode}"
                print(f"{method:>9} {n:>7} failed: {why}", flush=True)
                continue
            r = json.loads(lines[-1][7:])
            results.append(r)
            print(_row(r), flush=True)
        _summary(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))


def _row(r: dict) -> str:
    M = r.get("M") or "-"
    if r["method"] == "sklearn":
        notes = (f"kernel {r['t_kernel']:.0f} s; same K: sklearn {r['t_sklearn']:.1f} s vs ntkit "
                 f"cholesky {r['t_ntkit_exact']:.1f} s (ratio {r['ratio']:.2f}); acc sklearn "
                 f"{r['acc_sklearn']:.4f}, max rel diff {r['agree']:.1e}")
        train = r["t_kernel"] + r["t_sklearn"]
        return (f"{'sklearn':>9} {r['n']:>7} {M:>6} {r['dtype']:>8} | {train:>8.1f} {'':>7} "
                f"{r['t_total']:>8.1f} {r['peak_rss_gib']:>8.2f} | {r['acc']:>6.4f} {'':>5} | {notes}")
    product = (f", per product {r['t_product']:.2f} s (median of {r['products']}, tile {r.get('tile')})"
               if r.get("t_product") else "")
    return (f"{r['method']:>9} {r['n']:>7} {M:>6} {r['dtype']:>8} | {r['t_train']:>8.1f} {r['t_test']:>7.1f} "
            f"{r['t_total']:>8.1f} {r['peak_rss_gib']:>8.2f} | {r['acc']:>6.4f} {r['iterations']:>5} | "
            f"{r.get('mode', 'cached=' + str(r['cached']))}, residual {r['residual']:.1e}, "
            f"budget {r['budget'] / 2**30:.1f} GiB{product}")


def _summary(results: list[dict]) -> None:
    print()
    # scaling exponents: total time vs n, per method (and per M)
    groups: dict[tuple, list[tuple[int, float]]] = {}
    for r in results:
        key = (r["method"], r.get("M"), r["dtype"])
        groups.setdefault(key, []).append((r["n"], r["t_total"]))
    for (method, M, dtype), pts in sorted(groups.items(), key=str):
        if len({n for n, _ in pts}) >= 2:
            ns, ts = zip(*sorted(pts))
            slope = np.polyfit(np.log(ns), np.log(ts), 1)[0]
            label = method + (f" M={M}" if M else "") + (f" {dtype}" if dtype != "float64" else "")
            print(f"scaling exponent (time ∝ n^p) {label:>22}: p = {slope:.2f} over n = {list(ns)}")
    # exact accuracy extrapolated to the largest n from the exact solves at smaller n, two
    # ways: the test error as a power law err = c·n^(-a) (bounded, the usual learning curve)
    # and, for reference, acc linear in ln n (unbounded: it overshoots)
    exact = {}
    for r in results:
        # exact: direct solves, and CG run to a tight residual (not the early-stopped one)
        if r["method"] in ("sklearn", "cholesky") or (r["method"] == "cg" and r["residual"] <= 1e-5):
            exact.setdefault(r["n"], r["acc"])
    largest = max((r["n"] for r in results), default=0)
    if len(exact) >= 2 and largest > max(exact):
        ns = np.array(sorted(exact))
        accs = np.array([exact[n] for n in ns])
        slope, icept = np.polyfit(np.log(ns), np.log(1 - accs), 1)
        power = 1 - math.exp(icept + slope * math.log(largest))
        b, a = np.polyfit(np.log(ns), accs, 1)
        linear = a + b * math.log(largest)
        print(f"exact accuracy vs n: {dict(zip(ns.tolist(), accs.round(4).tolist()))}")
        print(f"  power law: test error = {math.exp(icept):.3g}·n^({slope:.3f}) → at n = {largest}: "
              f"accuracy {power:.4f};  linear in ln n: {linear:.4f}")
        for r in results:
            if r["n"] == largest and r["method"] == "cg":
                print(f"  cg ({r['dtype']}, matrix-free, {r['iterations']} steps, residual "
                      f"{r['residual']:.1e}) at n = {largest}: acc {r['acc']:.4f} "
                      f"({100 * (r['acc'] - power):+.2f} points vs the power-law extrapolation), "
                      f"{r['t_total']:.0f} s, peak RSS {r['peak_rss_gib']:.2f} GiB")
            if r["n"] == largest and r["method"] == "nystrom":
                print(f"  nystrom M={r['M']} ({r['dtype']}, {r.get('mode')}) at n = {largest}: acc "
                      f"{r['acc']:.4f} ({100 * (r['acc'] - power):+.2f} points vs the power-law "
                      f"extrapolation), {r['t_total']:.0f} s, peak RSS {r['peak_rss_gib']:.2f} GiB")

if __name__ == "__main__":
    main()
