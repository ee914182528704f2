"""The ``ntkit`` command line: thin wrappers around the library."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import NtkitError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntkit",
        description="Neural Tangent Kernels for PyTorch: kernels, training predictions, the lab.",
        epilog="Example: ntkit lab --quick --out /tmp/report",
    )
    parser.add_argument("--version", action="version", version=f"ntkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    lab = sub.add_parser(
        "lab",
        help="run the lecture's experiments on an embedded data set and write a report",
        description="Run the lab's experiments on scikit-learn's digits (embedded) and write "
        "metrics.json into --out.",
        epilog="Example: ntkit lab --quick --out /tmp/report",
    )
    lab.add_argument("--out", default="lab-report", help="output folder (default: lab-report)")
    lab.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    lab.add_argument("--quick", action="store_true", help="small sizes, for tests and a first look")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "lab":
            from .lab import run

            metrics = run(args.out, quick=args.quick, seed=args.seed)
            width = metrics["width"]
            print(f"width convergence on digits (n={metrics['n']}):")
            for m, err in zip(width["widths"], width["relative_error"]):
                print(f"  m={m:>6}  relative error {err:.4f}")
            print(f"  fitted log-log slope {width['slope']:.3f} (theory: -0.5)")
            print(f"report written to {args.out}/metrics.json")
    except NtkitError as err:
        print(f"ntkit: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
