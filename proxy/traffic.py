"""The last minute of traffic, in memory: 60 one-second buckets, for `/__gogeta/live`.

Counting a request costs a clock read, a few dict lookups and additions (no lock:
greenlets switch only at blocking calls). Reading sums the buckets of the last 60
seconds. Each bucket counts requests, 4xx and 5xx answers and upstream latency (a
histogram whose bucket bounds grow by 20 %, so a percentile is exact to 20 %), in total,
per domain and per upstream (named as in the access log); a second holds at most
`MAX_KEYS` domains and as many upstreams, further ones count in the totals only.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

WINDOW = 60  # seconds
MAX_KEYS = 1000  # distinct domains (and upstreams) one second keeps
# Upper bounds of the latency buckets, in seconds: 0.1 ms × 1.2^k, up to about 70 s.
BOUNDS = tuple(0.0001 * 1.2**k for k in range(75))


class Tally:
    """Requests, errors and a sparse latency histogram (bucket → count)."""

    __slots__ = ("c4xx", "c5xx", "errors", "latency", "requests")

    def __init__(self) -> None:
        self.requests = self.errors = self.c4xx = self.c5xx = 0
        self.latency: dict[int, int] = {}

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.c4xx += other.c4xx
        self.c5xx += other.c5xx
        latency = self.latency
        for bucket, count in other.latency.items():
            latency[bucket] = latency.get(bucket, 0) + count

    def observe(self, seconds: float) -> None:
        bucket = bisect.bisect_left(BOUNDS, seconds)
        self.latency[bucket] = self.latency.get(bucket, 0) + 1

    def quantile_ms(self, q: float) -> float | None:
        """The upper bound (ms) of the bucket holding quantile `q`; None without latencies."""
        return quantile_ms(self.latency, q)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": self.quantile_ms(0.5),
            "p99_ms": self.quantile_ms(0.99),
        }


def quantile_ms(latency: Mapping[int, int], q: float) -> float | None:
    total = sum(latency.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(latency):
        seen += latency[bucket]
        if seen >= rank:
            bound = BOUNDS[bucket] if bucket < len(BOUNDS) else float("inf")
            return round(bound * 1000, 3 if bound < 0.01 else 1)
    return None  # not reached: the last bucket holds the total


class _Keyed:
    """One second's tallies by key (domains, or upstreams), held only in dicts of numbers.

    A second keeps up to `MAX_KEYS` of them and a minute sixty seconds: as objects (a
    `Tally` each) they would be tens of thousands of long-lived ones, which the cyclic
    collector walks at every full collection (a pause of 10–20 ms). A dict holding only
    strings and numbers is not tracked by it at all; one holding dicts is, and each full
    collection visits all its entries: so the latency is by bucket, then by key (a few
    dozen buckets a second, not a thousand keys).
    """

    __slots__ = ("c4xx", "c5xx", "errors", "latency", "requests")

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.c4xx: dict[str, int] = {}
        self.c5xx: dict[str, int] = {}
        self.latency: dict[int, dict[str, int]] = {}  # bucket → key → count

    def count(self, key: str, status: int, seconds: float | None, error: bool) -> None:
        requests = self.requests
        if key not in requests:
            if len(requests) >= MAX_KEYS:
                return  # counted in the totals only
            requests[key] = 0
        requests[key] += 1
        if status >= 500:
            self.c5xx[key] = self.c5xx.get(key, 0) + 1
        elif status >= 400:
            self.c4xx[key] = self.c4xx.get(key, 0) + 1
        if error:
            self.errors[key] = self.errors.get(key, 0) + 1
        if seconds is not None:
            bucket = bisect.bisect_left(BOUNDS, seconds)
            counts = self.latency.get(bucket)
            if counts is None:
                counts = self.latency[bucket] = {}
            counts[key] = counts.get(key, 0) + 1

    def add_to(self, tally: Tally, key: str) -> None:
        tally.requests += self.requests[key]
        tally.errors += self.errors.get(key, 0)
        tally.c4xx += self.c4xx.get(key, 0)
        tally.c5xx += self.c5xx.get(key, 0)
        latency = tally.latency
        for bucket, counts in self.latency.items():
            count = counts.get(key)
            if count is not None:
                latency[bucket] = latency.get(bucket, 0) + count


class _Second:
    __slots__ = ("domains", "second", "total", "upstreams")

    def __init__(self, second: int) -> None:
        self.second = second
        self.total = Tally()
        self.domains = _Keyed()
        self.upstreams = _Keyed()


class Traffic:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self._seconds = [_Second(-1) for _ in range(WINDOW)]
        self.connections = 0  # client connections open
        self.tunnels = 0  # upgrade tunnels open

    def _now(self) -> _Second:
        second = int(self._clock())
        slot = self._seconds[second % WINDOW]
        if slot.second != second:
            slot = self._seconds[second % WINDOW] = _Second(second)
        return slot

    def count(
        self,
        status: int,
        domain: str | None,
        upstream: str | None,
        seconds: float | None,
        failed: Iterable[str] = (),
    ) -> None:
        """One answered request: its status, its domain (None: not one gogeta serves), the
        upstream it was last sent to and how long that took to answer, and the upstreams
        that failed it before (each counts a request and an error there)."""
        slot = self._now()
        total = slot.total
        error = status >= 500
        total.requests += 1
        if error:
            total.c5xx += 1
            total.errors += 1
        elif status >= 400:
            total.c4xx += 1
        if seconds is not None:
            total.observe(seconds)
        if domain is not None:
            slot.domains.count(domain, status, seconds, error)
        if upstream is not None:
            slot.upstreams.count(upstream, status, seconds, error)
        for label in failed:
            if label != upstream:  # else already counted, as the answer's upstream
                slot.upstreams.count(label, 0, None, True)  # no answer: an error, no code

    def count_connection(self, delta: int) -> None:
        self.connections += delta

    def count_tunnel(self, delta: int) -> None:
        self.tunnels += delta

    def _recent(self) -> list[_Second]:
        oldest = int(self._clock()) - WINDOW
        return [s for s in self._seconds if s.second > oldest]

    def window(self) -> float:
        """Seconds the figures cover: the last minute, or the process's life if shorter."""
        return max(1.0, min(float(WINDOW), self._clock() - self.started))

    def total(self) -> Tally:
        found = Tally()
        for slot in self._recent():
            found.add(slot.total)
        return found

    def per_second(self) -> list[int]:
        """Requests in each of the last 60 seconds, oldest first (the current one last)."""
        now = int(self._clock())
        by_second = {s.second: s.total.requests for s in self._seconds}
        return [by_second.get(now - WINDOW + 1 + i, 0) for i in range(WINDOW)]

    def of(self, domains: Iterable[str], upstreams: Iterable[str]) -> dict[str, dict[str, Tally]]:
        """The last minute's tallies of these domains and upstreams (absent: no traffic)."""
        recent = self._recent()
        found: dict[str, dict[str, Tally]] = {"domains": {}, "upstreams": {}}
        for kind, keys in (("domains", domains), ("upstreams", upstreams)):
            into = found[kind]
            for key in keys:
                tally = None
                for slot in recent:
                    part: _Keyed = getattr(slot, kind)
                    if key in part.requests:
                        if tally is None:
                            tally = into[key] = Tally()
                        part.add_to(tally, key)
        return found

    def totals(self) -> dict[str, Any]:
        """This process's last minute, JSON-ready (see README, "The live view")."""
        total = self.total()
        window = self.window()
        return {
            "window_seconds": round(window, 1),
            "requests": total.requests,
            "requests_per_second": round(total.requests / window, 2),
            "4xx_per_second": round(total.c4xx / window, 2),
            "5xx_per_second": round(total.c5xx / window, 2),
            "upstream_p50_ms": total.quantile_ms(0.5),
            "upstream_p99_ms": total.quantile_ms(0.99),
            "open_connections": self.connections,
            "open_tunnels": self.tunnels,
            "per_second": self.per_second(),
            "latency": {str(k): v for k, v in total.latency.items()},
            "4xx": total.c4xx,
            "5xx": total.c5xx,
        }
