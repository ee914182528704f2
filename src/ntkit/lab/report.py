"""Writing the lab's report: ``report.html``, ``figures/*.png``, ``metrics.json``, ``config.json``.

The report is written into a fresh temporary folder next to the destination and moved into
place only once every file is complete, so an interrupted (Ctrl-C, SIGTERM) or failed run
leaves the previous report as it was and no temporary folder behind. A destination that
holds anything but an earlier ntkit report (or nothing) is never replaced: the marker file
of a report lists every file the lab wrote, and a folder with any other file (a user's
notes added to an old report, a user's own ``figures/`` or ``config.json``) is refused.
An ``--out`` that is a symbolic link to a folder writes the report into the link's target
(the link stays).
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NtkitError

if TYPE_CHECKING:  # pragma: no cover
    from .runner import LabResult

#: Marker file that identifies a folder written by the lab (and so safe to replace).
MARKER = ".ntkit-lab"
_OURS = {MARKER, "report.html", "metrics.json", "config.json", "figures"}


class ReportError(NtkitError):
    """The report cannot be written where it was asked to go."""


def axis_ranges(fig: Any) -> list[tuple[float, float, float, float]]:
    """``(x_lo, x_hi, y_lo, y_hi)`` of every axes of ``fig`` (recorded in the HTML).

    Read without drawing: matplotlib applies pending autoscaling when the limits are read,
    and the lab's axes have no fixed aspect (the one thing a draw would still change), so
    these are the limits of the saved figure (and a figure is not drawn twice).
    """
    return [(*ax.get_xlim(), *ax.get_ylim()) for ax in fig.axes]


def figure_problems(fig: Any) -> list[str]:
    """What would make a figure unpublishable: an axes without a label, an empty or
    non-finite axis range, or no finite data drawn. ``[]`` when fine."""
    import math

    problems = []
    for i, ax in enumerate(fig.axes):
        twin = any(other is not ax and other.bbox.bounds == ax.bbox.bounds for other in fig.axes[:i])
        if not ax.get_ylabel():
            problems.append(f"axes {i} has no y label")
        if not twin and not ax.get_xlabel():
            problems.append(f"axes {i} has no x label")
        x0, x1, y0, y1 = (*ax.get_xlim(), *ax.get_ylim())
        if not all(math.isfinite(v) for v in (x0, x1, y0, y1)) or x0 == x1 or y0 == y1:
            problems.append(f"axes {i} has an empty or non-finite range {(x0, x1, y0, y1)}")
        drawn = 0
        for line in ax.get_lines():
            xs, ys = line.get_xdata(), line.get_ydata()
            try:
                drawn += sum(1 for a, b in zip(xs, ys) if math.isfinite(float(a)) and math.isfinite(float(b)))
            except (TypeError, ValueError):
                drawn += 1
        drawn += len(ax.collections)
        if drawn == 0:
            problems.append(f"axes {i} shows no finite data")
    return problems


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def destination(out: str | os.PathLike[str]) -> Path:
    """The folder a report for ``--out out`` goes to: absolute, and a symbolic link's target."""
    path = Path(out).expanduser().absolute()
    return path.resolve() if path.is_symlink() else path


def _files_below(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def _check_destination(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder; choose a folder for the report")
    if not out.is_dir():
        return
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    if MARKER not in entries:
        raise ReportError(
            f"--out {out} already holds other files ({', '.join(sorted(entries)[:5])}) and is not a "
            "report written by the lab, which replaces the whole folder; choose a new or empty "
            "folder"
        )
    marker_lines = (out / MARKER).read_text(errors="replace").splitlines()
    written = set(marker_lines[1:]) | {MARKER}
    present = _files_below(out)
    if len(marker_lines) > 1:
        foreign = sorted(present - written)
    else:  # a marker of an older version lists no files: only the report's names are ours
        foreign = sorted(f for f in present if f.split("/")[0] not in _OURS
                         or (f.startswith("figures/") and not f.endswith(".png")))
    if foreign:
        raise ReportError(
            f"--out {out} is an earlier report, but also holds files the lab did not write "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); the lab replaces "
            "the whole folder, so move those files elsewhere or choose another --out"
        )


@contextlib.contextmanager
def terminate_as_exit():
    """Inside the block SIGTERM raises SystemExit, so ``finally`` blocks and context managers
    run (temporary folders are removed, helper processes stopped); the previous handler is
    restored afterwards. Only in the main thread (elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_report(result: LabResult, out: str | os.PathLike[str],
                 images: dict[str, bytes] | None = None) -> Path:
    """Write the report of ``result`` into the folder ``out`` (atomically; see module doc).

    ``images``: PNG bytes of some figures, by name, already drawn (:mod:`ntkit.lab.render`);
    the others are drawn here by :func:`png_bytes`.
    """
    out = destination(out)
    _check_destination(out)
    with terminate_as_exit():
        return _write_atomically(result, out, images or {})


def _write_atomically(result: LabResult, out: Path, images: dict[str, bytes]) -> Path:
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the report is an ordinary folder
        _write_files(result, tmp, images)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                raise
            tmp = None
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
            tmp = None
    except OSError as err:
        raise ReportError(
            f"cannot write the report to {out} ({err.strerror or err}); choose a writable folder with --out"
        ) from err
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_files(result: LabResult, folder: Path, drawn: dict[str, bytes]) -> None:
    (folder / "figures").mkdir()
    images: dict[str, bytes] = {}
    for exp in result.experiments:
        for fig in exp.figures:
            data = drawn.get(fig.name) or png_bytes(fig.figure)
            images[fig.name] = data
            (folder / "figures" / f"{fig.name}.png").write_bytes(data)
    (folder / "metrics.json").write_text(json.dumps(result.metrics, indent=1, allow_nan=False) + "\n")
    (folder / "config.json").write_text(json.dumps(result.config, indent=1, allow_nan=False) + "\n")
    (folder / "report.html").write_text(render_html(result, images), encoding="utf-8")
    listing = "\n".join(sorted(_files_below(folder)))
    (folder / MARKER).write_text(
        "written by `ntkit lab`; the whole folder is replaced by the next run. Files:\n" + listing + "\n"
    )


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 62rem;
       margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #1a1a1a; }
h1 { font-size: 1.7rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.95rem; color: #333; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f5f5f5; }
.meta { color: #555; font-size: 0.92rem; }
code { background: #f3f3f3; padding: 0 0.2rem; }
td.status { min-width: 12rem; max-width: 22rem; }
.reason { font-size: 0.85rem; color: #444; }
"""


def render_html(result: LabResult, images: dict[str, bytes]) -> str:
    """The self-contained HTML report (figures embedded as base64 PNG)."""
    e = html.escape
    cfg = result.config
    data = result.metrics["data"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>ntkit lab report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>ntkit lab: the lazy regime on real data</h1>",
        '<p class="meta">'
        f"Data: <code>{e(data['name'])}</code>, two-class subset "
        f"({e(data['classes']['+1'])} → +1, {e(data['classes']['-1'])} → −1), "
        f"{data['n_train']} training and {data['n_test']} test examples of {data['features']} "
        f"{'pixels' if data.get('inputs') == 'images' else 'features'} "
        f"({e(data.get('preprocessing', 'centred, unit norm'))}). Network of random-labels and bound: "
        f"<code>{e(str(cfg.get('arch', 'fc')))}</code>. Seed {cfg['seed']}, "
        f"{'quick sizes' if cfg['quick'] else 'default sizes'}, device {e(cfg['device'])}. "
        f"ntkit {e(cfg['versions']['ntkit'])}, torch {e(cfg['versions']['torch'])}. "
        "Every number in this report is in <code>metrics.json</code>; the run's settings are "
        "in <code>config.json</code>.</p>",
        "<h2>Summary</h2>",
        _summary_table(result),
    ]
    for exp in result.experiments:
        parts.append(f'<h2 id="{e(exp.name)}">{e(exp.title)}</h2>')
        parts.append(f"<p>{e(exp.intro)}</p>")
        for fig in exp.figures:
            b64 = base64.b64encode(images[fig.name]).decode("ascii")
            ranges = ";".join(",".join(f"{v:.6g}" for v in rng) for rng in axis_ranges(fig.figure))
            problems = figure_problems(fig.figure)
            if problems:  # shown, never hidden (the tests require there are none)
                parts.append(f'<p class="problem">Figure {e(fig.name)}: {e("; ".join(problems))}</p>')
            parts.append(
                f'<figure id="fig-{e(fig.name)}" data-axis-ranges="{e(ranges)}">'
                f'<img src="data:image/png;base64,{b64}" '
                f'alt="{e(fig.title)}" width="{int(fig.figure.get_figwidth() * 100)}">'
                f"<figcaption><b>{e(fig.title)}.</b> {e(fig.reading)}</figcaption></figure>"
            )
    parts.append(
        '<p class="meta">References: Jacot, Gabriel &amp; Hongler 2018 (Neural Tangent Kernel); '
        "Lee et al. 2019 (Wide neural networks of any depth evolve as linear models); Zhang et "
        "al. 2017 (Understanding deep learning requires rethinking generalization); Arora, Du, "
        "Hu, Li &amp; Wang 2019 (Fine-grained analysis of optimization and generalization for "
        "overparameterized two-layer neural networks).</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary_table(result: LabResult) -> str:
    e = html.escape
    rows = ["<table><tr><th>experiment</th><th>status</th><th>measure</th><th>value</th>"
            "<th>theory</th></tr>"]
    for exp in result.experiments:
        st, reason = exp.status
        span = max(len(exp.summary), 1)
        for k, row in enumerate(exp.summary or [None]):
            head = ""
            if k == 0:
                head = (f'<td rowspan="{span}"><a href="#{e(exp.name)}">{e(exp.name)}</a></td>'
                        f'<td rowspan="{span}" class="status"><b>{e(st)}</b><br>'
                        f'<span class="reason">{e(reason)}</span></td>')
            cells = "<td></td><td></td><td></td>" if row is None else (
                f"<td>{e(row.measure)}</td><td>{e(row.value)}</td><td>{e(row.expected)}</td>")
            rows.append(f"<tr>{head}{cells}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def summary_text(result: LabResult) -> str:
    """The terminal summary: each experiment's status and reason, then what it measured."""
    header = ("experiment", "measure", "value", "theory")
    rows = [header] + [
        (exp.name, row.measure, row.value, row.expected)
        for exp in result.experiments
        for row in exp.summary
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for exp in result.experiments:
        st, reason = exp.status
        lines.append(f"{exp.name}: {st.upper()} — {reason}")
    lines.append("")
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
