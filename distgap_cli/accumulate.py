"""Accumulating per-batch results into whole-run statistics, exactly and mergeably.

Sums are kept as Python integers in units of 2**-1074 (every finite float64 is an
integer multiple of it) and squares in units of 2**-2148, so adding is exact and
associative: accumulating the batches of two halves of an input separately, in any
process, and merging the two states gives bit for bit the state of the whole run.
Means and standard deviations are rounded once, at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from distgap_cli.errors import NumericalError

_SHIFT = 1074


def _fixed(value: float) -> int:
    """``value`` as an exact integer multiple of 2**-1074."""
    if not math.isfinite(value):
        raise NumericalError(
            f"a distance came out as {value}; the embeddings' values are too large "
            "for float32: rescale them"
        )
    num, den = float(value).as_integer_ratio()
    return num << (_SHIFT - (den.bit_length() - 1))


def _fixed_square(value: float) -> int:
    """``value ** 2`` as an exact integer multiple of 2**-2148."""
    num, den = float(value).as_integer_ratio()
    return (num * num) << (2 * (_SHIFT - (den.bit_length() - 1)))


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


@dataclass
class Moments:
    """Count, exact sum and sum of squares, minimum, maximum, first and last value."""

    n: int = 0
    total: int = 0
    squares: int = 0
    low: float | None = None
    high: float | None = None
    last: float | None = None

    def add(self, value: float) -> None:
        """Add one finite value."""
        self.n += 1
        self.total += _fixed(value)
        self.squares += _fixed_square(value)
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)
        self.last = value

    def merge(self, later: Moments) -> None:
        """Fold in the moments of values that came after these."""
        self.n += later.n
        self.total += later.total
        self.squares += later.squares
        for name, pick in (("low", min), ("high", max)):
            mine, theirs = getattr(self, name), getattr(later, name)
            if theirs is not None:
                setattr(self, name, theirs if mine is None else pick(mine, theirs))
        if later.last is not None:
            self.last = later.last

    def mean(self) -> float:
        """The mean, correctly rounded; NaN when empty."""
        if self.n == 0:
            return math.nan
        return float(Fraction(self.total, self.n << _SHIFT))

    def std(self) -> float:
        """The population standard deviation (ddof 0); NaN when empty."""
        if self.n == 0:
            return math.nan
        mean = Fraction(self.total, 1 << _SHIFT) / self.n
        mean_sq = Fraction(self.squares, 1 << (2 * _SHIFT)) / self.n
        return math.sqrt(float(max(mean_sq - mean * mean, Fraction(0))))

    def summary(self) -> dict[str, float]:
        """Mean, std, min, max as floats (NaN when empty)."""
        return {
            "mean": self.mean(),
            "std": self.std(),
            "min": _nan_if_none(self.low),
            "max": _nan_if_none(self.high),
        }

    def to_state(self) -> dict[str, Any]:
        """A JSON-safe copy of the state (integers as hex strings)."""
        return {
            "n": self.n,
            "total": hex(self.total),
            "squares": hex(self.squares),
            "low": self.low,
            "high": self.high,
            "last": self.last,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Moments:
        """Rebuild from :meth:`to_state`."""
        return cls(
            n=state["n"],
            total=int(state["total"], 16),
            squares=int(state["squares"], 16),
            low=state["low"],
            high=state["high"],
            last=state["last"],
        )


# The per-batch figures kept as moments (their mean, std, min and max).
BATCH_FIELDS = ("gap", "margin", "max_pos", "min_neg")
_COUNTS = (
    "batches",
    "rows",
    "skipped_no_positive_pair",
    "skipped_no_negative_pair",
    "anchors_with_pos",
    "anchors_with_neg",
    "anchors_with_both",
    "violations",
)


@dataclass
class GapAccumulator:
    """Everything a run keeps for one distance, across batches.

    Batch statistics (gap, margin, max_pos, min_neg) cover the batches that have
    both a positive and a negative pair; the others are counted as skipped, by
    reason. Anchor statistics (mean hardest positive and negative, violation rate)
    cover every anchor that has the pair in question, in every batch.
    """

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))
    moments: dict[str, Moments] = field(
        default_factory=lambda: {name: Moments() for name in BATCH_FIELDS}
    )
    sum_hardest_pos: int = 0
    sum_hardest_neg: int = 0

    def add_batches(self, stats: dict[str, np.ndarray]) -> None:
        """Add a stack of per-batch results (``core.BatchStats`` as numpy arrays)."""
        counts = self.counts
        for k in range(len(stats["gap"])):
            counts["batches"] += 1
            counts["rows"] += int(stats["anchors"][k])
            has_pos = bool(stats["has_pos_pair"][k])
            has_neg = bool(stats["has_neg_pair"][k])
            if not has_pos:
                counts["skipped_no_positive_pair"] += 1
            elif not has_neg:
                counts["skipped_no_negative_pair"] += 1
            else:
                for name in BATCH_FIELDS:
                    self.moments[name].add(float(stats[name][k]))
            for name in (
                "anchors_with_pos",
                "anchors_with_neg",
                "anchors_with_both",
                "violations",
            ):
                counts[name] += int(stats[name][k])
            self.sum_hardest_pos += _fixed(stats["sum_hardest_pos"][k])
            self.sum_hardest_neg += _fixed(stats["sum_hardest_neg"][k])

    def merge(self, later: GapAccumulator) -> None:
        """Fold in the state of the batches that came after these ones."""
        for name in _COUNTS:
            self.counts[name] += later.counts[name]
        for name in BATCH_FIELDS:
            self.moments[name].merge(later.moments[name])
        self.sum_hardest_pos += later.sum_hardest_pos
        self.sum_hardest_neg += later.sum_hardest_neg

    @property
    def used_batches(self) -> int:
        """Batches that had a gap."""
        return self.moments["gap"].n

    def summary(self) -> dict[str, Any]:
        """The figures a report shows, as plain floats and ints."""
        c = self.counts

        def ratio(total: int, n: int) -> float:
            return float(Fraction(total, n << _SHIFT)) if n else math.nan

        gap = self.moments["gap"]
        return {
            "rows": c["rows"],
            "batches": {
                "total": c["batches"],
                "used": self.used_batches,
                "skipped": {
                    "no_positive_pair": c["skipped_no_positive_pair"],
                    "no_negative_pair": c["skipped_no_negative_pair"],
                },
            },
            "last_gap": _nan_if_none(gap.last),
            "gap": gap.summary(),
            "margin": self.moments["margin"].summary(),
            "max_pos": self.moments["max_pos"].summary(),
            "min_neg": self.moments["min_neg"].summary(),
            "anchors": {
                "with_positive": c["anchors_with_pos"],
                "with_negative": c["anchors_with_neg"],
                "with_both": c["anchors_with_both"],
            },
            "mean_hardest_pos": ratio(self.sum_hardest_pos, c["anchors_with_pos"]),
            "mean_hardest_neg": ratio(self.sum_hardest_neg, c["anchors_with_neg"]),
            "violation_rate": (
                c["violations"] / c["anchors_with_both"]
                if c["anchors_with_both"]
                else math.nan
            ),
        }

    def to_state(self) -> dict[str, Any]:
        """A JSON-safe copy of the whole state, for merging in another process."""
        return {
            "counts": dict(self.counts),
            "moments": {k: m.to_state() for k, m in self.moments.items()},
            "sum_hardest_pos": hex(self.sum_hardest_pos),
            "sum_hardest_neg": hex(self.sum_hardest_neg),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GapAccumulator:
        """Rebuild from :meth:`to_state`."""
        return cls(
            counts=dict(state["counts"]),
            moments={k: Moments.from_state(v) for k, v in state["moments"].items()},
            sum_hardest_pos=int(state["sum_hardest_pos"], 16),
            sum_hardest_neg=int(state["sum_hardest_neg"], 16),
        )
