"""How late the event loop runs what is due: the process's own measure of its stalls.

Rule: one greenlet per process (the composition root, gogeta.Process, spawns and kills
it) sleeps `PERIOD` seconds again and again and observes by how much each wake-up came
late into `gogeta_event_loop_lag_seconds`. A wake-up is late when something kept the loop
from turning: a request, a load or a scrape running without giving others their turn, a
collection of the cyclic garbage collector, the process waiting for a CPU. Every request
ready meanwhile waited as long (docs/behaviour.md §2).
"""

from __future__ import annotations

import time

import gevent
from prometheus_client import CollectorRegistry, Histogram

# Seconds between two wake-ups: 200 a second, a few µs each. A stall of 10 ms + PERIOD or
# more always holds one wake-up back 10 ms at least, whenever it begins.
PERIOD = 0.005
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class LoopLag:
    """The histogram of wake-up lateness, and the loop that feeds it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Histogram(
            "gogeta_event_loop_lag_seconds",
            f"How late a wake-up due every {PERIOD * 1000:g} ms ran: how long the event loop"
            " did not turn",
            buckets=LAG_BUCKETS,
            registry=registry,
        )

    def run(self) -> None:
        loop = gevent.get_hub().loop
        while True:
            # The loop's clock is the time its iteration began: brought to now, so that the
            # timer is due `PERIOD` from here and not from a moment already past.
            loop.update_now()
            due = time.perf_counter() + PERIOD
            gevent.sleep(PERIOD)
            self.lag.observe(max(0.0, time.perf_counter() - due))
