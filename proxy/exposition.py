"""The Prometheus text format (0.0.4) of a registry's families, written a family at a time.

The same bytes as prometheus-client's `generate_latest` (tests/test_exposition.py compares
them), for a fraction of its CPU: at the label bounds a page holds ~6,000 samples, and the
library escapes every name and value of every sample on every scrape. Here names are
escaped once per distinct name and a value only when it holds a character that needs it.
The page is produced family by family, so that the server can give other connections
their turn in between instead of stalling them for the whole page (docs/behaviour.md §2).

gogeta's own labelled families skip the library's samples altogether (`Direct`): each
child's line heads (name and labels, escaped) are made once, and a scrape only formats the
numbers, read from the children prometheus-client keeps, of the children whose values
said they moved since the scrape before (proxy/values.py; the others' lines are kept from
then). That reads the library's child layout (`_metrics`, `_value`, `_count`, `_sum`,
`_buckets`, `_upper_bounds`, and a value's float), which is why its version is pinned; the
comparison with `generate_latest` is what guards an upgrade.
"""

from __future__ import annotations

import itertools
import math
import weakref
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


# Lines formatted between two pieces of a directly written family (a piece is one turn of
# the loop at most): a first scrape formats every child, a later one those that moved.
PIECE_LINES = 200


class Direct:
    """A labelled Counter, Gauge, Summary or Histogram, written from its children's values.

    Each child has a slot holding its lines as last written. A child whose values are
    `LoopValue`s (proxy/values.py) is written again only after one of them moved: reading
    them arms them with this family's `moved` list, which the next change of each joins.
    Any other child (the library's `MutexValue`s) is written at every scrape. One `Direct`
    per family (`of`), however many pages show it: a value tells one list.

    The library's children are never removed here; a scrape takes the ones added since the
    last under the family's lock (as prometheus-client copies its dict of them), so a label
    added meanwhile waits for the next.
    """

    @classmethod
    def of(cls, family: Counter | Gauge | Summary | Histogram) -> Direct:
        found = _DIRECT.get(family)
        if found is None:
            found = _DIRECT[family] = cls(family)
        return found

    def __init__(self, family: Counter | Gauge | Summary | Histogram) -> None:
        self.family = family
        self.names = _Names()
        kind: str = family._type
        shown = self.names.metric(family._name + _NAME_SUFFIX.get(kind, ""))
        self.top = _help(shown, family._documentation) + f"# TYPE {shown} {kind}\n"
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
        self.values_of, self.numbers = _READERS[kind]
        # Per slot, in the order of the library's children: the child, its label values,
        # its lines with `%r` where the numbers go and how many, its lines as last written.
        self.children: list[Any] = []
        self.labelvalues: list[tuple[str, ...]] = []
        self.templates: list[tuple[str, int]] = []
        self.texts: list[str] = []
        self.moved: list[values.LoopValue] = []  # the values changed since they were read
        self.slot_of: dict[values.LoopValue, int] = {}
        self.unarmed: list[int] = []  # the slots whose values cannot tell: every scrape

    def _heads(self, labelvalues: tuple[str, ...]) -> list[str]:
        label = self.names.label
        base = list(zip(self.family._labelnames, labelvalues, strict=True))
        heads = []
        for suffix, extra in self.suffixes:
            pairs = ",".join(f'{label(k)}="{_label_value(v)}"' for k, v in sorted([*base, *extra]))
            heads.append(f"{self.names.metric(self.family._name + suffix)}{{{pairs}}} ")
        return heads

    def _add(self, labelvalues: tuple[str, ...], child: Any) -> int:
        slot = len(self.children)
        heads = self._heads(labelvalues)
        self.children.append(child)
        self.labelvalues.append(labelvalues)
        self.templates.append(("".join(h.replace("%", "%%") + "%r\n" for h in heads), len(heads)))
        self.texts.append("")
        held = self.values_of(child)
        if all(type(v) is values.LoopValue for v in held):
            for value in held:
                self.slot_of[value] = slot
        else:
            self.unarmed.append(slot)
        return slot

    def _write(self, slot: int) -> int:
        """Writes the slot's lines from its child's values as they are now; how many lines."""
        held = self.values_of(self.children[slot])
        for value in held:
            if type(value) is values.LoopValue:
                value._sink = self.moved  # before the read: a change from now on is told
        template, count = self.templates[slot]
        # [:count]: a histogram whose first bound is negative has no `_sum` line.
        numbers = self.numbers([value._value for value in held])[:count]
        # Floats in (-1e6, 1e6), not NaN (a sum with one is NaN): their repr is Go's.
        if count == 1:
            usual = -1e6 < numbers[0] < 1e6
        else:
            total = sum(numbers)
            usual = -1e6 < min(numbers) and max(numbers) < 1e6 and total == total
        if usual:
            self.texts[slot] = template % tuple(numbers)
        else:
            heads = self._heads(self.labelvalues[slot])
            self.texts[slot] = "".join(
                f"{h}{_number(n)}\n" for h, n in zip(heads, numbers, strict=True)
            )
        return count

    def pieces(self) -> Iterator[str]:
        family = self.family
        with family._lock:
            known = len(self.children)
            # Keyed by a tuple of the label values (the library types it as a Sequence).
            added = cast(
                list[tuple[tuple[str, ...], Any]],
                list(itertools.islice(family._metrics.items(), known, None)),
            )
        due = {self.slot_of[value] for value in self.moved}
        self.moved.clear()
        due.update(self.unarmed)
        texts = self.texts
        head = self.top
        done = 0  # the slots before this one are in a piece already
        lines = 0
        # The children added since come last, each given its slot when reached: making
        # their lines' heads costs as much as writing them, and counts towards the piece.
        added_slots = (self._add(labelvalues, child) for labelvalues, child in added)
        for slot in itertools.chain(sorted(due), added_slots):
            lines += self._write(slot)
            if lines >= PIECE_LINES:
                yield head + "".join(texts[done : slot + 1])
                head = ""
                done = slot + 1
                lines = 0
        yield head + "".join(texts[done:])


_DIRECT: weakref.WeakKeyDictionary[Any, Direct] = weakref.WeakKeyDictionary()


def _le(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


# A child's values: LoopValues (proxy/values.py), in memory anyway (`Page` checks), or the
# library's MutexValues, their float read as it stands, without the lock a MutexValue's
# `get()` takes (a greenlet is not interrupted while it reads, a thread reads a whole float).
# Then its numbers, from the floats of those values.


def _histogram(floats: list[float]) -> list[float]:
    # Each bucket's own count, cumulated, then the count and the sum.
    numbers = list(itertools.accumulate(floats[:-1]))
    numbers.append(numbers[-1])  # _count
    numbers.append(floats[-1])  # _sum, cut off where there is no _sum line
    return numbers


def _same(floats: list[float]) -> list[float]:
    return floats


_READERS: dict[str, tuple[Callable[[Any], list[Any]], Callable[[list[float]], list[float]]]] = {
    "counter": (lambda child: [child._value], _same),
    "gauge": (lambda child: [child._value], _same),
    "summary": (lambda child: [child._count, child._sum], _same),
    "histogram": (lambda child: [*child._buckets, child._sum], _histogram),
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
                return Direct.of(family)
        return collector

    def children(self) -> int:
        """How many children of the directly written families the page has shown."""
        return sum(len(part.children) for part in self.parts if isinstance(part, Direct))

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
