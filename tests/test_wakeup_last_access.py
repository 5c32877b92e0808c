"""The two writes gogeta makes to etcd (docs/behaviour.md §2.7, §3.3), counted in etcd's history.

A passivated instance gets `status/expected` = `started` once, not once per request;
`lastAccess` is written in local time at most once per `-lastAccessInterval` per instance;
neither is on the request path, so a stalled etcd does not slow requests. Every test runs
against etcd's v2 API and its v3 API.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_routes import (
    Barrier,
    answer_with,
    etcd_index,
    key_writes,
    log_count,
    marker_templates,
    named_backend,
    page_of,
    store_stats,
    write_domain,
    write_instance,
)
from tests.support import Backend, EtcdServer, GogetaProcess, Start, wait_until

# gogeta runs three hours east of UTC, so that a stamp written in UTC would be caught.
GOGETA_TZ = "GGT-3"  # POSIX TZ: UTC+3, no tz database needed
GOGETA_ZONE = timezone(timedelta(hours=3))
STAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return marker_templates(tmp_path_factory.mktemp("wakeup"))


@pytest.fixture(scope="module", params=["v2", "v3"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def proxy(etcd_server: EtcdServer, templates: Path) -> Iterator[GogetaProcess]:
    proc = GogetaProcess(
        [*etcd_server.flags, "-templateDir", str(templates)] + ["-lastAccessInterval", "1"],
        env={"TZ": GOGETA_TZ},
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def app() -> Iterator[Backend]:
    with named_backend("app") as backend:
        yield backend


@pytest.fixture
def client(etcd: EtcdServer) -> Any:
    return etcd.client()


@pytest.fixture
def sync(etcd: EtcdServer, app: Backend) -> Barrier:
    return Barrier(etcd.client(), app)


def stamp_time(stamp: str) -> float:
    """Epoch seconds of a lastAccess value, read in gogeta's time zone."""
    assert STAMP.fullmatch(stamp), stamp
    local = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=GOGETA_ZONE)
    return local.timestamp()


# --------------------------------------------------------------------------- wake-up


def test_passivated_instance_is_woken_once_for_many_requests(
    proxy: GogetaProcess, etcd: EtcdServer, client: Any, sync: Barrier, app: Backend
) -> None:
    base = write_instance(client, "sleeper", "1", app.port, ("stopped", "passivated", None))
    write_domain(client, "sleeper.test", "service", "sleeper")
    sync(proxy)
    expected_key = f"{base}/status/expected"
    since = int(client.read(expected_key).modifiedIndex) + 1
    stats = store_stats(etcd) if etcd.api == "v2" else {}

    resp = proxy.get(host="sleeper.test")
    assert (page_of(resp), resp.status) == ("passivated", 503)
    # Until gogeta sees its own write, the instance is still passivated; after it,
    # current=stopped/expected=started is an error (docs/behaviour.md §3.1): never the app.
    pages = {page_of(proxy.get(host="sleeper.test")) for _ in range(19)}
    assert pages <= {"passivated", "error"}
    wait_until(
        lambda: client.read(expected_key).value == "started",
        timeout=10,
        what="gogeta to set status/expected to started",
    )
    sync(proxy, writer=True)  # anything else gogeta queued has been written by now
    assert [w.value for w in key_writes(client, expected_key, since)] == ["started"]
    if stats:  # v2's store counts compare-and-swaps, failed ones too
        after = store_stats(etcd)
        # One compare-and-swap in all: not one per request, even a failing one.
        assert after["compareAndSwapSuccess"] - stats["compareAndSwapSuccess"] == 1
        assert after["compareAndSwapFail"] - stats["compareAndSwapFail"] == 0
    assert not [s for s in app.seen if s.header("Host") == "sleeper.test"]  # no traffic
    assert log_count(proxy, "sleeper/1: passivated, asked to start") == 1

    # Passivated again later: the next visitor wakes it again.
    client.write(expected_key, "passivated")
    sync(proxy)
    assert page_of(proxy.get(host="sleeper.test")) == "passivated"
    wait_until(
        lambda: client.read(expected_key).value == "started",
        timeout=10,
        what="the second wake-up",
    )
    values = [w.value for w in key_writes(client, expected_key, since)]
    assert values == ["started", "passivated", "started"]


# --------------------------------------------------------------------------- lastAccess


def test_last_access_rate_and_format(proxy: GogetaProcess, client: Any, sync: Barrier) -> None:
    with named_backend("a") as a, named_backend("b") as b:
        bases = [
            write_instance(client, "busy", "1", a.port),
            write_instance(client, "busy", "2", b.port),
        ]
        write_domain(client, "busy.test", "service", "busy")
        sync(proxy)
        since = etcd_index(client) + 1
        began = time.time()
        while time.time() - began < 2.5:
            assert proxy.get(host="busy.test").status == 200
        ended = time.time()
        sync(proxy, writer=True)
    for base in bases:
        writes = key_writes(client, f"{base}/lastAccess", since)
        # -lastAccessInterval 1 over 2.5 s of traffic: at 0, ≥1 and ≥2 s at most.
        assert 2 <= len(writes) <= 3, [w.value for w in writes]
        times = [stamp_time(w.value) for w in writes]
        assert all(began - 1 <= t <= ended + 1 for t in times), (began, ended, times)
        assert all(later - earlier >= 1 for earlier, later in itertools.pairwise(times)), times


def test_last_access_does_not_bring_a_deleted_instance_back(
    proxy: GogetaProcess, etcd: EtcdServer, client: Any, sync: Barrier, app: Backend
) -> None:
    # A lastAccess written just after its instance was deleted must not re-create the
    # instance's directory (etcd creates missing directories on a write): it would come back
    # as a ghost without a location, answering 500 instead of 404. The race is the real
    # one, so it is run many times: most rounds hit it when the write does create.
    names = [f"ghost{i}" for i in range(20)]
    for name in names:
        write_instance(client, name, "1", app.port)
        write_domain(client, f"{name}.test", "service", name)
    sync(proxy)
    for name in names:
        assert proxy.get(host=f"{name}.test").status == 200
        client.delete(f"/services/{name}", recursive=True, dir=True)
    sync(proxy, writer=True)
    left = {n.key for n in client.read("/services").children}
    assert not left & {f"/services/{name}" for name in names}
    for name in names:
        assert page_of(proxy.get(host=f"{name}.test")) == "notfound"


def test_last_access_is_not_written_for_refused_requests(
    proxy: GogetaProcess, client: Any, sync: Barrier, app: Backend
) -> None:
    base = write_instance(client, "idle", "1", app.port, ("stopped", "stopped", None))
    write_domain(client, "idle.test", "service", "idle")
    sync(proxy)
    assert page_of(proxy.get(host="idle.test")) == "stopped"
    sync(proxy, writer=True)
    assert "lastAccess" not in {n.key.rsplit("/", 1)[-1] for n in client.read(base).children}


# --------------------------------------------------------------------------- a stalled etcd


@pytest.fixture
def own_etcd(api: str) -> Iterator[EtcdServer]:
    server = EtcdServer(api=api).start()
    yield server
    if server.proc is not None:
        os.kill(server.proc.pid, signal.SIGCONT)  # in case the test failed while it was stopped
    server.stop()


def test_requests_do_not_wait_for_a_stalled_etcd(
    own_etcd: EtcdServer, gogeta: Start, app: Backend, templates: Path
) -> None:
    client = own_etcd.client()
    base = write_instance(client, "fast", "1", app.port)
    write_instance(client, "nap", "1", app.port, ("stopped", "passivated", None))
    write_domain(client, "fast.test", "service", "fast")
    write_domain(client, "nap.test", "service", "nap")
    proxy = gogeta(
        *own_etcd.flags,
        "-lastAccessInterval",
        "0",
        "-templateDir",
        str(templates),
        env={"TZ": GOGETA_TZ},
    )
    assert answer_with(proxy, "fast.test", 200).text == "app"
    wait_until(lambda: client.read(f"{base}/lastAccess").value, what="a first lastAccess")

    assert own_etcd.proc is not None
    os.kill(own_etcd.proc.pid, signal.SIGSTOP)  # connections open, nothing answers
    stalled = time.time()
    # A request that waited for etcd would wait for its 10 s request timeout; a loaded
    # machine can make one that does not wait take a second.
    prompt = 3.0
    try:
        for _ in range(20):
            sent = time.monotonic()
            resp = proxy.get(host="fast.test", timeout=5)
            assert (resp.status, resp.text) == (200, "app")
            assert time.monotonic() - sent < prompt
        sent = time.monotonic()
        resp = proxy.get(host="nap.test", timeout=5)  # a wake-up to write, too
        assert (page_of(resp), resp.status) == ("passivated", 503)
        assert time.monotonic() - sent < prompt
    finally:
        os.kill(own_etcd.proc.pid, signal.SIGCONT)
    # The queued writes land once etcd answers again.
    wait_until(
        lambda: stamp_time(client.read(f"{base}/lastAccess").value) >= int(stalled),
        timeout=15,
        what="lastAccess written after the stall",
    )
    wait_until(
        lambda: client.read("/services/nap/1/status/expected").value == "started",
        timeout=15,
        what="the wake-up written after the stall",
    )


# ------------------------------------------------------------------ refused writes


def test_a_write_etcd_refuses_is_dropped_not_taken_for_an_outage(
    proxy: GogetaProcess, client: Any, sync: Barrier, app: Backend, api: str
) -> None:
    if api == "v3":
        pytest.skip("v3 has no directory to put in a key's way")
    base = write_instance(client, "blocked", "1", app.port)
    client.write(f"{base}/lastAccess", None, dir=True)  # a directory where a key must go
    write_domain(client, "blocked.test", "service", "blocked")
    sync(proxy)
    assert proxy.get(host="blocked.test").status == 200
    sync(proxy, writer=True)  # the writer went on to the next write at once
    wait_until(lambda: log_count(proxy, "etcd refused the lastAccess of blocked/1") == 1)
    assert log_count(proxy, "cannot write to etcd") == 0
    assert proxy.get("/__gogeta/health").status == 200
