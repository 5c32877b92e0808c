"""How late the event loop runs what is due, and what held it: the process's own measures.

Rule: one greenlet per process (the composition root, gogeta.Process, spawns and kills
it) sleeps `PERIOD` seconds again and again and observes by how much each wake-up came
late into `gogeta_event_loop_lag_seconds`. A wake-up is late when something kept the loop
from turning: a request, a load or a scrape running without giving others their turn, a
collection of the cyclic garbage collector, the process waiting for a CPU, or many
greenlets ready at once each taking its turn. Every request ready meanwhile waited as
long (docs/behaviour.md §2).

While it runs, a hook on every greenlet switch of the loop's thread times each run of one
greenlet, from the switch into it to the switch out of it, and observes those of
`RUN_FLOOR` or more into `gogeta_event_loop_run_seconds`: one piece of work holding the
loop by itself, told apart from many short ones in a row. The hub's own time (waiting
for events, running their callbacks) is not a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import greenlet
from prometheus_client import CollectorRegistry, Histogram

# Seconds between two wake-ups: 200 a second, a few µs each. A stall of 10 ms + PERIOD or
# more always holds one wake-up back 10 ms at least, whenever it begins.
PERIOD = 0.005
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Runs shorter are not observed: nearly all are (a request takes a few tenths of a ms).
RUN_FLOOR = 0.001

TraceHook = Callable[[str, tuple[Any, Any]], None]


class _RunTimer:
    """The switch hook: the length of each run of a greenlet other than the hub."""

    def __init__(self, hub: object, observe: Callable[[float], None]) -> None:
        self.hub = hub
        self.observe = observe
        self.since = time.perf_counter()
        self.previous: TraceHook | None = None  # a hook already installed, still called

    def __call__(self, event: str, args: tuple[Any, Any]) -> None:
        now = time.perf_counter()
        if args[0] is not self.hub:  # (origin, target): the origin's run ends here
            held = now - self.since
            if held >= RUN_FLOOR:
                self.observe(held)
        self.since = now
        if self.previous is not None:
            self.previous(event, args)


class LoopLag:
    """The histograms of wake-up lateness and of long runs, and the loop that feeds them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Histogram(
            "gogeta_event_loop_lag_seconds",
            f"How late a wake-up due every {PERIOD * 1000:g} ms ran: how long the event loop"
            " did not turn",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.runs = Histogram(
            "gogeta_event_loop_run_seconds",
            f"Runs of one greenlet that held the event loop {RUN_FLOOR * 1000:g} ms or more,"
            " by length",
            buckets=LAG_BUCKETS,
            registry=registry,
        )

    def run(self) -> None:
        timer = _RunTimer(gevent.get_hub(), self.runs.observe)
        timer.previous = greenlet.settrace(timer)
        try:
            self._wake_up_forever()
        finally:
            greenlet.settrace(timer.previous)

    def _wake_up_forever(self) -> None:
        loop = gevent.get_hub().loop
        while True:
            # The loop's clock is the time its iteration began: brought to now, so that the
            # timer is due `PERIOD` from here and not from a moment already past.
            loop.update_now()
            due = time.perf_counter() + PERIOD
            gevent.sleep(PERIOD)
            self.lag.observe(max(0.0, time.perf_counter() - due))
