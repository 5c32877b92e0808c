"""One soak: etcd, backends and gogeta started, load and churn for the minutes asked, then
the checks once both have stopped.

Rule: the verdict is made here and only here (`failures`); the load and the churn count,
this module judges. No thread may touch etcd or gogeta once they are stopped.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import platform
import random
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import etcd

from bench.harness import (
    BENCH,
    PYTHON,
    Processes,
    etcd_binary,
    free_port,
    listening,
    rss_mb,
    say,
    wait_for,
)
from bench.options import SoakOptions
from bench.servers import Etcd, start_gogeta
from bench.soak_churn import Churn, EtcdV2
from bench.soak_load import GROUPS, Load, Stats
from bench.soak_report import ChurnReport, Latency, Rss, Sample, SoakResult
from bench.soak_truth import etcd_truth, table_differences
from bench.stats import median, or_none, percentile

DEAD_PORTS = 2  # loopback ports where nothing listens: a moved instance may land there
SAMPLE_SECONDS = 10.0
RSS_GROWTH_RATIO = 0.20
RSS_GROWTH_SLACK_MB = 10.0
SETTLE_SECONDS = 15.0  # for gogeta's table to match etcd once churn stops


# --------------------------------------------------------------------------- gogeta


def get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status}")
        return json.loads(data)
    finally:
        conn.close()


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/__gogeta/health", headers={"Host": "localhost"})
        return conn.getresponse().status == 200
    finally:
        conn.close()


def log_problems(path: Path) -> tuple[Counter[str], list[str]]:
    """gogeta's log lines by level, and the ERROR ones (and tracebacks) themselves."""
    levels: Counter[str] = Counter()
    bad: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        for level in ("CRITICAL", "ERROR", "WARNING"):
            if f" {level} " in line or line.startswith(level):
                levels[level] += 1
                if level != "WARNING" and len(bad) < 40:
                    bad.append(line)
                break
        else:
            if line.startswith("Traceback"):
                levels["Traceback"] += 1
                if len(bad) < 40:
                    bad.append(line)
    return levels, bad


# --------------------------------------------------------------------------- the run


@dataclass
class Soak:
    """Everything running during a soak, once started."""

    opts: SoakOptions
    procs: Processes
    client: EtcdV2
    port: int  # gogeta's
    gogeta: subprocess.Popen[bytes]
    churn: Churn
    stats: Stats
    load: Load
    stop_churn: threading.Event


def run(opts: SoakOptions, procs: Processes) -> SoakResult:
    rng = random.Random(opts.seed)
    try:
        binary = etcd_binary()
    except RuntimeError as exc:
        raise SystemExit(f"soak: {exc}") from None
    store = Etcd(procs, binary, "etcd")
    client: EtcdV2 = etcd.Client(host="127.0.0.1", port=store.port, read_timeout=10)
    say(f"etcd on {store.port}")

    backend_ports = [free_port() for _ in range(opts.backends)]
    backends = [
        procs.start(f"backend-b{n}", [PYTHON, str(BENCH / "soak_backend.py"), f"b{n}", str(port)])
        for n, port in enumerate(backend_ports)
    ]
    for n, (proc, port) in enumerate(zip(backends, backend_ports, strict=True)):
        what = f"backend b{n}"
        wait_for(functools.partial(listening, proc, port, what), 30, what)
    dead_ports = [free_port() for _ in range(DEAD_PORTS)]
    say(f"backends on {backend_ports}; dead ports {dead_ports}")

    churn = Churn(client, backend_ports, dead_ports, rng)
    churn.setup()

    port = free_port()
    gogeta = start_gogeta(procs, "gogeta", port, ["-etcdAddress", store.url])
    wait_for(lambda: healthy(port), 30, "gogeta to load its table")
    say(f"gogeta on {port}, pid {gogeta.pid}; logs in {procs.workdir}")

    stats = Stats()
    names = {f"b{n}".encode() for n in range(opts.backends)}
    load = Load(port, opts.concurrency, names, stats, opts.seed)
    soak = Soak(opts, procs, client, port, gogeta, churn, stats, load, threading.Event())

    def churn_loop() -> None:
        interval = opts.churn_ms / 1000
        next_tick = time.monotonic()
        while not soak.stop_churn.is_set():
            churn.tick()
            next_tick += interval
            soak.stop_churn.wait(max(0.0, next_tick - time.monotonic()))

    churner = threading.Thread(target=churn_loop, name="churn", daemon=True)
    began = time.monotonic()
    load.start()
    churner.start()
    try:
        return measure(soak, began)
    finally:  # also on Ctrl-C: no thread may use etcd or gogeta once they are stopped
        soak.stop_churn.set()
        churner.join(timeout=30)
        load.join()


def measure(s: Soak, began: float) -> SoakResult:
    """The measured part of `run`: warm-up, soak, then the checks once churn and load stop."""
    opts, stats, churn = s.opts, s.stats, s.churn
    say(f"warm-up {opts.warmup_seconds:g} s")
    time.sleep(opts.warmup_seconds)

    rss_marks: list[tuple[str, float]] = [("after warm-up", rss_mb(s.gogeta.pid))]
    samples: list[Sample] = []
    measured_from = time.monotonic()
    requests_at_start = stats.total
    duration = opts.minutes * 60
    next_minute = 60.0
    say(f"soak {opts.minutes:g} min; RSS after warm-up {rss_marks[0][1]:.1f} MB")
    while (elapsed := time.monotonic() - measured_from) < duration:
        time.sleep(min(SAMPLE_SECONDS, duration - elapsed))
        if s.gogeta.poll() is not None:
            raise RuntimeError(f"gogeta exited with {s.gogeta.returncode}")
        elapsed = time.monotonic() - measured_from
        rss = rss_mb(s.gogeta.pid)
        samples.append(
            Sample(
                seconds=round(elapsed, 1),
                rss_mb=round(rss, 2),
                requests=stats.total,
                unexpected=stats.unexpected_total(),
                churn_ops=churn.operations(),
            )
        )
        if elapsed >= next_minute - 1:
            rss_marks.append((f"minute {int(round(next_minute / 60))}", rss))
            next_minute += 60
        say(
            f"{elapsed:5.0f} s: {stats.total:,} requests, "
            f"{stats.unexpected_total()} unexpected, {churn.operations()} churn ops, "
            f"RSS {rss:.1f} MB"
        )
    requests_measured = stats.total - requests_at_start
    measured = time.monotonic() - measured_from
    rss_end = rss_mb(s.gogeta.pid)
    rss_marks.append(("end of the soak", rss_end))
    s.stop_churn.set()  # the churn thread ends at its next tick
    s.load.join()
    total_seconds = time.monotonic() - began

    # With the churn stopped and passivated instances woken or not: gogeta's table must
    # match etcd's (no lost or misapplied event), within a few seconds.
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        truth = etcd_truth(s.client)
        routes = get_json(s.port, "/__gogeta/routes")
        differences = table_differences(truth, routes)
        if not differences or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    ghosts = [
        f"{name}/{index} ({', '.join(inst['keys'])})"
        for name, instances in truth[1].items()
        for index, inst in instances.items()
        if index not in churn.services.get(name, {})
    ]
    rss_after = rss_mb(s.gogeta.pid)
    levels, log_errors = log_problems(s.procs.log_path("gogeta"))

    rss_start = rss_marks[0][1]
    growth = rss_end - rss_start
    failures = []
    unexpected_total = stats.unexpected_total()
    if unexpected_total:
        failures.append(f"{unexpected_total} unexpected answers or errors")
    if log_errors:
        failures.append(f"{len(log_errors)} ERROR lines in gogeta's log")
    if differences:
        failures.append(f"gogeta's table differs from etcd ({len(differences)} entries)")
    if growth > rss_start * RSS_GROWTH_RATIO + RSS_GROWTH_SLACK_MB:
        failures.append(f"RSS grew {growth:.1f} MB")
    if churn.errors:
        failures.append(f"churn writes failed: {dict(churn.errors)}")

    with stats.lock:
        latency_ms = {
            g: Latency(*(or_none(percentile(stats.latencies[g], q) * 1000) for q in (50, 99, 100)))
            for g in GROUPS
        }
        return SoakResult(
            started=datetime.now().strftime("%Y-%m-%d %H:%M"),
            machine=f"{platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
            options=opts,
            passed=not failures,
            failures=failures,
            requests=stats.total,
            seconds_with_load=round(total_seconds, 1),
            rate=requests_measured / measured,
            answers={g: dict(c) for g, c in stats.answers.items()},
            errors={g: dict(c) for g, c in stats.errors.items()},
            unexpected_total=unexpected_total,
            unexpected=dict(stats.unexpected),
            unexpected_examples=stats.examples,
            latency_ms=latency_ms,
            rss_mb=Rss(
                start=rss_start,
                end=rss_end,
                after_load=rss_after,
                growth_pct=100 * growth / rss_start,
                marks=[*rss_marks, ("after load stopped", rss_after)],
            ),
            samples=samples,
            churn=ChurnReport(
                operations=churn.operations(),
                by_op=dict(churn.ops),
                etcd_writes=churn.writes,
                write_errors=dict(churn.errors),
                wakeups_seen=churn.wakeups_seen,
                wake_latency_ms_median=or_none(median(churn.wake_latencies) * 1000),
            ),
            gogeta_counters=routes.get("counters", {}),
            table_differences=differences,
            ghost_instances=ghosts,
            gogeta_log_levels=dict(levels),
            gogeta_log_errors=log_errors,
        )
