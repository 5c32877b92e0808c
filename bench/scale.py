"""Part 3, scale: gogeta with 1,000, 10,000 (and, opt-in, 100,000) domains in etcd.

Rule: tiers grow one etcd (the domains of a tier are those of the one before and more),
each tier measured by a fresh gogeta, started after every key is written. Under steady
traffic (half the random mix's req/s), health and metrics are timed and the event loop's
longest stall bounded by a probe of its own (`bench/loop_probe.py`), against the goals.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.clients import Probe, WrkResult, run_wrk, served, wait_routed
from bench.harness import BENCH, PYTHON, free_port, rss_mb, say
from bench.rig import Rig, Skipped, etcd_skip
from bench.servers import OTHER_BODY, SMALL_BODY, Etcd, location, start_gogeta
from bench.stats import Spread, median

OPT_IN_NOTE = "100,000 domains is opt-in (BENCH_SCALE=100000): writing 300k keys takes minutes"
# The architecture's goals at 100,000 domains, reported beside the figures.
ADMIN_GOAL_MS = 5.0  # health and metrics answer within
STALL_GOAL_MS = 10.0  # no event-loop stall longer, during steady traffic
STEADY_CONNECTIONS = 16  # wrk's connections for the steady traffic, each paced
ADMIN_TIMINGS = 50  # of health and of metrics each, spread over the steady traffic
PROBE_STARTUP = 1.5  # seconds the stall probes have to start before the steady traffic does


LAG_FAMILY = "gogeta_event_loop_lag_seconds"  # gogeta's own: how late the loop turned
RUN_FAMILY = "gogeta_event_loop_run_seconds"  # and its runs that held the loop by themselves
Buckets = dict[str, dict[str, float]]  # family → le → cumulative count, of one scrape


@dataclass(frozen=True)
class OverGoal:
    """One of gogeta's loop histograms over a window (two scrapes' difference): what it
    observed (the lag: a wake-up due every 5 ms; the runs: each of 1 ms or more), how
    many of those were over `STALL_GOAL_MS`, and the bucket bound the longest stays under
    (None: over the last bound)."""

    observed: int
    over_goal: int
    under_ms: float | None

    @classmethod
    def between(cls, family: str, before: Buckets, after: Buckets) -> OverGoal:
        was, now = before.get(family, {}), after.get(family, {})
        grown = {le: now[le] - was.get(le, 0.0) for le in now}
        observed = grown.get("+Inf", 0.0)
        goal = grown.get(f"{STALL_GOAL_MS / 1000:g}")
        if goal is None:
            raise RuntimeError(f"{family} has no bucket at {STALL_GOAL_MS:g} ms")
        bounds = sorted((float(le), n) for le, n in grown.items() if le != "+Inf")
        under = next((b * 1000 for b, n in bounds if n == observed), None)
        return cls(int(observed), int(observed - goal), under)


def loop_buckets(port: int) -> Buckets:
    """The cumulative buckets of gogeta's loop lag and long runs, from one scrape."""
    client = Probe(port)
    try:
        status, body = client.get("admin", "/__gogeta/metrics")
    finally:
        client.close()
    if status != 200:
        raise RuntimeError(f"/__gogeta/metrics answered {status}")
    found: Buckets = {}
    for family in (LAG_FAMILY, RUN_FAMILY):
        head = f'{family}_bucket{{le="'.encode()
        for line in body.splitlines():
            if line.startswith(head):
                le, _, number = line[len(head) :].partition(b'"} ')
                found.setdefault(family, {})[le.decode()] = float(number)
        if family not in found:
            raise RuntimeError(f"no {family} in gogeta's metrics")
    return found


@dataclass(frozen=True)
class Steady:
    """Under steady traffic (wrk over every domain, each connection paced so that the total
    is about half the random mix's req/s), two windows of `seconds`: in the first, health
    is timed and the stall probe runs; in the second, metrics is timed and the probe runs
    again, so that a scrape's effect on the loop is seen apart."""

    seconds: int  # of each window's wrk; timings and probe run within, 1 s from each end
    target_rps: float
    rps: float  # what wrk achieved, first window
    p99_ms: float
    errors: int
    health_ms: Spread
    health_timed: int
    metrics_ms: Spread
    metrics_timed: int  # up to ADMIN_TIMINGS: as many as the window holds
    admin_failures: int  # health or metrics answers other than 200
    stall_ms: Spread  # the probe's round trips, first window: the max bounds the stall
    probe_requests: int  # first window
    probe_failures: int  # answers other than 200, both windows
    stall_scraping_ms: Spread  # the same while metrics is scraped (second window)
    rps_scraping: float
    machine_ms: Spread  # the same probe of the nginx backend, first window: the machine's
    machine_scraping_ms: Spread
    loop_lag: OverGoal  # gogeta's own measures, first window
    loop_lag_scraping: OverGoal
    loop_runs: OverGoal
    loop_runs_scraping: OverGoal


@dataclass(frozen=True)
class Tier:
    domains: int
    routable_after_start_s: float
    rss_after_load_mb: float
    sample_routed: int  # of `sample_size` domains drawn at random, answering 200
    sample_size: int
    changes: int  # sequential location changes from one client
    changes_visible_s: float | None  # first write → last change served; None: not in 120 s
    changes_write_s: float
    changes_lag_after_last_write_ms: float | None
    changes_first_visible: bool
    single_rps: float
    single_p99_ms: float
    single_errors: int
    single_cpu_us_per_req: float
    random_rps: float
    random_p99_ms: float
    random_errors: int
    random_cpu_us_per_req: float
    random_x_single: float
    steady: Steady
    rss_after_wrk_mb: float


@dataclass(frozen=True)
class ScaleResult:
    tiers: list[Tier]
    note: str | None


def run(rig: Rig) -> ScaleResult | Skipped:
    skip = etcd_skip()
    if skip:
        return skip
    etcd = Etcd(rig.procs, rig.tools.etcd, "etcd-scale")
    tiers: list[Tier] = []
    written = 0

    def domain_keys(i: int) -> list[tuple[str, str]]:
        return [
            (f"/services/s{i}/1/location", location(rig.port_a)),
            (f"/domains/d{i}.scale/type", "service"),
            (f"/domains/d{i}.scale/value", f"s{i}"),
        ]

    try:
        for tier in rig.opts.tiers:
            say(f"part 3: writing domains {written}..{tier - 1} to etcd")
            seconds = etcd.put_many(domain_keys, range(written, tier))
            keys = 3 * (tier - written)
            say(f"part 3: {keys} keys in {seconds:.1f} s ({keys / seconds:.0f}/s)")
            written = tier
            tiers.append(measure_tier(rig, etcd, tier))
    finally:
        rig.procs.stop(etcd.proc)
    return ScaleResult(tiers, None if 100_000 in rig.opts.tiers else OPT_IN_NOTE)


def measure_tier(rig: Rig, etcd: Etcd, tier: int) -> Tier:
    procs, opts = rig.procs, rig.opts
    port = free_port()
    name = f"gogeta-scale-{tier}"
    probe = Probe(port)
    started = time.perf_counter()
    flags = ["-resolverType", "IoEtcd", "-etcdAddress", etcd.url]
    gogeta = start_gogeta(procs, name, port, flags, wait=False)
    try:
        last = f"d{tier - 1}.scale"
        routable = wait_routed(probe, last, served(SMALL_BODY), started, 120, interval=0.005)
        if routable is None:
            raise RuntimeError(f"{last} not routable after 120 s\n{procs.log_tail(name)}")
        rss_after_load = rss_mb(gogeta.pid)
        sample = random.sample(range(tier), min(50, tier))
        sample_routed = sum(probe.get(f"d{i}.scale")[0] == 200 for i in sample)

        changes = min(1000, tier)
        say(f"part 3: {tier} domains: {changes} sequential location changes")
        first = tier - changes
        since = time.perf_counter()
        for i in range(first, tier):
            etcd.put(f"/services/s{i}/1/location", location(rig.port_b))
        writes_done = time.perf_counter()
        visible = wait_routed(probe, last, served(OTHER_BODY), since, timeout=120)
        lag_ms = (since + visible - writes_done) * 1000 if visible is not None else None
        first_visible = probe.get(f"d{first}.scale") == (200, OTHER_BODY)

        say(f"part 3: {tier} domains: wrk single domain vs random mix")
        runs: dict[str, list[WrkResult]] = {"single": [], "random": []}
        for rnd in range(opts.rounds):
            for kind in ("single", "random") if rnd % 2 == 0 else ("random", "single"):
                hosts = "1" if kind == "single" else str(tier)
                res = run_wrk(
                    rig.tools.wrk,
                    f"http://127.0.0.1:{port}/",
                    50,
                    opts.seconds,
                    gogeta.pid,
                    script=BENCH / "hosts.lua",
                    env={"BENCH_HOSTS": hosts},
                )
                runs[kind].append(res)
        single, mixed = runs["single"], runs["random"]
        random_rps = median(r.rps for r in mixed)
        say(f"part 3: {tier} domains: steady traffic, health and metrics timed, stall probe")
        steady = steady_traffic(rig, port, tier, random_rps)
        return Tier(
            domains=tier,
            routable_after_start_s=routable,
            rss_after_load_mb=rss_after_load,
            sample_routed=sample_routed,
            sample_size=len(sample),
            changes=changes,
            changes_visible_s=visible,
            changes_write_s=writes_done - since,
            changes_lag_after_last_write_ms=lag_ms,
            changes_first_visible=first_visible,
            single_rps=median(r.rps for r in single),
            single_p99_ms=median(r.p99_ms for r in single),
            single_errors=sum(r.socket_errors + r.non_2xx for r in single),
            single_cpu_us_per_req=_cpu(single),
            random_rps=random_rps,
            random_p99_ms=median(r.p99_ms for r in mixed),
            random_errors=sum(r.socket_errors + r.non_2xx for r in mixed),
            random_cpu_us_per_req=_cpu(mixed),
            random_x_single=median(r.rps / s.rps for r, s in zip(mixed, single, strict=True)),
            steady=steady,
            rss_after_wrk_mb=rss_mb(gogeta.pid),
        )
    finally:
        probe.close()
        procs.stop(gogeta)


def steady_traffic(rig: Rig, port: int, tier: int, capacity_rps: float) -> Steady:
    """The two windows of `Steady`, at half `capacity_rps`.

    Half the capacity leaves the loop idle about half the time, so a request seldom waits
    behind others: what delays it is its own cost or the loop not turning. (At full load
    every request waits its turn among wrk's, which says nothing about a stall.)
    """
    seconds = max(rig.opts.seconds, 4)
    target = capacity_rps / 2 if capacity_rps > 0 and not math.isnan(capacity_rps) else 500.0
    delay_ms = max(1, round(STEADY_CONNECTIONS * 1000 / target))
    # gogeta's first scrape writes every child of the page, later ones only those that
    # moved: in steady service it is long past, so here it comes before the windows.
    loop_buckets(port)
    quiet = _window(rig, port, tier, delay_ms, seconds, "/__gogeta/health", "quiet")
    scraping = _window(rig, port, tier, delay_ms, seconds, "/__gogeta/metrics", "scraping")
    return Steady(
        seconds=seconds,
        target_rps=STEADY_CONNECTIONS * 1000 / delay_ms,
        rps=quiet.wrk.rps,
        p99_ms=quiet.wrk.p99_ms,
        errors=quiet.wrk.socket_errors + quiet.wrk.non_2xx,
        health_ms=Spread.of_seconds(quiet.timed),
        health_timed=len(quiet.timed),
        metrics_ms=Spread.of_seconds(scraping.timed),
        metrics_timed=len(scraping.timed),
        admin_failures=quiet.failures + scraping.failures,
        stall_ms=quiet.probe_ms,
        probe_requests=quiet.probe_requests,
        probe_failures=quiet.probe_failures + scraping.probe_failures,
        stall_scraping_ms=scraping.probe_ms,
        rps_scraping=scraping.wrk.rps,
        machine_ms=quiet.machine_ms,
        machine_scraping_ms=scraping.machine_ms,
        loop_lag=quiet.loop_lag,
        loop_lag_scraping=scraping.loop_lag,
        loop_runs=quiet.loop_runs,
        loop_runs_scraping=scraping.loop_runs,
    )


@dataclass(frozen=True)
class _Window:
    wrk: WrkResult
    timed: list[float]  # seconds, one per request of the timed path
    failures: int  # timed answers other than 200
    probe_ms: Spread
    probe_requests: int
    probe_failures: int
    machine_ms: Spread  # the nginx backend probed the same way at the same time
    loop_lag: OverGoal  # from just before the timings and probes to just after them
    loop_runs: OverGoal


def _window(
    rig: Rig, port: int, tier: int, delay_ms: int, seconds: int, path: str, name: str
) -> _Window:
    """wrk (paced by `delay_ms`) for `seconds`; within it, from 1 s after its start to 1 s
    before its end, the stall probe of gogeta and the same of the nginx backend (what the
    machine alone does to a server whose loop never stalls that long; each its own
    process), and `ADMIN_TIMINGS` requests for `path`, evenly spaced, one at a time over
    one keep-alive connection (fewer if they take longer than the window).

    The probes are started `PROBE_STARTUP` seconds before wrk: a Python process starting
    takes a CPU for a while, which gogeta would otherwise lose inside the window."""
    probes_started = time.time()
    begin = probes_started + PROBE_STARTUP + 1  # 1 s into wrk's run
    end = begin + seconds - 2  # 1 s before its end
    probed: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for what, target, target_path in (
            ("gogeta", port, "/__gogeta/health"),
            ("nginx", rig.port_a, "/"),
        ):
            log = f"loop-probe-{tier}-{name}-{what}"
            argv = [PYTHON, "-m", "bench.loop_probe", str(target), target_path]
            argv += [f"{begin:.3f}", f"{end:.3f}"]
            probed.append((log, rig.procs.start(log, argv)))
        time.sleep(max(0.0, probes_started + PROBE_STARTUP - time.time()))
        with ThreadPoolExecutor(max_workers=1) as pool:
            load = pool.submit(
                run_wrk,
                rig.tools.wrk,
                f"http://127.0.0.1:{port}/",
                STEADY_CONNECTIONS,
                seconds,
                script=BENCH / "hosts.lua",
                env={"BENCH_HOSTS": str(tier), "BENCH_DELAY_MS": str(delay_ms)},
            )
            time.sleep(max(0.0, begin - 0.3 - time.time()))
            loop_before = loop_buckets(port)
            timed, failures = _time_requests(port, path, begin, end)
            for _, prober in probed:
                prober.wait(timeout=max(0.0, end - time.time()) + 30)
            loop_after = loop_buckets(port)
            lag = OverGoal.between(LAG_FAMILY, loop_before, loop_after)
            runs = OverGoal.between(RUN_FAMILY, loop_before, loop_after)
            wrk = load.result()
    finally:
        for _, prober in probed:
            rig.procs.stop(prober)
    (gogeta, requests, failed), (nginx, _, _) = (_probe_result(rig, *p) for p in probed)
    return _Window(wrk, timed, failures, gogeta, requests, failed, nginx, lag, runs)


def _probe_result(rig: Rig, log: str, prober: subprocess.Popen[bytes]) -> tuple[Spread, int, int]:
    """(round trips, requests, failed) from a probe's JSON line."""
    lines = rig.procs.log_path(log).read_text().splitlines()
    if prober.returncode != 0 or not lines:
        raise RuntimeError(f"a stall probe failed\n{rig.procs.log_tail(log)}")
    found = json.loads(lines[-1])
    spread = Spread(found["min"], found["median"], found["p99"], found["max"])
    return spread, found["requests"], found["failed"]


def _time_requests(port: int, path: str, begin: float, end: float) -> tuple[list[float], int]:
    """(seconds of each request, answers other than 200) for up to `ADMIN_TIMINGS` GETs of
    `path`, the i-th sent at `begin + i·step` (epoch seconds) or once the one before is
    answered, none after `end`."""
    client = Probe(port)
    client.get("admin", path)  # connected (and the first answer made) before the timings
    step = (end - begin) / ADMIN_TIMINGS
    timed: list[float] = []
    failures = 0
    try:
        for i in range(ADMIN_TIMINGS):
            time.sleep(max(0.0, begin + i * step - time.time()))
            if time.time() >= end:
                break
            sent = time.perf_counter()
            status, _ = client.get("admin", path)
            timed.append(time.perf_counter() - sent)
            failures += status != 200
    finally:
        client.close()
    return timed, failures


def _cpu(results: list[WrkResult]) -> float:
    return median(r.cpu_us_per_req for r in results if r.cpu_us_per_req is not None)
