"""Part 2, propagation: how long an etcd write takes to change what gogeta answers.

Rule: the clock starts just before the write that changes the routing is sent (so it
includes etcd's own commit) and stops at the first answer by the new rule, polled every
millisecond over one keep-alive connection.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from bench.clients import Probe, served, wait_routed
from bench.harness import free_port
from bench.rig import Rig, Skipped, etcd_skip
from bench.servers import OTHER_BODY, SMALL_BODY, Etcd, location, start_gogeta
from bench.stats import Spread


@dataclass(frozen=True)
class ChangeTimes:
    """Milliseconds from the write to the change served, over `trials` trials (those that
    timed out after 10 s are counted, not timed)."""

    min: float
    median: float
    p99: float
    max: float
    trials: int
    timeouts: int

    @classmethod
    def of(cls, seconds: list[float], trials: int) -> ChangeTimes:
        spread = Spread.of_seconds(seconds)
        return cls(spread.min, spread.median, spread.p99, spread.max, trials, trials - len(seconds))


@dataclass(frozen=True)
class PropagationResult:
    new_domain_ms: ChangeTimes
    location_change_ms: ChangeTimes


def _pause() -> None:
    time.sleep(0.02 + random.random() * 0.02)  # unaligned with any periodic work


def run(rig: Rig, api: str = "v2") -> PropagationResult | Skipped:
    """Through etcd's `api` (v2 or v3): gogeta reads that API, the writes go through it."""
    skip = etcd_skip()
    if skip:
        return skip
    opts, procs = rig.opts, rig.procs
    etcd = Etcd(procs, rig.tools.etcd, f"etcd-propagation-{api}", api)
    port = free_port()
    name = f"gogeta-propagation-{api}"
    flags = ["-resolverType", "IoEtcd", "-etcdAddress", etcd.url, "-etcdApi", api]
    gogeta = start_gogeta(procs, name, port, flags)
    probe = Probe(port)
    try:
        # One domain routed end to end first: gogeta has loaded and is watching.
        etcd.put("/services/ready/1/location", location(rig.port_a))
        etcd.put("/domains/ready.bench/type", "service")
        etcd.put("/domains/ready.bench/value", "ready")
        if wait_routed(probe, "ready.bench", served(SMALL_BODY), time.perf_counter(), 30) is None:
            raise RuntimeError("gogeta never routed ready.bench\n" + procs.log_tail(name))

        new_domain: list[float] = []
        for i in range(opts.trials):
            etcd.put(f"/services/svc{i}/1/location", location(rig.port_a))
            etcd.put(f"/domains/d{i}.bench/type", "service")
            since = time.perf_counter()  # before the write that makes the domain routable
            etcd.put(f"/domains/d{i}.bench/value", f"svc{i}")
            took = wait_routed(probe, f"d{i}.bench", served(SMALL_BODY), since)
            if took is not None:
                new_domain.append(took)
            _pause()

        etcd.put("/services/moving/1/location", location(rig.port_a))
        etcd.put("/domains/moving.bench/type", "service")
        etcd.put("/domains/moving.bench/value", "moving")
        if wait_routed(probe, "moving.bench", served(SMALL_BODY), time.perf_counter()) is None:
            raise RuntimeError("gogeta never routed moving.bench")
        moved: list[float] = []
        for i in range(opts.trials):
            port_to, body = (rig.port_b, OTHER_BODY) if i % 2 == 0 else (rig.port_a, SMALL_BODY)
            since = time.perf_counter()
            etcd.put("/services/moving/1/location", location(port_to))
            took = wait_routed(probe, "moving.bench", served(body), since)
            if took is not None:
                moved.append(took)
            _pause()
    finally:
        probe.close()
        procs.stop(gogeta)
        procs.stop(etcd.proc)
    return PropagationResult(
        new_domain_ms=ChangeTimes.of(new_domain, opts.trials),
        location_change_ms=ChangeTimes.of(moved, opts.trials),
    )
