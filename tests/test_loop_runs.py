"""The loop's long runs (`gogeta_event_loop_run_seconds`, docs/behaviour.md §2), in process.

One greenlet holding the loop by itself is observed, at its length; the many short runs of
a greenlet that gives others their turn are not; the switch hook leaves with the greenlet
that measures. Real gevent, real greenlets, the histogram read from its registry.
"""

from __future__ import annotations

import time

import gevent
import greenlet
from prometheus_client import CollectorRegistry

from proxy.loop_lag import LoopLag
from tests.support import wait_until

RUNS = "gogeta_event_loop_run_seconds"


def observed(registry: CollectorRegistry, over: str | None = None) -> float:
    """Runs observed, or only those longer than the bucket bound `over`."""
    count = registry.get_sample_value(f"{RUNS}_count") or 0.0
    if over is None:
        return count
    return count - (registry.get_sample_value(f"{RUNS}_bucket", {"le": over}) or 0.0)


def hold_the_loop(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass  # no switch: every other greenlet waits


def test_a_greenlet_holding_the_loop_is_observed_and_short_runs_are_not() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry)
    measuring = gevent.spawn(lag.run)
    try:
        wait_until(lambda: gevent.sleep(0.01) or greenlet.gettrace() is not None,
                   what="the switch hook installed")  # fmt: skip
        before = observed(registry)

        def brief() -> None:
            for _ in range(200):
                gevent.sleep(0)  # 200 runs of a few µs each

        gevent.spawn(brief).join()
        assert observed(registry) - before < 100  # not every run: only the long ones

        long_before = observed(registry, over="0.025")
        gevent.spawn(hold_the_loop, 0.04).join()
        assert observed(registry, over="0.025") >= long_before + 1
    finally:
        measuring.kill()
    assert greenlet.gettrace() is None  # the hook went with the greenlet
