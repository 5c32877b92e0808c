"""gogeta under gunicorn: `gunicorn -w 2 'gogeta:create_app()'`, set by GOGETA_*.

Real gunicorn processes (tests/gunicorn_process.py): two workers serve, each with its own
resolver started after the fork (also with --preload), requests are checked as standalone,
a setting or a worker class gogeta refuses stops gunicorn with one line, and route changes,
metrics and the live view reach every worker. Stopping is tests/test_gunicorn_signals.py.
"""

from __future__ import annotations

import http.client
import json
import re
import resource
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gunicorn_process import Gunicorn, StartGunicorn, dummy

# The `gunicorn` fixture, imported under its own name so that pytest finds it here.
from tests.gunicorn_process import gunicorn as gunicorn
from tests.support import ROOT, Backend, EtcdServer, exchange, request, wait_until


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

        answered_at = time.time()

        def fresh(b: dict[str, Any]) -> bool:
            """Every worker listed, each with a heartbeat written after the requests above:
            one written before them (at start, before the load) proves nothing."""
            workers = {w["pid"]: w for w in b["workers"]}
            return set(workers) == server.worker_pids() and all(
                w["written"] >= answered_at for w in workers.values()
            )

        # Each worker's heartbeat reaches the files within a second: whichever answers, the
        # process block lists both and the totals add both up.
        body = wait_until(
            lambda: (b := live())["totals"]["requests"] >= len(pids) and fresh(b) and b,
            timeout=10,
            what="both workers' heartbeats, written after their requests",
        )
        assert body["mode"] == "gunicorn" and body["scope"] == "answering worker"
        assert body["answered_by"] in server.worker_pids()
        assert all(w["loaded"] and w["etcd_index"] > 0 for w in body["workers"])
        [shop] = body["domains"]
        answered = pids.count(body["answered_by"])
        assert shop["traffic"]["requests"] >= answered  # this worker's own requests
    assert server.stop() == 0
