"""Time of ``ntkit lab``: the default run, ``--quick``, and ``--arch cnn`` on MNIST.

Each case runs ``ntkit lab`` in a fresh subprocess (so imports count, as for a user) and
reports the wall time, the CPU time of the process (user + system, from ``getrusage`` of
the children: the lab and the helper process that draws its figures; on a shared machine
this is the better measure of the work done), the CPU seconds of each experiment in the
lab's own process (``config.json``'s ``cpu_seconds``, when the version records them), the load
average before and after (other jobs on the machine inflate the wall time), and where the
time went (``config.json``'s ``seconds``: data preparation and each experiment; the rest is
start-up — importing torch and matplotlib — and writing the report).

Targets (issue 18): default on digits ≤ 60 s, ``--quick`` ≤ 20 s on 2 cores; ``--arch cnn``
on the embedded MNIST subset ≤ 5 min.

Reproduce:
    .venv/bin/python benchmarks/lab.py                      # all three cases
    .venv/bin/python benchmarks/lab.py --cases quick default
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "quick": ["--quick"],
    "default": [],
    "cnn-mnist": ["--dataset", "mnist", "--arch", "cnn", "--experiments", "random-labels", "bound"],
}


def run_case(name: str, args: list[str], threads: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"ntkit-lab-bench-{name}-")) / "report"
    cmd = [sys.executable, "-m", "ntkit.cli", "lab", *args, "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr}")
    cfg = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "case": name,
        "args": " ".join(args) or "(default)",
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "load_before": round(load0, 1),
        "load_after": round(os.getloadavg()[0], 1),
        "seconds": cfg["seconds"],
        "cpu_seconds": cfg.get("cpu_seconds"),  # in the lab's own process, per experiment
        "status": {k: v["status"] for k, v in metrics["status"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS (the lab itself uses 1)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} logical CPUs, load average {os.getloadavg()}")
    for name in args.cases:
        res = run_case(name, CASES[name], args.threads)
        inside = res["seconds"]
        startup = res["wall_s"] - inside["total"]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in inside.items() if k != "total")
        print(f"{name:10s} wall {res['wall_s']:7.1f} s  cpu {res['cpu_s']:7.1f} s  "
              f"load {res['load_before']}→{res['load_after']}  | run {inside['total']:.1f} s ({parts}); "
              f"start-up + writing {startup:.1f} s | {res['status']}")
        if res["cpu_seconds"]:
            cpu = res["cpu_seconds"]
            print(f"{'':10s} cpu in run {cpu['total']:.1f} s (" + ", ".join(
                f"{k} {v:.1f}" for k, v in cpu.items() if k != "total") + ")")


if __name__ == "__main__":
    main()
