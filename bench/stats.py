"""Statistics for every figure bench/ reports.

Rule: one definition of a percentile, here; every min, median, p50, p99 and max in the
bench and soak results comes from `percentile`. NaN marks a measurement that is missing
(wrk printed no such line) and is left out rather than poisoning a median.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile, q from 0 to 100, by linear interpolation between closest ranks.

    With the n values sorted as x[0] ≤ … ≤ x[n-1] and h = (n - 1)·q/100, it is
    x[⌊h⌋] + (h - ⌊h⌋)·(x[⌊h⌋+1] - x[⌊h⌋]): q=0 is the minimum, q=100 the maximum, q=50
    the median (numpy's default, Hyndman & Fan's type 7). NaN values are left out; the
    result is NaN when no value is left.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Iterable[float]) -> float:
    return percentile(values, 50)


def or_none(value: float) -> float | None:
    """NaN (no measurement) as None, for results written as JSON null."""
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class Spread:
    """min, median, p99 and max of a set of durations, in milliseconds."""

    min: float
    median: float
    p99: float
    max: float

    @classmethod
    def of_seconds(cls, seconds: Iterable[float]) -> Spread:
        ms = [s * 1000 for s in seconds]
        return cls(*(percentile(ms, q) for q in (0, 50, 99, 100)))
