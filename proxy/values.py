"""The values behind gogeta's metrics, standalone: a float each, without a lock.

Rule: prometheus-client makes every value of every child through `values.ValueClass`; in
a process whose metrics are touched by its event loop alone (gevent's greenlets, never
interrupted while they add), the library's `MutexValue` lock guards nothing, and costs:
the lock and its list of waiters are two more objects per value for the cyclic collector
to walk at each full collection (10,000 of them at the label bounds), and a lock taken at
each `inc`. `install` makes them `LoopValue`s instead, before any child exists; under
gunicorn the library's multiprocess values (shared files) are left as they are.

A `LoopValue` also tells the metrics page when it moves: once armed with a list (its
`_sink`, by proxy/exposition.py), its next change appends it there and disarms it, so a
scrape formats again only the children whose values moved since the one before.
"""

from __future__ import annotations

from typing import Any

import prometheus_client.values


class LoopValue:
    """`MutexValue`'s interface and float (`_value`, which proxy/exposition.py reads)."""

    __slots__ = ("_exemplar", "_sink", "_value")
    _multiprocess = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._value = 0.0
        self._exemplar: Any = None
        # Where the next change is told (then None until the page reads the value again).
        self._sink: list[LoopValue] | None = None

    def inc(self, amount: float) -> None:
        self._value += amount
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.append(self)

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.append(self)

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


def install() -> None:
    """Values made from now on are `LoopValue`s, unless they go to multiprocess files."""
    if not in_files():
        prometheus_client.values.ValueClass = LoopValue


def in_files() -> bool:
    """Whether values are prometheus-client's multiprocess ones (under gunicorn)."""
    return bool(getattr(prometheus_client.values.ValueClass, "_multiprocess", False))
