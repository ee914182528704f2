"""What the experiments share: results, figures, the run context, training loops."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from ..theory import TwoLayerNet
from .config import Sizes
from .dataset import LabData


@dataclass
class LabFigure:
    """One figure of the report: a file stem, a title, the figure and its reading.

    ``reading`` is one paragraph, generated from the metrics, that says what the figure
    shows and the numbers behind it.
    """

    name: str
    title: str
    figure: Figure
    reading: str


@dataclass
class SummaryRow:
    """One line of the terminal summary: what was measured, its value, what theory says."""

    measure: str
    value: str
    expected: str


@dataclass
class ExperimentResult:
    """What an experiment returns: JSON-ready metrics, figures and summary lines."""

    name: str
    title: str
    intro: str
    metrics: dict[str, Any]
    figures: list[LabFigure] = field(default_factory=list)
    summary: list[SummaryRow] = field(default_factory=list)


@dataclass
class Context:
    """Everything an experiment needs: data, sizes, seed, device, progress, a shared cache."""

    data: LabData
    sizes: Sizes
    seed: int
    device: torch.device
    progress: bool = False
    cache: dict[Any, Any] = field(default_factory=dict)

    def seed_for(self, *keys: Any) -> int:
        """A deterministic 31-bit seed for ``keys`` (strings and ints), from the run's seed."""
        words = [int(self.seed)]
        for k in keys:
            words += [b for b in str(k).encode()] if isinstance(k, str) else [int(k)]
        return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)

    def rng(self, *keys: Any) -> np.random.Generator:
        return np.random.default_rng(self.seed_for(*keys))

    def bar(self, total: int, desc: str) -> tqdm:
        """A tqdm progress bar on stderr (shown only when ``progress`` is on)."""
        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, disable=not self.progress,
                    dynamic_ncols=True, mininterval=0.5)


# ----------------------------------------------------------------------------- numbers


def r(x: float, digits: int = 8) -> float | None:
    """Round to ``digits`` significant digits for JSON (``None`` for NaN/inf)."""
    x = float(x)
    if not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return float(f"{x:.{digits}g}")


def rl(xs: Any, digits: int = 8) -> list[float | None]:
    """:func:`r` over a sequence or tensor."""
    if isinstance(xs, torch.Tensor):
        xs = xs.detach().cpu().reshape(-1).tolist()
    return [r(x, digits) for x in xs]


def fmt(x: float | None, digits: int = 3) -> str:
    """Human formatting for readings and the summary table."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` (Frobenius)."""
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def checkpoints(steps: int, count: int) -> list[int]:
    """``count`` roughly log-spaced integers from 0 to ``steps`` (both included)."""
    pts = np.unique(np.round(np.geomspace(1, steps + 1, max(count, 2)) - 1).astype(int))
    return sorted({0, steps, *pts.tolist()})


def error_rate(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of sign mistakes of real-valued predictions against labels ``±1``."""
    return float((torch.where(pred > 0, 1.0, -1.0).to(y.dtype) != y).double().mean())


# ----------------------------------------------------------------------------- nets


def lecture_net(d: int, m: int, seed: int, device: torch.device) -> TwoLayerNet:
    """The lecture's two-layer ReLU net ``h(x) = (1/√m) Σ a_i relu(b_iᵀx)`` (float64)."""
    return TwoLayerNet(d, m, activation=torch.relu, seed=seed).to(device)


def flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def train_mse(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    steps: int,
    momentum: float = 0.0,
    stop_below: float | None = None,
    on_step: Callable[[int], None] | None = None,
    bar: tqdm | None = None,
) -> list[float]:
    """Full-batch (heavy-ball) gradient descent on ``(1/2n)‖f(x) − y‖²`` with ``torch.optim.SGD``.

    Returns the loss before each step and after the last one (``steps + 1`` values, fewer if
    the loss fell below ``stop_below``: training stops at the first loss below it).
    ``on_step(k)`` is called with the parameters after ``k`` steps, ``k = 0..steps``.
    """
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    losses: list[float] = []
    for k in range(steps + 1):
        if on_step is not None:
            with torch.no_grad():
                on_step(k)
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((net(x).reshape(-1) - y) ** 2).mean()
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value):
            break
        if k == steps or (stop_below is not None and value < stop_below):
            break
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
    return losses


def steps_to_fit(losses: Sequence[float], threshold: float) -> int | None:
    """The first step whose loss is below ``threshold`` (``None``: never)."""
    for k, v in enumerate(losses):
        if v < threshold:
            return k
    return None


# ----------------------------------------------------------------------------- shared fits


def lecture_learning_rate(x: torch.Tensor) -> float:
    """``η = n / λ_max(H)`` for the lecture's infinite-width NTK ``H`` on ``x``.

    Half of the stability limit ``2n / λ_max`` of gradient descent on ``(1/2n)‖f − y‖²``
    (:func:`ntkit.predict.max_learning_rate`), so that finite nets, whose kernel fluctuates
    around ``H``, stay stable too.
    """
    from ..predict import max_learning_rate
    from ..theory import two_layer_ntk

    return 0.5 * max_learning_rate(two_layer_ntk(x))


def corrupted_labels(ctx: Context, fraction: float) -> torch.Tensor:
    """Training labels of which a ``fraction`` is re-drawn uniformly from ``{−1, +1}``.

    As in Zhang et al. 2017, each corrupted label is a uniformly random class, so about half
    of them keep their value. The corrupted sets are nested: one random order of the
    examples and one random label per example are drawn from the run's seed, and the
    fraction ``f`` re-draws the first ``round(f·n)`` examples of that order — so a larger
    fraction corrupts everything a smaller one does, and curves against the fraction are
    not blurred by independent draws.
    """
    y = ctx.data.y_train
    n = y.shape[0]
    rng = ctx.rng("corrupt")
    order = rng.permutation(n)
    fresh = torch.as_tensor(rng.choice([-1.0, 1.0], size=n), dtype=y.dtype, device=y.device)
    k = math.floor(float(fraction) * n + 0.5)
    idx = torch.as_tensor(order[:k], device=y.device)
    out = y.clone()
    out[idx] = fresh[idx]
    return out


def corrupted_fit(ctx: Context, fraction: float) -> dict[str, Any]:
    """Train the lecture's net (width ``rl_width``) on labels of which ``fraction`` were
    re-drawn at random (:func:`corrupted_labels`, Zhang et al. 2017), until the training loss is below
    ``rl_threshold`` or ``rl_max_steps`` pass. Shared by ``random-labels`` and ``bound``
    (memoized in ``ctx.cache``, so a full run trains each net once).

    The net is trained with its initial outputs subtracted, ``f = h − h_0``: targets are
    shifted to ``y + h_0(X)`` and test predictions are ``h(x) − h_0(x)``. The gradient
    dynamics are those of ``h``, but the initial residual is the labels themselves — as with
    the small initialization of Arora et al. 2019 — so that what is being fitted is ``y``,
    not the random function ``h_0``.

    Returns ``{"labels", "losses", "steps_to_fit", "test_error", "final_loss"}``.
    """
    key = ("corrupted_fit", float(fraction))
    if key in ctx.cache:
        return ctx.cache[key]
    s, data = ctx.sizes, ctx.data
    labels = corrupted_labels(ctx, fraction)
    lr = ctx.cache.setdefault(("lr", "train"), lecture_learning_rate(data.x_train))
    net = lecture_net(data.d, s.rl_width, ctx.seed_for("rl-net"), ctx.device)
    with torch.no_grad():
        f0, ft0 = net(data.x_train), net(data.x_test)
    with ctx.bar(s.rl_max_steps, f"fit, {fraction:.0%} random labels") as bar:
        losses = train_mse(net, data.x_train, labels + f0, lr=lr, steps=s.rl_max_steps,
                           momentum=s.rl_momentum, stop_below=s.rl_threshold, bar=bar)
    with torch.no_grad():
        test_error = error_rate(net(data.x_test) - ft0, data.y_test)
    out = {
        "labels": labels,
        "losses": losses,
        "steps_to_fit": steps_to_fit(losses, s.rl_threshold),
        "test_error": test_error,
        "final_loss": losses[-1],
        "learning_rate": lr,
    }
    ctx.cache[key] = out
    return out


def new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.0) -> tuple[Figure, Any]:
    """A matplotlib figure (Agg canvas, no pyplot state) with ``ncols`` axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width * ncols if ncols > 1 else width, height), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes
