"""Running the lab: validate the request, prepare the data, run experiments, write the report."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, ParameterError
from .config import EXPERIMENT_NAMES, Sizes
from .context import Context, log_line
from .dataset import prepare
from .models import ARCHS, lab_model
from .results import ExperimentResult

_MODULES = {
    "width": "width",
    "lazy": "lazy",
    "random-labels": "random_labels",
    "bound": "bound",
    "spectrum": "spectrum",
}


@dataclass
class LabResult:
    """The outcome of :func:`run`.

    Attributes:
        experiments: one :class:`~ntkit.lab.common.ExperimentResult` per experiment, in order
            (``.metrics``, ``.figures`` with matplotlib figures and readings, ``.summary``).
        metrics: what ``metrics.json`` holds: ``{"data": ..., "seed": ..., "quick": ...,
            "experiments": [...], <name>: <that experiment's metrics>, ...}``.
        config: what ``config.json`` holds (seed, data, sizes, versions, timings).
        out: the report folder, when one was written.
    """

    experiments: list[ExperimentResult]
    metrics: dict[str, Any]
    config: dict[str, Any]
    out: Path | None = None

    def __getitem__(self, name: str) -> ExperimentResult:
        for exp in self.experiments:
            if exp.name == _canonical(name):
                return exp
        raise KeyError(name)

    def summary(self) -> str:
        """The terminal summary table."""
        from .report import summary_text

        return summary_text(self)


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def resolve_experiments(names: str | Iterable[str] | None) -> list[str]:
    """Validate experiment names (``"all"``, a name, a comma list, or a sequence of names)."""
    if names is None:
        return list(EXPERIMENT_NAMES)
    if isinstance(names, str):
        names = names.split(",")
    wanted = [_canonical(n) for n in names if str(n).strip()]
    if not wanted:
        raise ParameterError(
            f"no experiment named in {names!r}; name some of {', '.join(EXPERIMENT_NAMES)} "
            "(comma- or space-separated), or all"
        )
    if wanted == ["all"]:
        return list(EXPERIMENT_NAMES)
    for n in wanted:
        if n not in _MODULES:
            raise ParameterError(
                f"unknown experiment {n!r}; choose from {', '.join(EXPERIMENT_NAMES)} (or all)"
            )
    return [n for n in EXPERIMENT_NAMES if n in wanted]


def _device(device: str | torch.device | None) -> torch.device:
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as err:
        raise ParameterError(f"unknown device {device!r}; use cpu or cuda") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ParameterError(f"device {device!r} is not supported by the lab; use cpu or cuda")
    return dev


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("ntkit", "torch", "numpy", "scipy", "scikit-learn", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "not installed"
    return out


def run(
    experiments: str | Iterable[str] | None = "all",
    *,
    dataset: str = "digits",
    target: str | None = None,
    seed: int = 0,
    quick: bool = False,
    device: str | torch.device | None = "cpu",
    out: str | os.PathLike[str] | None = None,
    sizes: Sizes | dict[str, Any] | None = None,
    progress: bool | str = False,
    threads: int | None = None,
    arch: str = "fc",
    classes: str | tuple[str, str] | None = None,
    standardize: bool = True,
    image_shape: str | tuple[int, ...] | None = None,
) -> LabResult:
    """Run lab experiments and (with ``out``) write the report.

    Args:
        experiments: ``"all"`` (default), one name, a comma-separated string or a sequence of
            names from ``width``, ``lazy``, ``random-labels``, ``bound``, ``spectrum``.
        dataset: ``digits`` (default), ``breast_cancer``, ``wine``, ``iris``, ``mnist1d``,
            ``mnist``, ``csv:PATH`` or ``npz:PATH`` (see :func:`ntkit.data.load_dataset`); the
            lab uses its two-class subset (:mod:`ntkit.lab.dataset`).
        target: the target column of a CSV file.
        seed: the run's seed; the same seed gives the same ``metrics.json``.
        quick: use :meth:`Sizes.quick` (a first look, seconds) instead of the defaults.
        device: ``"cpu"`` or ``"cuda"``.
        out: folder for ``report.html``, ``figures/``, ``metrics.json``, ``config.json``;
            written atomically. ``None``: write nothing.
        sizes: a :class:`Sizes`, or a dict of fields overriding the preset.
        progress: ``True``/``"bar"``: tqdm bars on stderr; ``"log"``: one timestamped line
            per experiment step on stderr (for CI, nohup, files); ``False``: silent.
        arch: the network of ``random-labels`` and ``bound`` (:mod:`ntkit.lab.models`):
            ``"fc"`` (the lecture's two-layer ReLU net, default) or ``"cnn"`` (a small CNN and
            its CNTK; needs images).
        classes: the two classes, ``"A,B"`` or ``("A", "B")`` (``A`` is ``+1``); default: the
            two most frequent (:mod:`ntkit.lab.dataset`).
        standardize: standardize the inputs before putting them on the sphere (default);
            ``False`` only centres them.
        image_shape: ``"H,W"`` / ``"C,H,W"`` for flat rows that are images (CSV/NPZ).
        threads: torch CPU threads during the run (default 1; restored afterwards). The
            lab's matrices have a few hundred rows: one thread is about as fast as two on an
            idle machine and several times faster on a busy one (benchmarks/RESULTS.md), and a
            fixed count keeps ``metrics.json`` independent of the machine's core count.

    Returns:
        A :class:`LabResult`.

    Raises:
        NtkitError: unknown experiment or data set, unreadable data, a data set too small for
            an experiment, an unusable device or output folder — before any experiment runs
            (except for output-folder errors met while writing).

    Example:
        >>> res = nk.lab.run("width", quick=True)
        >>> res["width"].metrics["two_layer"]["slope"]
    """
    names = resolve_experiments(experiments)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    preset = Sizes.quick() if quick else Sizes.default()
    if isinstance(sizes, Sizes):
        sizes.validate()
        preset = sizes
    elif sizes:
        preset = preset.with_(**sizes)
    dev = _device(device)
    if threads is None:
        threads = 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ParameterError(f"threads must be a positive integer, got {threads!r}")
    if arch not in ARCHS:
        raise ParameterError(f"unknown architecture {arch!r}; use fc or cnn")
    if out is not None:
        from .report import _check_destination, destination

        _check_destination(destination(out))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        opts = {"arch": arch, "classes": classes, "standardize": bool(standardize),
                "image_shape": image_shape}
        return _run(names, dataset, target, seed, bool(quick), dev, out, preset, progress, threads, opts)
    finally:
        torch.set_num_threads(previous_threads)


def _run(names, dataset, target, seed, quick, dev, out, preset, progress, threads, opts) -> LabResult:
    if out is None:
        return _run_experiments(names, dataset, target, seed, quick, dev, out, preset, progress, threads,
                                opts, None)
    from .render import Renderer
    from .report import terminate_as_exit

    # SIGTERM as SystemExit for the whole run: the renderer's helper process and its
    # temporary folder are cleaned up however the run ends
    with terminate_as_exit(), Renderer() as renderer:  # draws figures while the next experiment runs
        return _run_experiments(names, dataset, target, seed, quick, dev, out, preset, progress, threads,
                                opts, renderer)


def _run_experiments(names, dataset, target, seed, quick, dev, out, preset, progress, threads, opts,
                     renderer) -> LabResult:
    start, cpu_start = time.perf_counter(), time.process_time()
    data = prepare(dataset, preset, seed, dev, target=target, classes=opts["classes"],
                   standardize=opts["standardize"], image_shape=opts["image_shape"])
    model = lab_model(opts["arch"], data, preset.rl_width, preset.cnn_channels)
    modules = {n: import_module(f"{__package__}.{_MODULES[n]}") for n in names}
    n_train, n_test = int(data.x_train.shape[0]), int(data.x_test.shape[0])
    for n, mod in modules.items():
        if n_train < mod.MIN_TRAIN or n_test < mod.MIN_TEST:
            need = f"{mod.MIN_TRAIN} training" + (f" and {mod.MIN_TEST} test" if mod.MIN_TEST else "")
            raise DataError(
                f"experiment {n!r} needs at least {need} examples, but {dataset} gives {n_train} "
                f"and {n_test} ({data.n_available} examples in its two largest classes, at most "
                f"70% of them train); use more data or leave {n!r} out with --experiments"
            )
    ctx = Context(data=data, sizes=preset, seed=seed, device=dev, progress=progress, model=model)
    results: list[ExperimentResult] = []
    timings: dict[str, float] = {"data": round(time.perf_counter() - start, 3)}
    cpu: dict[str, float] = {"data": round(time.process_time() - cpu_start, 3)}
    for i, n in enumerate(names, 1):
        ctx.experiment = n
        if progress == "log":
            log_line(f"[{i}/{len(names)}] {n}: start")
        elif progress:
            print(f"[{i}/{len(names)}] {n} ...", file=sys.stderr, flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        results.append(modules[n].run(ctx))
        timings[n] = round(time.perf_counter() - t0, 3)
        cpu[n] = round(time.process_time() - c0, 3)
        if renderer is not None:
            for fig in results[-1].figures:
                renderer.submit(fig.name, fig.figure)
        if progress == "log":
            st, _reason = results[-1].status
            log_line(f"[{i}/{len(names)}] {n}: done in {timings[n]:.1f} s ({st})")
    timings["total"] = round(time.perf_counter() - start, 3)
    cpu["total"] = round(time.process_time() - cpu_start, 3)
    metrics: dict[str, Any] = {
        "data": data.summary(),
        "seed": seed,
        "quick": bool(quick),
        "experiments": names,
        "arch": model.name,
        "status": {},
    }
    for res in results:
        metrics[res.name] = res.metrics
        st, reason = res.status
        metrics["status"][res.name] = {"status": st, "reason": reason}
    config = {
        "seed": seed,
        "dataset": dataset,
        "target": target,
        "data": data.summary(),
        "quick": bool(quick),
        "arch": model.name,
        "classes": opts["classes"] if opts["classes"] is None else list(data.classes),
        "standardize": opts["standardize"],
        "image_shape": None if data.image_shape is None else list(data.image_shape),
        "device": str(dev),
        "experiments": names,
        "sizes": preset.as_dict(),
        "versions": _versions(),
        "torch_threads": threads,
        "seconds": timings,
        "cpu_seconds": cpu,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result = LabResult(results, metrics, config)
    if out is not None:
        from .report import write_report

        figures = {fig.name: fig.figure for exp in results for fig in exp.figures}
        result.out = write_report(result, out, renderer.images(figures) if renderer is not None else None)
    return result


def run_all(**kwargs: Any) -> LabResult:
    """Every experiment: ``run("all", **kwargs)``."""
    return run("all", **kwargs)
