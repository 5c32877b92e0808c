"""What `/__gogeta/routes` says about the table: why an instance is not routable, and pages.

Pure: plain values in, JSON-ready values out, no I/O. Long loops take a `pause` callback
(the resolver passes a zero-second gevent sleep) every `CHUNK` items, so that listing
100,000 domains never holds the event loop for long, and only the page asked for is built.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

from resolvers.base import Status
from resolvers.model import Instance

CHUNK = 5_000  # items handled between two pauses (well under a millisecond each)
MAX_PER_PAGE = 200
MAX_QUERY = 253  # a hostname is no longer
MAX_DIRTY = 5_000  # changed hostnames remembered between two pages; more: sort again

Pause = Callable[[], None]


def no_pause() -> None:
    pass


class RawInstance(Protocol):
    """What etcd holds for an instance (resolvers/tree.py keeps it), as read."""

    status_dir: bool
    current: str | None
    expected: str | None
    alive: str | None
    location_error: str | None
    last_access: str | None


def without_credentials(url: str | None) -> str | None:
    """`url` without a `user:password@` part, for showing it."""
    if url is None or "@" not in url:
        return url
    scheme, _, rest = url.rpartition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme + '://' if scheme else ''}{authority.rpartition('@')[2]}{slash}{path}"


def status_reason(status: Status, raw: RawInstance | None) -> str | None:
    """Why the computed status (docs/behaviour.md §3.1) keeps an instance from traffic."""
    if status is Status.STARTED:
        return None
    if status is Status.STARTING:
        return "starting"
    if status is Status.PASSIVATED:
        return "passivated: asleep until a visitor wakes it"
    if status is Status.STOPPED:
        return "stopped"
    if raw is None:
        return "error"
    current, expected = raw.current or "missing", raw.expected or "missing"
    if raw.current == "started" and raw.expected == "started" and not raw.alive:
        return "not alive: status/alive is missing or empty"
    return f"error: status/current {current} with status/expected {expected}"


def unroutable_reasons(
    instance: Instance, raw: RawInstance | None, ejected_until: float | None
) -> list[str]:
    """Every reason the instance takes no traffic now; empty when it does."""
    reasons = []
    if instance.location is None:
        error = raw.location_error if raw is not None else None
        reasons.append(f"invalid location: {error}" if error else "no location")
    reason = status_reason(instance.status, raw)
    if reason is not None:
        reasons.append(reason)
    if ejected_until is not None and instance.upstream is not None:
        reasons.append("ejected: an exchange with it failed, other instances are preferred")
    return reasons


def instance_view(
    instance: Instance, raw: RawInstance | None, ejected_until: float | None
) -> dict[str, Any]:
    """One instance for `routes`: the keys it always had, then why and when.

    `routable` is false while the instance is ejected (docs/behaviour.md §4.2), and
    `ejected_until` says until when (epoch seconds).
    """
    location = instance.location
    return {
        "index": instance.index,
        "status": instance.status.value,
        "location": None if location is None else {"host": location.host, "port": location.port},
        "routable": instance.upstream is not None and ejected_until is None,
        "reasons": unroutable_reasons(instance, raw, ejected_until),
        "location_error": raw.location_error if raw is not None else None,
        "ejected_until": ejected_until,
        "last_access": raw.last_access if raw is not None else None,
    }


def sorted_in_chunks(names: list[str], pause: Pause = no_pause) -> list[str]:
    """`sorted(names)`, pausing between chunks: sorted runs, then merged a chunk at a time."""
    if len(names) <= CHUNK:
        return sorted(names)
    runs = []
    for start in range(0, len(names), CHUNK):
        runs.append(sorted(names[start : start + CHUNK]))
        pause()
    merged = heapq.merge(*runs)
    out: list[str] = []
    while block := list(islice(merged, CHUNK)):
        out.extend(block)
        pause()
    return out


class NameIndex:
    """The names of a table (hostnames...) in order, kept up to date by the changes.

    Sorting 100,000 names takes tens of milliseconds, so it is done once (in chunks), and
    each change then moves one name in or out by bisection. `touched(name)` is told of every
    change; `invalidate()` of a reload, which sorts again at the next `ordered`.
    """

    def __init__(self) -> None:
        self._names: list[str] | None = None
        self._dirty: set[str] = set()
        self._generation = 0  # bumped by invalidate: a sort begun before it is stale

    def invalidate(self) -> None:
        self._names = None
        self._dirty.clear()
        self._generation += 1

    def touched(self, name: str) -> None:
        if len(self._dirty) >= MAX_DIRTY:
            self.invalidate()
        else:
            self._dirty.add(name)

    def ordered(self, present: Collection[str], pause: Pause = no_pause) -> Sequence[str]:
        """The names of `present` in order (sorted only after a reload, in chunks)."""
        names = self._names
        if names is None:
            generation = self._generation
            self._dirty.clear()  # from here on, changes are noted against the new list
            names = sorted_in_chunks(list(present), pause)
            if generation == self._generation:  # no reload while it was sorted
                self._names = names
        for name in self._dirty:
            at = bisect.bisect_left(names, name)
            listed = at < len(names) and names[at] == name
            if name in present and not listed:
                names.insert(at, name)
            elif listed and name not in present:
                del names[at]
        self._dirty.clear()
        if len(names) != len(present):  # a change went unnoticed: never keep a wrong list
            self.invalidate()
            return sorted_in_chunks(list(present), pause)
        return names


@dataclass(frozen=True, slots=True)
class Page:
    names: list[str]  # the names on this page, in order
    query: str
    number: int  # 1-based, clamped to the pages there are
    per_page: int
    total: int  # names matching the query

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    def summary(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "number": self.number,
            "per_page": self.per_page,
            "total": self.total,
            "pages": self.pages,
        }


def page_of(
    names: Sequence[str], query: str, number: int, per_page: int, pause: Pause = no_pause
) -> Page:
    """Page `number` of the names containing `query` (case-insensitive), in their order.

    Only that page's names are copied; counting the matches reads the names a chunk at a
    time, pausing in between.
    """
    per_page = max(1, min(per_page, MAX_PER_PAGE))
    query = query.strip().lower()[:MAX_QUERY]
    number = max(1, number)
    if not query:
        total = len(names)
        number = min(number, max(1, -(-total // per_page)))
        start = (number - 1) * per_page
        return Page(list(names[start : start + per_page]), query, number, per_page, total)
    hits: list[list[str]] = []
    for start in range(0, len(names), CHUNK):
        hits.append([n for n in names[start : start + CHUNK] if query in n])
        if start + CHUNK < len(names):
            pause()
    total = sum(len(h) for h in hits)
    number = min(number, max(1, -(-total // per_page)))
    chosen = list(islice(_chain(hits), (number - 1) * per_page, number * per_page))
    return Page(chosen, query, number, per_page, total)


def _chain(lists: Iterable[list[str]]) -> Iterable[str]:
    for items in lists:
        yield from items
