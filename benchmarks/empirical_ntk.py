"""Empirical NTK: ntkit's methods vs a plain torch.func reference vs neural-tangents.

Models (issue 3), both on scikit-learn's 8×8 digit images (``load_digits``, pixels / 16):

- ``mlp``: 64 → 1024 → 1024 → 10 (ReLU), ``nn.Linear`` layers, on the flattened images;
- ``cnn``: Conv(1→16, 3×3, same)-ReLU-Conv(16→32, 3×3, same)-ReLU-Flatten-Linear(2048→10).

For every model, ``n``, dtype and ``output`` ("trace" → (n, n), "full" → (n, n, 10, 10)),
each method runs in a fresh subprocess (so the peak-RSS column is clean): one warm-up call
(for neural-tangents: the ``jit`` compilation), then the median of ``--repeats`` calls. The
whole grid is repeated ``--rounds`` times, alternating methods, and the table shows the median
over rounds. ``x2 = None`` (the symmetric kernel of the n inputs) everywhere.

- ``reference``: the torch.func tutorial recipe — per-example Jacobians by
  ``vmap(jacrev)``, contracted with ``einsum`` per parameter. When the Jacobians of all n
  examples exceed ``--ref-memory`` the rows and columns are done in chunks (the recipe on
  blocks; nothing else changes). ``--ref-rows k`` (issue-15 models) runs only its first k
  row chunks and adds (row chunks − k) × their mean time, noted "rows k/R" in the table:
  every row chunk is the same work, so this measures at the real n a recipe of hours.
- ``auto``/``structured``/``jacobian``/``ntk_vp``: ``nk.empirical_ntk(model, x, method=...)``.
- ``nt1``/``nt2``/``nt3``: neural-tangents' ``empirical_ntk_fn`` implementations 1
  (Jacobian contraction), 2 (NTK-vector products), 3 (structured derivatives), jitted, on
  the same architecture (standard parameterization), run with the python of ``.venv-nt``
  when that virtual environment exists (create it with ``scripts/setup_nt_venv.sh``).

Subprocesses run with OpenMP's default waiting policy (what users get); ``--omp-passive``
sets ``OMP_WAIT_POLICY=PASSIVE``, which is better when other jobs share the cores (spinning
threads then wait for a time slice) but costs every small parallel op a thread wake-up
(measured: 1.6-1.9x slower structured kernels at n=64 on a quiet machine). A case that
runs past ``--timeout`` is shown as ``>T``. "peak MB" is the growth of the
process's peak RSS over its RSS before the first call; "RSS MB" the process's peak RSS
(issue-15 models only). "ref/x" is the reference's time over
the method's; "best/auto" compares ntkit's fastest explicit method with ``auto``.

Issue 15 adds ``--models resnet18 transformer lstm`` (``benchmarks/empirical_models.py``:
a ResNet-18-shaped CNN on 3×32×32, a 4-layer transformer encoder on token ids with an
attention mask, an LSTM classifier; random inputs, no neural-tangents twin). Their reference
is the same ``vmap(jacrev)`` recipe over the model's input tuple/dict (for the LSTM it needs
ntkit's transformable forward: torch's fused LSTM does not run under ``vmap``).

Reproduce (about 30–60 min on 2 cores; the slow methods dominate):

    bash scripts/setup_nt_venv.sh                       # optional: neural-tangents columns
    .venv/bin/python benchmarks/empirical_ntk.py --json /tmp/empirical_ntk.json
    .venv/bin/python benchmarks/empirical_ntk.py --n 64 --methods auto structured nt3 --rounds 5
    .venv/bin/python benchmarks/empirical_ntk.py --models transformer lstm --n 256 --dtype float32 \
        --output trace --repeats 1 --timeout 900
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NT_PYTHON = ROOT / ".venv-nt" / "bin" / "python"
NTKIT_METHODS = ("auto", "structured", "jacobian", "ntk_vp")
NT_METHODS = ("nt1", "nt2", "nt3")
#: issue-15 models (benchmarks/empirical_models.py): random inputs, no neural-tangents twin
MODERN = ("resnet18", "transformer", "lstm")


# ---------------------------------------------------------------------------- workers
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _time(call, repeats: int, slow: float = 20.0) -> list[float]:
    """One warm-up call, then ``repeats`` timed calls (just the warm-up if it was slow)."""
    import time

    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    if first > slow:
        return [first]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def torch_worker(case: dict) -> dict:
    import numpy as np
    import torch
    from torch import nn
    from torch.func import functional_call, jacrev, vmap

    import ntkit as nk

    torch.set_num_threads(case["threads"])
    dtype = getattr(torch, case["dtype"])
    torch.manual_seed(0)
    if case["model"] in MODERN:
        return modern_worker(case, dtype)
    if case["model"] == "mlp":
        model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                              nn.Linear(1024, 10))
    else:
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(32 * 64, 10))
    model = model.to(dtype)
    x = torch.from_numpy(np.load(case["data"])).to(dtype)
    x = x.reshape(len(x), 64) if case["model"] == "mlp" else x.reshape(len(x), 1, 8, 8)
    params = {k: p.detach() for k, p in model.named_parameters()}
    n_params = sum(p.numel() for p in params.values())
    trace = case["output"] == "trace"

    def single(p, xi):
        return functional_call(model, p, (xi[None],))[0]

    def jacobians(xs):
        jac = vmap(jacrev(single), (None, 0))(params, xs)
        return [j.reshape(len(xs), 10, -1) for j in jac.values()]

    def contract(j1, j2):
        if trace:
            return sum(torch.einsum("iap,jap->ij", a, b) for a, b in zip(j1, j2))
        return sum(torch.einsum("iap,jbp->ijab", a, b) for a, b in zip(j1, j2))

    def reference():
        n = len(x)
        chunk = max(1, min(n, int(case["ref_memory"] // (2 * 10 * n_params * x.element_size()))))
        if chunk >= n:
            j = jacobians(x)
            return contract(j, j)
        rows = []
        for r in range(0, n, chunk):
            j1 = jacobians(x[r : r + chunk])
            rows.append(torch.cat([contract(j1, jacobians(x[c : c + chunk]))
                                   for c in range(0, n, chunk)], dim=1))
        return torch.cat(rows)

    def ours():
        return nk.empirical_ntk(model, x, output=case["output"], method=case["method"])

    call = reference if case["method"] == "reference" else ours
    chosen = None
    if case["method"] == "auto":
        chosen = nk.empirical.plan_empirical_ntk(model, x, output=case["output"]).method
    base = _rss()
    times = _time(call, case["repeats"])
    peak = _peak_rss() - base
    result = call() if len(times) > 1 else None
    checksum = float(result.double().sum()) if result is not None else None
    return {"seconds": statistics.median(times), "peak": max(peak, 0), "chosen": chosen,
            "checksum": checksum}


def modern_worker(case: dict, dtype) -> dict:
    """The issue-15 models (``empirical_models.py``): any inputs, a selected output."""
    import contextlib

    import torch
    from torch.func import functional_call, jacrev, vmap

    import ntkit as nk
    from ntkit.empirical.inputs import OutputSelector

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from empirical_models import build

    model, x, output_fn = build(case["model"], case["n"], dtype)
    select = OutputSelector(output_fn)
    keys = list(x) if isinstance(x, dict) else None
    leaves = tuple(x.values()) if keys else (x,)
    params = {k: p.detach() for k, p in model.named_parameters()}
    n_params = sum(p.numel() for p in params.values())
    n = len(leaves[0])
    o = 10
    trace = case["output"] == "trace"

    def single(p, *xi):
        batch = tuple(t[None] for t in xi)
        args, kwargs = ((), dict(zip(keys, batch))) if keys else (batch, {})
        return select(functional_call(model, p, args, kwargs))[0].reshape(-1)

    def jacobians(lo, hi):
        jac = vmap(jacrev(single), (None, *[0] * len(leaves)))(params, *(t[lo:hi] for t in leaves))
        return [j.reshape(hi - lo, o, -1) for j in jac.values()]

    def contract(j1, j2):
        if trace:
            return sum(torch.einsum("iap,jap->ij", a, b) for a, b in zip(j1, j2))
        return sum(torch.einsum("iap,jbp->ijab", a, b) for a, b in zip(j1, j2))

    chunk = max(1, min(n, int(case["ref_memory"] // (2 * o * n_params * dtype.itemsize))))
    starts = range(0, n, chunk)
    # --ref-rows: the recipe's row chunks are identical work (one Jacobian of the row chunk, one
    # of every other column chunk, one contraction each), so timing the first k at the real n
    # and adding (row chunks - k) times their mean measures a recipe too slow to run whole
    sampled = starts[: case["ref_rows"]] if case.get("ref_rows") else starts
    row_seconds: list[float] = []

    def reference():
        import time

        rows = []
        row_seconds.clear()
        for r in sampled:
            t0 = time.perf_counter()
            j1 = jacobians(r, min(n, r + chunk))
            rows.append(torch.cat([contract(j1, j1) if c == r else
                                   contract(j1, jacobians(c, min(n, c + chunk)))
                                   for c in range(0, n, chunk)], dim=1))
            row_seconds.append(time.perf_counter() - t0)
        return torch.cat(rows)

    def ours():
        return nk.empirical_ntk(model, x, output=case["output"], method=case["method"],
                                output_fn=output_fn, memory_budget=case.get("budget"))

    # the plain recipe cannot run torch's fused LSTM under vmap: give it ntkit's transformable
    # forward (reported in the table's note)
    wrap = contextlib.nullcontext()
    if case["method"] == "reference" and case["model"] == "lstm":
        from ntkit.empirical.traceable import traceable

        wrap = traceable(model)
    call = reference if case["method"] == "reference" else ours
    # torch._dynamo is imported by the first call of torch.func's vmap and of ntkit's hooked
    # forwards alike (2-3 s, once per process): imported here so that neither time has it;
    # ntkit's planning (auto's trial, checks) stays in its time (auto's choice is read after)
    import torch._dynamo

    base = _rss()
    with wrap:
        times = _time(call, case["repeats"])
        peak = _peak_rss() - base
        result = call() if len(times) > 1 else None
    chosen = None
    if case["method"] == "auto":
        chosen = nk.empirical.plan_empirical_ntk(model, x, output=case["output"], output_fn=output_fn,
                                                 memory_budget=case.get("budget")).method
    checksum = float(result.double().sum()) if result is not None else None
    seconds, note = statistics.median(times), None
    if case["method"] == "reference" and len(sampled) < len(starts):
        # the last call's rows; its fixed cost (outside the rows) is counted once
        seconds += (len(starts) - len(sampled)) * statistics.mean(row_seconds)
        note, checksum = f"rows {len(sampled)}/{len(starts)}", None
    return {"seconds": seconds, "peak": max(peak, 0), "chosen": chosen,
            "checksum": checksum, "peak_rss": _peak_rss(), "sampled": note}


def nt_worker(case: dict) -> dict:
    import numpy as np

    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={case['threads'] > 1}")
    import jax

    jax.config.update("jax_enable_x64", case["dtype"] == "float64")
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    x = np.load(case["data"]).astype(case["dtype"])
    if case["model"] == "mlp":
        layers = [stax.Dense(1024, parameterization="standard"), stax.Relu(),
                  stax.Dense(1024, parameterization="standard"), stax.Relu(),
                  stax.Dense(10, parameterization="standard")]
        x = x.reshape(len(x), 64)
    else:
        layers = [stax.Conv(16, (3, 3), padding="SAME", parameterization="standard"), stax.Relu(),
                  stax.Conv(32, (3, 3), padding="SAME", parameterization="standard"), stax.Relu(),
                  stax.Flatten(), stax.Dense(10, parameterization="standard")]
        x = x.reshape(len(x), 8, 8, 1)  # NHWC
    init_fn, apply_fn, _ = stax.serial(*layers)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    impl = int(case["method"][-1])
    fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,) if case["output"] == "trace" else (),
                                     vmap_axes=0, implementation=impl))
    xj = jnp.asarray(x)
    base = _rss()
    times = _time(lambda: fn(xj, None, params).block_until_ready(), case["repeats"])
    return {"seconds": statistics.median(times), "peak": max(_peak_rss() - base, 0),
            "chosen": None, "checksum": None}


# ---------------------------------------------------------------------------- driver
def run_case(case: dict, timeout: float) -> dict:
    python = NT_PYTHON if case["method"] in NT_METHODS else Path(sys.executable)
    # --omp-passive: for a shared machine, where spinning OpenMP threads wait for a time slice
    # (30x slower small ops, measured); XLA's thread pool (neural-tangents) is unaffected.
    passive = {"OMP_WAIT_POLICY": "PASSIVE"} if case.get("omp_passive") else {}
    env = {**passive, **os.environ, "PYTHONPATH": str(ROOT / "src"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        proc = subprocess.run([str(python), __file__, "--worker", json.dumps(case)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f">{timeout:g}s", "timeout": timeout}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": (lines[-1] if lines else f"exit {proc.returncode}")[:70]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_digits_file(directory: str, n: int) -> str:
    import numpy as np
    from sklearn.datasets import load_digits

    path = os.path.join(directory, f"digits_{n}.npy")
    np.save(path, (load_digits().data[:n] / 16.0).astype("float64"))
    return path


def summarize(results: list[dict]) -> dict:
    good = [r for r in results if "seconds" in r]
    if not good:
        return results[0]
    return {"seconds": statistics.median(r["seconds"] for r in good),
            "peak": statistics.median(r["peak"] for r in good),
            "peak_rss": max(r.get("peak_rss", 0) for r in good),
            "chosen": good[0].get("chosen"), "rounds": len(good), "checksum": good[0].get("checksum"),
            "sampled": good[0].get("sampled")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--n", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--output", nargs="+", default=["trace", "full"])
    parser.add_argument("--methods", nargs="+",
                        default=["reference", *NTKIT_METHODS, *NT_METHODS])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per subprocess")
    parser.add_argument("--rounds", type=int, default=1, help="repeats of the whole grid")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ref-memory", type=float, default=4e9,
                        help="bytes of Jacobians the reference may hold at once")
    parser.add_argument("--ref-rows", type=int, default=None,
                        help="issue-15 models: run only the reference's first k row chunks and add "
                             "(row chunks - k) x their mean time (for a recipe of hours)")
    parser.add_argument("--budget", type=float, default=None,
                        help="memory_budget (bytes) of ntkit's methods on the issue-15 models "
                             "(default: ntkit's default, 1 GiB)")
    parser.add_argument("--omp-passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE in torch subprocesses (a busy machine)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.worker:
        case = json.loads(args.worker)
        worker = nt_worker if case["method"] in NT_METHODS else torch_worker
        print(json.dumps(worker(case)))
        return

    methods = list(args.methods)
    if all(m in MODERN for m in args.models):
        methods = [m for m in methods if m not in NT_METHODS]
    if not NT_PYTHON.exists() and any(m in NT_METHODS for m in methods):
        print(f"neural-tangents skipped: {NT_PYTHON} not found (run scripts/setup_nt_venv.sh)")
        methods = [m for m in methods if m not in NT_METHODS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = {n: load_digits_file(tmp, n) for n in args.n}
        grid = [(m, n, d, o) for m in args.models for n in args.n for d in args.dtype
                for o in args.output]
        raw: dict = {}
        for r in range(args.rounds):
            for key in grid:
                order = methods if r % 2 == 0 else methods[::-1]
                for method in order:
                    model, n, dtype, output = key
                    case = {"model": model, "n": n, "dtype": dtype, "output": output,
                            "method": method, "repeats": args.repeats, "threads": args.threads,
                            "data": data[n], "ref_memory": args.ref_memory,
                            "omp_passive": args.omp_passive, "budget": args.budget,
                            "ref_rows": args.ref_rows}
                    res = run_case(case, args.timeout)
                    raw.setdefault((*key, method), []).append(res)
                    shown = res.get("error") or f"{res['seconds']:.4f}s"
                    print(f"  round {r + 1}: {model} n={n} {dtype} {output} {method}: {shown}",
                          file=sys.stderr, flush=True)
        for key in grid:
            summary = {m: summarize(raw[(*key, m)]) for m in methods}
            rows.append((key, summary))

    print(f"\nthreads={args.threads}, rounds={args.rounds}, repeats={args.repeats}, "
          f"timeout={args.timeout:g}s")
    header = (f"{'model':>5} {'n':>4} {'dtype':>8} {'output':>6} {'method':>10} {'seconds':>9} "
              f"{'peak MB':>8} {'RSS MB':>7} {'ref/x':>8} {'note':>16}")
    print(header)
    print("-" * len(header))
    out = []
    for (model, n, dtype, output), summary in rows:
        ref = summary.get("reference", {})
        ref_s = ref.get("seconds") or ref.get("timeout")
        ref_lower = "seconds" not in ref
        ours = {m: s["seconds"] for m, s in summary.items()
                if m in ("structured", "jacobian", "ntk_vp") and "seconds" in s}
        nts = {m: s["seconds"] for m, s in summary.items() if m in NT_METHODS and "seconds" in s}
        for method, s in summary.items():
            if "seconds" not in s:
                print(f"{model:>5} {n:>4} {dtype:>8} {output:>6} {method:>10} {s['error']:>9}")
                out.append({"model": model, "n": n, "dtype": dtype, "output": output,
                            "method": method, **s})
                continue
            ratio = "-"
            if ref_s and method != "reference":
                ratio = f"{'>' if ref_lower else ''}{ref_s / s['seconds']:.1f}"
            note = s.get("sampled") or ""
            if method == "auto" and ours:
                note = f"{s['chosen']}; best/auto {min(ours.values()) / s['seconds']:.2f}"
            if method == "auto" and nts:
                note += f" NT/auto {min(nts.values()) / s['seconds']:.1f}"
            print(f"{model:>5} {n:>4} {dtype:>8} {output:>6} {method:>10} {s['seconds']:9.4f} "
                  f"{s['peak'] / 2**20:8.0f} {s.get('peak_rss', 0) / 2**20:7.0f} {ratio:>8} {note:>16}")
            out.append({"model": model, "n": n, "dtype": dtype, "output": output,
                        "method": method, **s})
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
