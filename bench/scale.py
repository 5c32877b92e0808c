"""Part 3, scale: gogeta with 1,000, 10,000 (and, opt-in, 100,000) domains in etcd.

Rule: tiers grow one etcd (the domains of a tier are those of the one before and more),
each tier measured by a fresh gogeta, started after every key is written.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from bench.clients import Probe, WrkResult, run_wrk, served, wait_routed
from bench.harness import BENCH, free_port, rss_mb, say
from bench.rig import Rig, Skipped, etcd_skip
from bench.servers import OTHER_BODY, SMALL_BODY, Etcd, location, start_gogeta
from bench.stats import median

OPT_IN_NOTE = "100,000 domains is opt-in (BENCH_SCALE=100000): writing 300k keys takes minutes"


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
            random_rps=median(r.rps for r in mixed),
            random_p99_ms=median(r.p99_ms for r in mixed),
            random_errors=sum(r.socket_errors + r.non_2xx for r in mixed),
            random_cpu_us_per_req=_cpu(mixed),
            random_x_single=median(r.rps / s.rps for r, s in zip(mixed, single, strict=True)),
            rss_after_wrk_mb=rss_mb(gogeta.pid),
        )
    finally:
        probe.close()
        procs.stop(gogeta)


def _cpu(results: list[WrkResult]) -> float:
    return median(r.cpu_us_per_req for r in results if r.cpu_us_per_req is not None)
