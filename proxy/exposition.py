"""The Prometheus text format (0.0.4) of a registry's families, written a family at a time.

The same bytes as prometheus-client's `generate_latest` (tests/test_exposition.py compares
them), for a fraction of its CPU: at the label bounds a page holds ~6,000 samples, and the
library escapes every name and value of every sample on every scrape. Here names are
escaped once per distinct name and a value only when it holds a character that needs it.
The page is produced family by family, so that the server can give other connections
their turn in between instead of stalling them for the whole page (docs/behaviour.md §2).

gogeta's own labelled families skip the library's samples altogether (`Direct`): each
child's line heads (name and labels, escaped) are made once, and a scrape only formats the
numbers, read from the children prometheus-client keeps, of the children whose numbers
moved since the scrape before (the others' lines are kept from then). That reads the
library's child layout (`_metrics`, `_value`, `_count`, `_sum`, `_buckets`,
`_upper_bounds`, and a value's float), which is why its version is pinned; the comparison
with `generate_latest` is what guards an upgrade.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import prometheus_client.metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import UNDERSCORES, escape_label_name
from prometheus_client.openmetrics.exposition import escape_metric_name as _metric_name
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proxy import values

# The type a family is shown as, when the Prometheus text format names it otherwise.
_SHOWN_TYPE = {
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
    "unknown": "untyped",
}
_NAME_SUFFIX = {"counter": "_total", "info": "_info"}  # the family's name as shown
_SUFFIXED = ("_created", "_gsum", "_gcount")  # OpenMetrics samples, shown as gauges after


class _Names:
    """Escaped metric and label names, each worked out once."""

    def __init__(self) -> None:
        self.metrics: dict[str, str] = {}
        self.labels: dict[str, str] = {}

    def metric(self, name: str) -> str:
        found = self.metrics.get(name)
        if found is None:
            found = self.metrics[name] = _metric_name(name, UNDERSCORES)
        return found

    def label(self, name: str) -> str:
        found = self.labels.get(name)
        if found is None:
            found = self.labels[name] = escape_label_name(name, UNDERSCORES)
        return found


def _label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _number(value: float) -> str:
    # repr is what floatToGoString gives below a million; above, it switches to exponents.
    if -1e6 < value < 1e6 and not math.isnan(value):
        return repr(float(value))
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _help(name: str, documentation: str) -> str:
    text = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {text}\n"


def family_text(family: Metric, names: _Names) -> str:
    """One family: its HELP and TYPE lines and its samples."""
    shown = names.metric(family.name + _NAME_SUFFIX.get(family.type, ""))
    kind = _SHOWN_TYPE.get(family.type, family.type)
    out = [_help(shown, family.documentation), f"# TYPE {shown} {kind}\n"]
    later: dict[str, list[str]] = {}
    suffixed = {family.name + suffix: suffix for suffix in _SUFFIXED}
    label = names.label
    for sample in family.samples:
        if sample.labels:
            pairs = ",".join(
                f'{label(k)}="{_label_value(v)}"' for k, v in sorted(sample.labels.items())
            )
            line = f"{names.metric(sample.name)}{{{pairs}}} {_number(sample.value)}"
        else:
            line = f"{names.metric(sample.name)} {_number(sample.value)}"
        if sample.timestamp is not None:
            line += f" {int(float(sample.timestamp) * 1000):d}"
        suffix = suffixed.get(sample.name)
        if suffix is None:
            out.append(line + "\n")
        else:
            later.setdefault(suffix, []).append(line + "\n")
    for suffix, lines in sorted(later.items()):
        name = names.metric(family.name + suffix)
        out += [_help(name, family.documentation), f"# TYPE {name} gauge\n", *lines]
    return "".join(out)


def exposition(families: Iterable[Metric]) -> Iterator[bytes]:
    """The page, one family's bytes at a time."""
    names = _Names()
    for family in families:
        yield family_text(family, names).encode()


# Lines in one piece of a directly written family (a piece is one turn of the loop at most).
PIECE_LINES = 200


class Direct:
    """A labelled Counter, Gauge, Summary or Histogram, written from its children's values.

    The library's children are never removed here, and a scrape copies the dict of them
    first (as prometheus-client itself does), so a label added meanwhile waits for the next.
    """

    def __init__(self, family: Counter | Gauge | Summary | Histogram, names: _Names) -> None:
        self.family = family
        kind: str = family._type
        self.kind = kind
        shown = names.metric(family._name + _NAME_SUFFIX.get(kind, ""))
        self.top = _help(shown, family._documentation) + f"# TYPE {shown} {kind}\n"
        self.names = names
        self.suffixes: list[tuple[str, tuple[tuple[str, str], ...]]]
        if kind == "counter":
            self.suffixes = [("_total", ())]
        elif kind == "gauge":
            self.suffixes = [("", ())]
        elif kind == "summary":
            self.suffixes = [("_count", ()), ("_sum", ())]
        else:
            assert isinstance(family, Histogram)
            bounds: list[float] = family._upper_bounds
            self.suffixes = [("_bucket", (("le", _le(b)),)) for b in bounds]
            self.suffixes.append(("_count", ()))
            if bounds[0] >= 0:
                self.suffixes.append(("_sum", ()))
        # A child's state (what it holds, compared with the last scrape's) and its numbers.
        self.state, self.numbers = _READERS[kind]
        # Per child: its lines with `%r` where the numbers go, and how many numbers.
        self.templates: dict[tuple[str, ...], tuple[str, int]] = {}
        # Per child: its state at the last scrape, its lines then and how many.
        # Between two scrapes most children do not move (a few hundred requests against
        # thousands of lines): their lines are not formatted again. Not for gauges: -0.0
        # equals 0.0 and is written otherwise (counts and sums, made by adding to 0.0,
        # never become -0.0).
        self.last: dict[tuple[str, ...], tuple[Any, str, int]] | None
        self.last = None if kind == "gauge" else {}

    def _heads(self, labelvalues: tuple[str, ...]) -> list[str]:
        label = self.names.label
        base = list(zip(self.family._labelnames, labelvalues, strict=True))
        heads = []
        for suffix, extra in self.suffixes:
            pairs = ",".join(f'{label(k)}="{_label_value(v)}"' for k, v in sorted([*base, *extra]))
            heads.append(f"{self.names.metric(self.family._name + suffix)}{{{pairs}}} ")
        return heads

    def _template(self, labelvalues: tuple[str, ...]) -> tuple[str, int]:
        found = self.templates.get(labelvalues)
        if found is None:
            heads = self._heads(labelvalues)
            text = "".join(head.replace("%", "%%") + "%r\n" for head in heads)
            found = self.templates[labelvalues] = (text, len(heads))
        return found

    def _lines(self, labelvalues: tuple[str, ...], numbers: list[float]) -> tuple[str, int]:
        """A child's lines with `numbers`, and how many lines."""
        template, count = self._template(labelvalues)
        # [:count]: a histogram whose first bound is negative has no `_sum` line.
        numbers = numbers[:count]
        # Floats in (-1e6, 1e6), not NaN (a sum with one is NaN): their repr is Go's.
        if count == 1:
            usual = -1e6 < numbers[0] < 1e6
        else:
            total = sum(numbers)
            usual = -1e6 < min(numbers) and max(numbers) < 1e6 and total == total
        if usual:
            return template % tuple(numbers), count
        heads = self._heads(labelvalues)
        return "".join(f"{h}{_number(n)}\n" for h, n in zip(heads, numbers, strict=True)), count

    def pieces(self) -> Iterator[str]:
        family = self.family
        with family._lock:
            children = cast(list[tuple[tuple[str, ...], Any]], list(family._metrics.items()))
        out = [self.top]
        lines = 0
        last = self.last
        state_of = self.state
        for labelvalues, child in children:  # labelvalues: a tuple (the dict's key)
            state = state_of(child)
            before = last.get(labelvalues) if last is not None else None
            if before is not None and before[0] == state:  # NaN never equals: formatted
                _, text, count = before
            else:
                text, count = self._lines(labelvalues, self.numbers(state))
                if last is not None:
                    last[labelvalues] = (state, text, count)
            out.append(text)
            lines += count
            if lines >= PIECE_LINES:
                yield "".join(out)
                out.clear()
                lines = 0
        yield "".join(out)


def _le(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


# The children's values are in memory (`Page` checks), LoopValues (proxy/values.py) or
# the library's MutexValues: their float read as it stands, without the lock a MutexValue's
# `get()` takes. A greenlet is not interrupted while it reads, and a thread reads a whole
# float anyway.
# A state is read by `operator.attrgetter` (in C: most children have not moved, and this is
# all a scrape does with them): a float, or a tuple of them.

_value = operator.attrgetter("_value")


def _bucket_state(child: Any) -> tuple[float, ...]:
    # Each bucket's own count (cumulated in `_histogram`), and the sum.
    return (*map(_value, child._buckets), child._sum._value)


def _histogram(state: tuple[float, ...]) -> list[float]:
    numbers = list(itertools.accumulate(state[:-1]))
    numbers.append(numbers[-1])  # _count
    numbers.append(state[-1])  # _sum, cut off where there is no _sum line
    return numbers


_READERS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], list[float]]]] = {
    "counter": (operator.attrgetter("_value._value"), lambda state: [state]),
    "gauge": (operator.attrgetter("_value._value"), lambda state: [state]),
    "summary": (operator.attrgetter("_count._value", "_sum._value"), list),
    "histogram": (_bucket_state, _histogram),
}


class Registry(CollectorRegistry):
    """A registry that also keeps what it holds in registration order, for `Page`."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[Collector] = []

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self.order.append(collector)


class Page:
    """A registry's page from its collectors, in their order: gogeta's own labelled
    families written directly, everything else (unlabelled ones, custom collectors) through
    `family_text`."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self.names = _Names()
        self.parts = [self._part(c) for c in collectors]

    def _part(self, collector: Collector) -> Collector | Direct:
        # The library's own classes only (a subclass may make its samples otherwise), with
        # values in this process's memory (not prometheus-client's multiprocess files).
        if type(collector) in (Counter, Gauge, Summary, Histogram) and not values.in_files():
            family: Counter | Gauge | Summary | Histogram = collector  # type: ignore[assignment]
            if family._is_parent():  # type: ignore[no-untyped-call]
                return Direct(family, self.names)
        return collector

    def pieces(self) -> Iterator[bytes]:
        """The page, a family (or `PIECE_LINES` of one) at a time."""
        if getattr(prometheus_client.metrics, "_use_created", True):
            # `*_created` samples wanted: the library's own samples carry them.
            for part in self.parts:
                for family in _collect(part):
                    yield family_text(family, self.names).encode()
            return
        for part in self.parts:
            if isinstance(part, Direct):
                for piece in part.pieces():
                    yield piece.encode()
            else:
                for family in part.collect():
                    yield family_text(family, self.names).encode()


def _collect(part: Collector | Direct) -> Iterable[Metric]:
    return part.family.collect() if isinstance(part, Direct) else part.collect()
