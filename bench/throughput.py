"""Part 1, throughput and latency: wrk against gogeta and its references, in rounds.

Rule: every ratio is taken between two runs of the same round (same case, same minute of
a shared machine), then the median over rounds; rounds alternate the targets' order.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
from dataclasses import dataclass

from bench.clients import Probe, WrkResult, run_wrk
from bench.harness import BENCH, PYTHON, free_port, say, wait_for, wait_listening
from bench.options import BenchOptions
from bench.rig import Rig
from bench.servers import (
    BIG_SIZE,
    SMALL_BODY,
    Etcd,
    Nginx,
    location,
    start_gogeta,
    start_gunicorn,
)
from bench.stats import median

TARGET_ORDER = (
    "nginx-backend",
    "nginx-proxy",
    "pywsgi-hello",
    "gogeta",
    "gogeta-nolog",
    "gogeta-gunicorn",
    "gogeta-k-gevent",
    "reference",
)
GUNICORN_TARGETS = frozenset({"gogeta-gunicorn", "gogeta-k-gevent"})
# The hosts a reference proxy routed by etcd is asked for: wrk's (its URL's) and the probe's.
REFERENCE_HOSTS = ("127.0.0.1", "bench")


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    pid: int  # whose CPU is counted (with its children)
    proc: subprocess.Popen[bytes] | None  # None: not this part's to stop


@dataclass(frozen=True)
class Run:
    """One wrk run: the case, the target, and wrk's figures (flat, as in the JSON)."""

    round: int
    path: str
    connections: int
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    mb_s: float
    requests: int
    socket_errors: int
    non_2xx: int
    cpu_us_per_req: float | None

    @classmethod
    def of(cls, rnd: int, path: str, conns: int, target: str, res: WrkResult) -> Run:
        return cls(
            rnd,
            path,
            conns,
            target,
            res.rps,
            res.p50_ms,
            res.p99_ms,
            res.mb_s,
            res.requests,
            res.socket_errors,
            res.non_2xx,
            res.cpu_us_per_req,
        )


@dataclass(frozen=True)
class Row:
    """One line of the table: a target in a case, medians over rounds."""

    case: str
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    p99_max_ms: float
    mb_s: float
    errors: int
    non_2xx: int
    cpu_us_per_req: float
    x_nginx_proxy: float
    mb_x_nginx_proxy: float
    x_pywsgi: float
    x_reference: float  # NaN without BENCH_REFERENCE
    mb_x_reference: float


@dataclass(frozen=True)
class ThroughputResult:
    runs: list[Run]
    summary: list[Row]


def start_targets(rig: Rig) -> tuple[list[Target], list[subprocess.Popen[bytes]]]:
    """The targets, and what else was started for them (stopped after them)."""
    procs, tools = rig.procs, rig.tools
    targets = [Target("nginx-backend", rig.port_a, rig.backend.worker_parent_pid(), None)]

    proxy_port = free_port()
    proxy = Nginx.proxy(procs, tools.nginx, proxy_port, rig.port_a)
    targets.append(Target("nginx-proxy", proxy_port, proxy.proc.pid, proxy.proc))

    hello_port = free_port()
    hello = procs.start("pywsgi-hello", [PYTHON, str(BENCH / "hello.py"), str(hello_port)])
    wait_listening(hello, hello_port, "pywsgi-hello", timeout=20)
    targets.append(Target("pywsgi-hello", hello_port, hello.pid, hello))

    # gogeta with its defaults (access log `combined`, metrics, the live view's counting),
    # and the same with `-accessLog off` to show what the log costs.
    backend_url = f"http://127.0.0.1:{rig.port_a}/"
    flags = ["-resolverType", "Dummy", "-dummyTarget", backend_url]
    for name, access_log in (("gogeta", "combined"), ("gogeta-nolog", "off")):
        port = free_port()
        gogeta = start_gogeta(procs, name, port, flags, access_log=access_log)
        targets.append(Target(name, port, gogeta.pid, gogeta))

    gunicorn_port = free_port()
    env = {
        "GOGETA_RESOLVER_TYPE": "Dummy",
        "GOGETA_DUMMY_TARGET": backend_url,
        "GOGETA_LOG_LEVEL": "WARNING",
    }
    gunicorn = start_gunicorn(procs, tools.gunicorn, "gogeta-gunicorn", gunicorn_port, env)
    targets.append(Target("gogeta-gunicorn", gunicorn_port, gunicorn.pid, gunicorn))
    # What a user who types gunicorn's own `-k gevent` gets: gunicorn's gevent worker, into
    # which gogeta installs its own server when it loads there.
    k_gevent_port = free_port()
    k_gevent = start_gunicorn(
        procs, tools.gunicorn, "gogeta-k-gevent", k_gevent_port, env, worker_class="gevent"
    )
    targets.append(Target("gogeta-k-gevent", k_gevent_port, k_gevent.pid, k_gevent))

    helpers: list[subprocess.Popen[bytes]] = []
    if rig.opts.reference:
        reference, etcd = start_reference(rig, rig.opts.reference)
        targets.append(reference)
        helpers.append(etcd)
    return targets, helpers


def start_reference(rig: Rig, template: str) -> tuple[Target, subprocess.Popen[bytes]]:
    """BENCH_REFERENCE's proxy, on a free port, routed by its own etcd (v2) to the backend:
    one service with one instance, and a domain for each host it is asked for."""
    etcd = Etcd(rig.procs, rig.tools.etcd, "reference-etcd")
    etcd.put("/services/bench/1/location", location(rig.port_a))
    for host in REFERENCE_HOSTS:
        etcd.put(f"/domains/{host}/type", "service")
        etcd.put(f"/domains/{host}/value", "bench")
    port = free_port()
    argv = shlex.split(template.format(port=port, etcd=etcd.url))
    proc = rig.procs.start("reference", argv)
    wait_listening(proc, port, "reference", timeout=30)
    # It may answer before its etcd watch has loaded the domains.
    wait_for(lambda: Probe(port).get_once("bench", "/small")[0] == 200, 30, "reference routes")
    return Target("reference", port, proc.pid, proc), etcd.proc


def run(rig: Rig) -> ThroughputResult:
    opts, wrk = rig.opts, rig.tools.wrk
    targets, helpers = start_targets(rig)
    for t in targets:  # every target answers both bodies before anything is measured
        for path, size in (("/small", len(SMALL_BODY)), ("/big", BIG_SIZE)):
            status, body = Probe(t.port).get_once("bench", path)
            if status != 200 or len(body) != size:
                raise RuntimeError(f"{t.name} {path}: HTTP {status}, {len(body)} bytes")

    say("part 1: warming up every target (1 s each)")
    for t in targets:
        run_wrk(wrk, f"http://127.0.0.1:{t.port}/small", 50, 1)

    runs: list[Run] = []
    for rnd in range(opts.rounds):
        for path, conns in opts.cases:
            order = targets if (rnd % 2 == 0) else list(reversed(targets))
            for t in order:
                say(f"part 1: round {rnd + 1}/{opts.rounds} /{path} c{conns} {t.name}")
                url = f"http://127.0.0.1:{t.port}/{path}"
                res = run_wrk(wrk, url, conns, opts.seconds, t.pid)
                runs.append(Run.of(rnd, path, conns, t.name, res))

    for t in targets:
        if t.proc is not None:
            sig = signal.SIGINT if t.name in GUNICORN_TARGETS else signal.SIGTERM
            rig.procs.stop(t.proc, sig)
    for proc in helpers:
        rig.procs.stop(proc)
    return ThroughputResult(runs, summarise(runs, opts))


def summarise(runs: list[Run], opts: BenchOptions) -> list[Row]:
    """Median over rounds; ratios are taken within a round, then their median."""
    rows = []
    for path, conns in opts.cases:
        case = [r for r in runs if r.path == path and r.connections == conns]
        by_round = {(r.target, r.round): r for r in case}
        for target in TARGET_ORDER:
            mine = [r for r in case if r.target == target]
            if not mine:
                continue
            vs_proxy, vs_hello, mb_vs_proxy, vs_ref, mb_vs_ref = [], [], [], [], []
            for r in mine:
                ref = by_round.get(("nginx-proxy", r.round))
                hello = by_round.get(("pywsgi-hello", r.round))
                other = by_round.get(("reference", r.round))
                if ref and ref.rps:
                    vs_proxy.append(r.rps / ref.rps)
                if ref and ref.mb_s:
                    mb_vs_proxy.append(r.mb_s / ref.mb_s)
                if hello and hello.rps:
                    vs_hello.append(r.rps / hello.rps)
                if other and other.rps:
                    vs_ref.append(r.rps / other.rps)
                if other and other.mb_s:
                    mb_vs_ref.append(r.mb_s / other.mb_s)
            rows.append(
                Row(
                    case=f"/{path} c{conns}",
                    target=target,
                    rps=median(r.rps for r in mine),
                    p50_ms=median(r.p50_ms for r in mine),
                    p99_ms=median(r.p99_ms for r in mine),
                    p99_max_ms=max(r.p99_ms for r in mine),
                    mb_s=median(r.mb_s for r in mine),
                    errors=sum(r.socket_errors for r in mine),
                    non_2xx=sum(r.non_2xx for r in mine),
                    cpu_us_per_req=median(
                        r.cpu_us_per_req for r in mine if r.cpu_us_per_req is not None
                    ),
                    x_nginx_proxy=median(vs_proxy),
                    mb_x_nginx_proxy=median(mb_vs_proxy),
                    x_pywsgi=median(vs_hello),
                    x_reference=median(vs_ref),
                    mb_x_reference=median(mb_vs_ref),
                )
            )
    return rows
