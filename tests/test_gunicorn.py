"""gogeta under gunicorn: `gunicorn -w 2 'gogeta:create_app()'`, set by GOGETA_*.

Real gunicorn processes (with `gunicorn.conf.py` from the repository, as an operator
runs it, so with its worker class `gunicorn_hooks.ProxyWorker`; `-k gevent` too where
said): two workers serve, each with its own resolver started after the fork (also with
--preload), requests are checked as standalone, and SIGTERM to the arbiter lets a request
in flight finish while idle keep-alive connections close at once.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    ROOT,
    Backend,
    EtcdServer,
    HeldBackend,
    LoggedProcess,
    exchange,
    free_port,
    port_open,
    request,
    wait_until,
)


@dataclass
class Gunicorn(LoggedProcess):
    env: dict[str, str]
    options: list[str] = field(default_factory=list)
    worker_class: str = ""  # `-k`; empty: gunicorn.conf.py's
    workers: int = 2
    cwd: Path = ROOT  # where gunicorn starts, and looks for gunicorn.conf.py
    port: int = 0
    answered: set[int] = field(default_factory=set)  # worker pids that served a request
    stop_timeout = 30.0

    def launch(self) -> Gunicorn:
        """Start gunicorn without waiting for it."""
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOGETA_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(self.env, PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "gunicorn", "--chdir", str(ROOT)]  # gogeta importable
        if self.worker_class:
            argv += ["-k", self.worker_class]
        argv += ["-w", str(self.workers), "-b", f"127.0.0.1:{self.port}", "--no-control-socket"]
        self.spawn([*argv, *self.options, "gogeta:create_app()"], env, "gunicorn-", self.cwd)
        return self

    def start(self) -> Gunicorn:
        self.launch()
        wait_until(self.ready, timeout=30, what="every gunicorn worker to answer")
        return self

    def ready(self) -> bool:
        """Every worker has answered a request (a worker serves once its app is loaded)."""
        self.check_running()
        pids = self.worker_pids()
        if len(pids) != self.workers:
            return False
        health = request(self.port, "/__gogeta/health", timeout=5)
        self.answered.add(int(json.loads(health.body)["pid"]))
        return pids <= self.answered

    def check_running(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited {self.proc.returncode}:\n{self.log()}")

    def worker_pids(self) -> set[int]:
        assert self.proc is not None
        return {p.pid for p in psutil.Process(self.proc.pid).children()}


StartGunicorn = Callable[..., Gunicorn]  # the `gunicorn` fixture


@pytest.fixture
def gunicorn() -> Iterator[StartGunicorn]:
    started: list[Gunicorn] = []

    def start(
        env: dict[str, str],
        *options: str,
        worker_class: str = "",
        workers: int = 2,
        cwd: Path = ROOT,
        wait: bool = True,
    ) -> Gunicorn:
        server = Gunicorn(env, list(options), worker_class, workers, cwd)
        started.append(server)
        return server.start() if wait else server.launch()

    yield start
    for server in started:
        server.stop()


def dummy(url: str) -> dict[str, str]:
    return {"GOGETA_RESOLVER_TYPE": "Dummy", "GOGETA_DUMMY_TARGET": url + "/"}


@pytest.mark.parametrize(
    ("preload", "worker_class"),
    [(False, ""), (True, ""), (False, "gevent")],
    ids=["fork-then-load", "preload", "gunicorn-gevent-worker"],
)
def test_two_workers_serve_configured_by_the_environment(
    gunicorn: StartGunicorn, preload: bool, worker_class: str
) -> None:
    with Backend() as backend:
        options = ["--preload"] if preload else []
        server = gunicorn(dummy(backend.url), *options, worker_class=worker_class)
        for i in range(10):
            resp = request(server.port, f"/w{i}?x=1", host="shop.example.com")
            assert (resp.status, resp.body) == (200, f"GET /w{i}?x=1".encode())
    assert backend.seen[0].header("Host") == "shop.example.com"
    assert "MonkeyPatchWarning" not in server.log()  # --preload: nothing imported too early
    assert "Traceback" not in server.log()
    # gogeta's access lines, one per request.
    assert server.log().count('"GET /w') == 10


def test_sigterm_to_the_arbiter_finishes_the_request_in_flight(gunicorn: StartGunicorn) -> None:
    with HeldBackend() as backend:
        server = gunicorn(dummy(backend.server.url))
        result: list[object] = []
        thread = threading.Thread(
            target=lambda: result.append(request(server.port, "/slow", timeout=30)), daemon=True
        )
        thread.start()
        assert backend.received.wait(10)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not port_open(server.port), what="the listener to close")
        backend.release.set()
        thread.join(30)
        assert server.proc.wait(timeout=30) == 0
    resp = result[0]
    assert (resp.status, resp.body) == (200, b"done")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("worker_class", "elsewhere"),
    [("", False), ("gevent", False), ("gevent", True)],
    ids=["proxy-worker", "gunicorn-gevent-worker", "gevent-worker-without-config-file"],
)
def test_workers_check_requests_as_the_standalone_server(
    gunicorn: StartGunicorn, tmp_path: Path, worker_class: str, elsewhere: bool
) -> None:
    """gogeta's own server and request checks (framing.request) in every worker, whichever
    gevent worker runs it: ambiguous framing is refused before any backend sees it, with
    gogeta's answer, and a slow request head gets 408."""
    with Backend() as backend:
        server = gunicorn(
            {**dummy(backend.url), "GOGETA_CLIENT_TIMEOUT": "1"},
            worker_class=worker_class,
            cwd=tmp_path if elsewhere else ROOT,
        )
        both = exchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        assert both.startswith(b"HTTP/1.1 400 ")
        assert both.endswith(
            b"\r\n\r\n400 Bad Request: both Content-Length and Transfer-Encoding\n"
        )
        twice = exchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        )
        assert twice.endswith(b"\r\n\r\n400 Bad Request: more than one Content-Length\n")
        trickled = exchange(server.port, b"GET / HTTP/1.1\r\nHost: a.test\r\n")  # no end
        assert trickled.startswith(b"HTTP/1.1 408 ")
    assert backend.seen == []


@pytest.mark.parametrize(
    ("elsewhere", "options", "env", "said"),
    [
        (True, [], {}, "-k gevent"),
        (True, ["--preload"], {}, "-k gevent"),
        (False, ["-k", "sync"], {}, "-k gevent"),
        (False, [], {"GOGETA_LOG_LEVEL": "LOUD"}, "GOGETA_LOG_LEVEL"),
    ],
    ids=["without-config-file", "without-config-file-preload", "sync-worker", "bad-setting"],
)
def test_gunicorn_stops_with_one_line_when_gogeta_cannot_start(
    gunicorn: StartGunicorn,
    tmp_path: Path,
    elsewhere: bool,
    options: list[str],
    env: dict[str, str],
    said: str,
) -> None:
    """Started from another directory, gunicorn does not read gunicorn.conf.py and runs
    its sync worker, where gogeta cannot serve (every host 404, health 503 forever):
    gogeta refuses it with a line saying how to start gunicorn, and gunicorn stops, as it
    does for a setting gogeta refuses, rather than forking workers again and again."""
    server = gunicorn(
        {**dummy("http://127.0.0.1:9/"), **env},
        *options,
        cwd=tmp_path if elsewhere else ROOT,
        wait=False,
    )
    assert server.proc is not None
    code = server.proc.wait(timeout=60)
    log = server.log()
    assert code != 0, log
    ours = [line for line in log.splitlines() if line.startswith("gogeta: ") and said in line]
    assert ours, log
    if said == "-k gevent":
        assert "-c path/to/gunicorn.conf.py" in ours[0]
    assert log.count("Booting worker") <= 2, log  # no worker forked again
    # gunicorn's own traceback when two workers fail at once (HaltServer raised again
    # while it stops) is gunicorn's; nothing of gogeta's fails on the way out.
    errors = [line for line in log.splitlines() if re.match(r"\w+(Error|Exception): ", line)]
    assert errors == [], log


def test_sigterm_closes_idle_keep_alive_connections_at_once(gunicorn: StartGunicorn) -> None:
    """A stopping worker does not wait for idle clients until the graceful timeout."""
    with Backend() as backend:
        server = gunicorn({**dummy(backend.url), "GOGETA_DRAIN_TIMEOUT": "60"})
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        with idle:
            idle.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\nGET /"):  # the backend echoes "GET /"
                chunk = idle.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            assert idle.recv(65536) == b""  # closed by gogeta, not by the 60 s timeout
            assert server.proc.wait(timeout=30) == 0


GRACEFUL = 40  # seconds: gunicorn.conf.py's graceful_timeout, from GOGETA_DRAIN_TIMEOUT
# A lost stop signal leaves its worker to be killed at the graceful timeout; a stop that is
# only slow (a loaded machine: a few seconds) stays well under this.
HUNG = GRACEFUL * 3 / 4


def listening(server: Gunicorn) -> None:
    """The arbiter has bound its port; its workers are about to be forked."""

    def bound() -> bool:
        server.check_running()
        return port_open(server.port)

    wait_until(bound, timeout=30)


def forked(server: Gunicorn) -> None:
    """Every worker process exists; none has necessarily set its own signal handlers."""
    wait_until(lambda: len(server.worker_pids()) == server.workers, timeout=30)


def serving(server: Gunicorn) -> None:
    wait_until(server.ready, timeout=30, what="every worker to answer")


def respawned(server: Gunicorn) -> None:
    """One worker killed and its replacement just forked."""
    serving(server)
    dead = min(server.worker_pids())
    os.kill(dead, signal.SIGKILL)
    wait_until(
        lambda: dead not in (pids := server.worker_pids()) and len(pids) == server.workers,
        timeout=30,
        what="the replacement worker",
    )


def test_sigterm_at_any_moment_of_a_start_stops_long_before_the_graceful_timeout(
    gunicorn: StartGunicorn,
) -> None:
    """Until gunicorn's worker sets its own handlers (after gevent's patching), a worker
    just forked has the arbiter's: a stop signal arriving then must still stop it, not
    leave it to be killed at the graceful timeout. SIGTERM from the bind onwards, at
    start and right after a worker is replaced."""
    moments = [listening, forked, respawned] * 4 + [serving]
    stops: list[tuple[str, float]] = []
    with Backend() as backend:
        env = {**dummy(backend.url), "GOGETA_DRAIN_TIMEOUT": str(GRACEFUL)}
        for moment in moments:
            server = gunicorn(env, wait=False)
            moment(server)
            assert server.proc is not None
            workers = psutil.Process(server.proc.pid).children()
            sent = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            try:
                code = server.proc.wait(timeout=HUNG)
            except subprocess.TimeoutExpired:
                code = None
                for process in [*workers, psutil.Process(server.proc.pid)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        process.kill()
            stops.append((moment.__name__, round(time.monotonic() - sent, 2)))
            assert code in (0, None), server.log()
    slow = [(name, took) for name, took in stops if took >= HUNG]
    assert not slow, f"stops that waited for the graceful timeout: {slow} (all: {stops})"


def test_more_idle_clients_than_gunicorns_default_limit(gunicorn: StartGunicorn) -> None:
    """1,100 silent connections to one worker (gunicorn's default cap: 1,000): a new
    client is still served, not left in the listen queue behind them."""
    idle_count = 1100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = idle_count + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"open-file limit {hard} < {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))  # inherited
    with Backend() as backend:
        server = gunicorn(dummy(backend.url), workers=1)
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(idle_count)]
        try:
            assert server.proc is not None
            worker = psutil.Process(server.proc.pid).children()[0]

            def accepted() -> bool:
                mine = [c for c in worker.net_connections() if c.status == "ESTABLISHED"]
                return len(mine) >= idle_count

            wait_until(accepted, timeout=30, what=f"the worker to accept {idle_count}")
            resp = request(server.port, "/fresh", host="new.example.com", timeout=10)
            assert (resp.status, resp.body) == (200, b"GET /fresh")
        finally:
            for s in idle:
                s.close()


def ask(port: int, host: str) -> tuple[int, bytes, int]:
    """Status and body for `host`, and the pid of the worker that answered.

    Both requests go over one keep-alive connection, which stays with one worker.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        answer = (resp.status, resp.read())
        conn.request("GET", "/__gogeta/health", headers={"Host": host})
        pid = int(json.loads(conn.getresponse().read())["pid"])
    finally:
        conn.close()
    return (*answer, pid)


def every_worker_answers(server: Gunicorn, host: str, status: int, body: bytes = b"") -> None:
    """Poll until the latest answer of each worker for `host` is `status` (and `body`)."""
    latest: dict[int, tuple[int, bytes]] = {}

    def done() -> bool:
        code, data, pid = ask(server.port, host)
        latest[pid] = (code, data if body else b"")
        return set(latest) == server.worker_pids() and set(latest.values()) == {(status, body)}

    wait_until(done, timeout=30, what=f"both workers to answer {status} {body!r}")


def named(name: str) -> Backend:
    return Backend(lambda seen: (200, [("Content-Type", "text/plain")], name.encode()))


def test_route_changes_in_etcd_reach_every_worker(
    gunicorn: StartGunicorn, etcd: EtcdServer
) -> None:
    with named("A") as a, named("B") as b:
        server = gunicorn({"GOGETA_ETCD_ADDRESS": etcd.url})
        client = etcd.client()
        client.write("/domains/shop.example.com/type", "service")
        client.write("/domains/shop.example.com/value", "shop")
        location = json.dumps({"host": "127.0.0.1", "port": a.port})
        client.write("/services/shop/1/location", location)
        every_worker_answers(server, "shop.example.com", 200, b"A")

        client.write("/services/shop/1/location", json.dumps({"host": "127.0.0.1", "port": b.port}))
        every_worker_answers(server, "shop.example.com", 200, b"B")

        client.delete("/domains/shop.example.com", recursive=True, dir=True)
        every_worker_answers(server, "shop.example.com", 404)


def test_metrics_cover_every_worker(gunicorn: StartGunicorn, etcd: EtcdServer) -> None:
    with named("A") as a:
        server = gunicorn({"GOGETA_ETCD_ADDRESS": etcd.url})
        client = etcd.client()
        client.write("/domains/shop.example.com/type", "service")
        client.write("/domains/shop.example.com/value", "shop")
        client.write("/services/shop/1/location", json.dumps({"host": "127.0.0.1", "port": a.port}))
        every_worker_answers(server, "shop.example.com", 200, b"A")

        def scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
            found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
            text = request(server.port, "/__gogeta/metrics").text
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
            return found

        before = scrape()["gogeta_requests_total"].get((("code", "200"),), 0)
        pids = [ask(server.port, "shop.example.com")[2] for _ in range(20)]
        assert set(pids) == server.worker_pids(), "both workers must have served some"
        for _ in range(4):  # whichever worker answers the scrape, it counts all 20
            found = scrape()
            after = found["gogeta_requests_total"][(("code", "200"),)]
            assert after - before == 20
            # Each worker's gauges, labelled by pid, fresh from its load on: every worker
            # is at the index of the last write (not 0 until some refresh period is over).
            indexes = {int(dict(k)["pid"]): v for k, v in found["gogeta_etcd_index"].items()}
            assert set(indexes) == server.worker_pids()
            assert min(indexes.values()) > 0, indexes
            rss = found["process_resident_memory_bytes"]
            assert {int(dict(k)["pid"]) for k in rss} == server.worker_pids()
            assert found["process_cpu_seconds_total"][()] > 0  # summed over the workers

        # Counters are summed over the workers, and reach the files as the change
        # happens: no refresh period to wait for.
        applied = scrape()["gogeta_resolver_events_applied_total"][()]
        for port in (a.port, a.port + 1, a.port):
            location = json.dumps({"host": "127.0.0.1", "port": port})
            client.write("/services/shop/2/location", location)
        client.write("/services/shop/2/location", json.dumps({"host": "127.0.0.1", "port": 1}))
        client.delete("/services/shop/2", recursive=True, dir=True)
        every_worker_answers(server, "shop.example.com", 200, b"A")
        found = wait_until(
            lambda: (
                (f := scrape())["gogeta_resolver_events_applied_total"][()] >= applied + 10 and f
            ),
            timeout=3,  # published on change: no period of seconds to wait for
            what="both workers' 5 events in the summed counter",
        )
        assert found["gogeta_resolver_reloads_total"][()] >= 4  # 2 directories, 2 workers
    assert server.stop() == 0


def test_the_live_view_shows_every_worker(gunicorn: StartGunicorn, etcd: EtcdServer) -> None:
    with named("A") as a:
        server = gunicorn({"GOGETA_ETCD_ADDRESS": etcd.url})
        client = etcd.client()
        client.write("/domains/shop.example.com/type", "service")
        client.write("/domains/shop.example.com/value", "shop")
        client.write("/services/shop/1/location", json.dumps({"host": "127.0.0.1", "port": a.port}))
        every_worker_answers(server, "shop.example.com", 200, b"A")
        pids = [ask(server.port, "shop.example.com")[2] for _ in range(20)]
        assert set(pids) == server.worker_pids()

        def live() -> dict[str, Any]:
            body: dict[str, Any] = json.loads(request(server.port, "/__gogeta/live").body)
            return body

        # Each worker's heartbeat reaches the files within a second: whichever answers, the
        # process block lists both and the totals add both up.
        body = wait_until(
            lambda: (
                (b := live())["totals"]["requests"] >= len(pids)
                and {w["pid"] for w in b["workers"]} == server.worker_pids()
                and b
            ),
            timeout=5,
            what="both workers' heartbeats",
        )
        assert body["mode"] == "gunicorn" and body["scope"] == "answering worker"
        assert body["answered_by"] in server.worker_pids()
        assert all(w["loaded"] and w["etcd_index"] > 0 for w in body["workers"])
        [shop] = body["domains"]
        answered = pids.count(body["answered_by"])
        assert shop["traffic"]["requests"] >= answered  # this worker's own requests
    assert server.stop() == 0
