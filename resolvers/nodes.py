"""What the mirrors are fed: etcd's nodes reduced to (key, value, dir), and a load's pause.

Shared by both etcd APIs' sources (resolvers/etcd2_client.py, resolvers/etcd3_watcher.py),
the routing mirrors (resolvers/tree.py) and the certificates' (resolvers/certs.py). Pure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger("resolvers.tree")  # the mirrors' lines, as they always read

DELETE_ACTIONS = frozenset({"delete", "expire", "compareAndDelete"})
PAUSE_EVERY = 32  # keys, services or entries a load or a sweep handles between two pauses

Pause = Callable[[], None]


def no_pause() -> None:
    """A load that never lets anything else run (tests, tools)."""


class Node(NamedTuple):
    """A node of an etcd answer or event, reduced to what the mirrors need.

    A named tuple: a load makes one per etcd key (300,000 at 100,000 domains), and a tuple
    is built several times faster than a frozen dataclass.
    """

    key: str
    value: str | None = None
    dir: bool = False


class Reporter:
    """Logs an invalid value once per (key, value), not at every reload or request."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str | None]] = set()

    def invalid(self, key: str, value: str | None, reason: str) -> None:
        marker = (key, value)
        if marker in self._seen:
            return
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen.add(marker)
        shown = value if value is None or len(value) <= 200 else value[:200] + "..."
        log.warning("ignoring %s = %r: %s", key, shown, reason)
