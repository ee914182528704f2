"""Readings: every sentence of the report is a claim checked against the numbers it states.

A :class:`Claim` is produced by one *rule* — a small function that tests metric values
(a slope within a band, a monotone trend by a rank test, a threshold reached, an ordering
of conditions, a curve that settles) and words its sentence from the outcome. ``holds`` is

- ``True``: the data show what the paper reports;
- ``False``: the data disagree, and the sentence says so plainly ("unlike Zhang et al.
  2017, Fig. 1b, ...");
- ``None``: no conclusion can be drawn (e.g. a run did not reach its threshold), and the
  sentence says why.

:func:`status` turns an experiment's claims into ``reproduced`` / ``not reproduced`` /
``inconclusive`` with the reason, shown in the report's summary table and stored in
``metrics.json``. No sentence of a reading is written without its rule; the thresholds of
the rules are module constants, documented where they are defined.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .numbers import fmt

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"

#: A curve "settles" when its relative change over the last measured segment is below this.
SETTLE_TOLERANCE = 0.05
#: The width slopes that count as the ``m^{-1/2}`` rate of Jacot et al. 2018.
SLOPE_BAND = (-0.65, -0.35)
#: Spearman's rank correlation needed to call a trend monotone.
RANK_THRESHOLD = 0.8


@dataclass(frozen=True)
class Claim:
    """One checked sentence of a reading.

    Attributes:
        rule: the rule's name (``"slope_band"``, ``"monotone"``, ...).
        holds: ``True`` (agrees with the paper), ``False`` (disagrees), ``None`` (no
            conclusion possible).
        text: the sentence, stating the numbers it was checked on.
        key: whether the experiment's status depends on it (``False``: context only).
    """

    rule: str
    holds: bool | None
    text: str
    key: bool = True

    def as_dict(self) -> dict:
        return {"rule": self.rule, "holds": self.holds, "key": self.key, "text": self.text}


def _finite(values: Sequence[float | None]) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


# ----------------------------------------------------------------------------- rules


def slope_band(slope: float | None, what: str, band: tuple[float, float] = SLOPE_BAND,
               paper: str = "the m^(−1/2) rate (Jacot et al. 2018)", key: bool = True) -> Claim:
    """Whether a fitted log-log ``slope`` lies in ``band`` (inclusive)."""
    lo, hi = band
    if slope is None or not math.isfinite(slope):
        return Claim("slope_band", None, f"The slope of {what} could not be fitted.", key)
    if lo <= slope <= hi:
        return Claim("slope_band", True,
                     f"The fitted log-log slope of {what} is {slope:.3f}, within [{lo}, {hi}]: "
                     f"consistent with {paper}.", key)
    return Claim("slope_band", False,
                 f"The fitted log-log slope of {what} is {slope:.3f}, outside [{lo}, {hi}]: "
                 f"unlike {paper}.", key)


def settles(values: Sequence[float | None], what: str, tolerance: float = SETTLE_TOLERANCE,
            key: bool = True) -> Claim:
    """Whether a curve has settled: its last segment changes by less than ``tolerance``
    relative to its last value. A rising (or falling) last segment beyond that never reads
    as "settles"."""
    vals = [v for v in values if v is not None]
    if len(vals) < 3 or not _finite(vals):
        return Claim("settles", None, f"Too few finite points to tell whether {what} settles.", key)
    a, b = vals[-2], vals[-1]
    change = abs(b - a) / max(abs(b), 1e-300)
    if change < tolerance:
        return Claim("settles", True,
                     f"{_cap(what)} has settled: it changes by {change:.1%} over the last measured "
                     f"segment (below {tolerance:.0%}).", key)
    direction = "still rising" if b > a else "still falling"
    return Claim("settles", False,
                 f"{_cap(what)} has not settled: it is {direction} at the last step "
                 f"({fmt(a)} → {fmt(b)}, {change:.0%} over the last measured segment).", key)


def monotone(xs: Sequence[float], ys: Sequence[float | None], what: str, *, increasing: bool = True,
             min_strict: int | None = None, paper: str, key: bool = True) -> Claim:
    """Whether ``ys`` follows a monotone trend in ``xs`` — the shape of a paper's curve.

    Holds when no step goes the wrong way, at least ``min_strict`` steps (default: all but
    one) go the right way strictly, and Spearman's rank correlation is at least
    :data:`RANK_THRESHOLD` in magnitude. A non-monotone curve never holds. ``None`` in
    ``ys`` (a run that did not reach its threshold) makes the claim inconclusive.
    """
    word = "rises" if increasing else "falls"
    if any(y is None for y in ys):
        missing = ", ".join(f"{x:g}" for x, y in zip(xs, ys) if y is None)
        return Claim("monotone", None,
                     f"Nothing is concluded from the shape of {what}: the runs at {missing} did not "
                     "reach their threshold, so their values are unknown.", key)
    vals = [float(y) for y in ys]
    steps = len(vals) - 1
    need = steps - 1 if min_strict is None else min_strict
    need = max(1, min(need, steps))
    sign = 1 if increasing else -1
    right = sum(sign * (b - a) > 0 for a, b in itertools.pairwise(vals))
    wrong = sum(sign * (b - a) < 0 for a, b in itertools.pairwise(vals))
    rho = spearman(list(xs), vals)
    listing = ", ".join(f"{fmt(y)} at {x:g}" for x, y in zip(xs, vals))
    if wrong == 0 and right >= need and rho is not None and sign * rho >= RANK_THRESHOLD:
        return Claim("monotone", True,
                     f"{_cap(what)} {word} with it ({listing}; strictly at {right} of {steps} steps, "
                     f"rank correlation {rho:.2f}): the trend of {paper}.", key)
    why = []
    if wrong:
        why.append(f"it goes the other way at {wrong} of {steps} steps")
    if right < need:
        why.append(f"it {word} strictly at only {right} of {steps} steps")
    if rho is None or sign * rho < RANK_THRESHOLD:
        why.append(f"rank correlation {fmt(rho, 2)}")
    return Claim("monotone", False,
                 f"Unlike {paper}, {what} does not {word[:-1]} steadily ({listing}): "
                 + "; ".join(why) + ".", key)


def rank_correlation(a: Sequence[float], b: Sequence[float], what: str, *,
                     at_least: float = RANK_THRESHOLD, paper: str, key: bool = True) -> Claim:
    """Whether Spearman's rank correlation of ``a`` and ``b`` is at least ``at_least``."""
    rho = spearman(list(a), list(b))
    if rho is None:
        return Claim("rank_correlation", None,
                     f"The rank correlation of {what} is undefined (one of them is constant), "
                     "so no conclusion is drawn.", key)
    if rho >= at_least:
        return Claim("rank_correlation", True,
                     f"The rank correlation of {what} is {rho:.2f} (≥ {at_least}), as in {paper}.", key)
    return Claim("rank_correlation", False,
                 f"The rank correlation of {what} is only {rho:.2f} (< {at_least}), unlike {paper}.", key)


def reached(steps: int | None, final: float | None, threshold: float, limit: int, what: str,
            key: bool = True) -> Claim:
    """Whether a run reached its loss threshold (``steps`` is ``None`` when it did not)."""
    if steps is None:
        return Claim("reached", None,
                     f"{_cap(what)} did not reach the loss threshold {threshold:g} within {limit} steps "
                     f"(final loss {fmt(final)}), so no conclusion is drawn from its time to fit.", key)
    return Claim("reached", True, f"{_cap(what)} reached loss {threshold:g} in {steps} steps.", key)


def slower(slow: int | None, fast: int | None, slow_what: str, fast_what: str, *, paper: str,
           key: bool = True) -> Claim:
    """Whether ``slow`` (steps to fit) exceeds ``fast`` — an ordering of conditions."""
    if slow is None or fast is None:
        missing = [w for w, s in ((slow_what, slow), (fast_what, fast)) if s is None]
        return Claim("slower", None,
                     f"{_cap(' and '.join(missing))} did not reach the threshold, so whether "
                     f"{slow_what} fit more slowly than {fast_what} is not known.", key)
    ratio = slow / max(fast, 1)
    if slow > fast:
        return Claim("slower", True,
                     f"{_cap(slow_what)} took {slow} steps, {ratio:.2g}× the {fast} of {fast_what}, "
                     f"as in {paper}.", key)
    return Claim("slower", False,
                 f"Unlike {paper}, {slow_what} took {slow} steps, no more than the {fast} of "
                 f"{fast_what}.", key)


def falls(values: Sequence[float], widths: Sequence[int], what: str, *, key: bool = True) -> Claim:
    """Whether ``values`` fall at every step in width."""
    if not _finite(values):
        return Claim("falls", None, f"{_cap(what)} is not finite at every width.", key)
    listing = ", ".join(f"{fmt(v)} at m={w}" for w, v in zip(widths, values))
    if all(b < a for a, b in itertools.pairwise(values)):
        return Claim("falls", True, f"{_cap(what)} falls at every step in width ({listing}).", key)
    return Claim("falls", False, f"{_cap(what)} does not fall at every step in width ({listing}).", key)


def larger(a: float | None, b: float | None, what_a: str, what_b: str, *, paper: str,
           margin: float = 0.0, key: bool = True) -> Claim:
    """Whether ``a > b + margin`` (e.g. the share of true labels in the top eigenvectors)."""
    if a is None or b is None or not _finite([a, b]):
        return Claim("larger", None, f"{_cap(what_a)} or {what_b} is not finite.", key)
    if a > b + margin:
        return Claim("larger", True,
                     f"{_cap(what_a)} ({fmt(a)}) exceeds {what_b} ({fmt(b)}), as in {paper}.", key)
    return Claim("larger", False,
                 f"Unlike {paper}, {what_a} ({fmt(a)}) does not exceed {what_b} ({fmt(b)})"
                 + (f" by more than {fmt(margin)}" if margin else "") + ".", key)


def below(value: float | None, limit: float, what: str, *, paper: str, key: bool = True) -> Claim:
    """Whether ``value < limit`` (e.g. a relative gap between a measured and a predicted curve)."""
    if value is None or not math.isfinite(value):
        return Claim("below", None, f"{_cap(what)} is not finite.", key)
    if value < limit:
        return Claim("below", True,
                     f"{_cap(what)} is {fmt(value)} (below {fmt(limit)}), as in {paper}.", key)
    return Claim("below", False,
                 f"{_cap(what)} is {fmt(value)}, not below {fmt(limit)}: unlike {paper}.", key)


def note(text: str) -> Claim:
    """A sentence that states numbers without judging them (context, never a status)."""
    return Claim("note", None, text, key=False)


# ----------------------------------------------------------------------------- status


def status(claims: Sequence[Claim]) -> tuple[str, str]:
    """``(status, reason)`` of an experiment from its key claims.

    ``inconclusive`` when a key claim could not be decided (its sentence is the reason);
    else ``not reproduced`` when a key claim fails; else ``reproduced``.
    """
    keyed = [c for c in claims if c.key]
    if not keyed:
        return INCONCLUSIVE, "nothing was checked"
    undecided = [c for c in keyed if c.holds is None]
    if undecided:
        return INCONCLUSIVE, undecided[0].text
    failed = [c for c in keyed if c.holds is False]
    if failed:
        return NOT_REPRODUCED, failed[0].text
    return REPRODUCED, f"all {len(keyed)} checks hold"


def paragraph(claims: Sequence[Claim]) -> str:
    """The sentences of ``claims``, in order, as one paragraph."""
    return " ".join(c.text for c in claims)


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); ``None`` if either is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values`` (float64), tied values sharing the mean of their ranks
    (``scipy.stats.rankdata``'s default, without importing scipy.stats: ≈ 1 s)."""
    v = np.asarray(values, float)
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], v.size]  # a run of ties occupies sorted positions [start, end)
    ranks = np.empty(v.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]
