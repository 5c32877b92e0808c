"""The table in sync with etcd (docs/behaviour.md §5.4): no lost update, etcd trouble survived.

Load then watch without a gap (writes racing gogeta's start), the 401 "event index
cleared" reload provoked for real, etcd killed and restarted under a serving gogeta,
gogeta started before etcd, and a first endpoint that refuses connections.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.etcd_routes import log_count, named_backend, write_domain, write_instance
from tests.support import (
    Backend,
    EtcdServer,
    GogetaProcess,
    Start,
    port_open,
    refused_port,
    wait_until,
)


@pytest.fixture
def app() -> Iterator[Backend]:
    with named_backend("app") as backend:
        yield backend


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    """An etcd of this test alone, which it may kill and restart (same ports and data)."""
    server = EtcdServer()
    yield server
    server.stop()


def routed(proxy: GogetaProcess, host: str, body: str = "app", timeout: float = 10) -> None:
    wait_until(
        lambda: (r := proxy.get(host=host)).status == 200 and r.text == body,
        timeout=timeout,
        what=f"gogeta to route {host}",
    )


def run_threads(target: Callable[..., None], chunks: list[Any]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(chunk,), daemon=True) for chunk in chunks]
    for thread in threads:
        thread.start()
    return threads


# --------------------------------------------------------------------------- load, then watch


def test_burst_of_500_domains_while_gogeta_starts(
    gogeta: Start, etcd: EtcdServer, app: Backend
) -> None:
    write_instance(etcd.client(), "burst", "1", app.port)
    hosts = [f"d{i}.burst.test" for i in range(500)]

    def write(chunk: list[str]) -> None:
        client = etcd.client()
        for host in chunk:
            write_domain(client, host, "service", "burst")

    threads = run_threads(write, [hosts[i::6] for i in range(6)])
    proxy = gogeta("-etcdAddress", etcd.url, wait=False)
    for thread in threads:
        thread.join(60)
    wait_until(lambda: port_open(proxy.port), timeout=20, what="gogeta to listen")
    for host in hosts:
        routed(proxy, host)


def test_writes_during_the_load_and_the_first_watch_are_seen(
    gogeta: Start, etcd: EtcdServer, app: Backend
) -> None:
    client = etcd.client()
    write_instance(client, "straddle", "1", app.port)
    proxy = gogeta("-etcdAddress", etcd.url, wait=False)
    loaded = re.compile(r"/domains: loaded at etcd index (\d+)")
    written: list[tuple[str, int]] = []
    extra = 0
    deadline = time.monotonic() + 30
    # Write domains back to back until gogeta has loaded, then 100 more: some land in its
    # load, some between the load and its first watch, some after.
    while extra < 100:
        host = f"w{len(written)}.straddle.test"
        client.write(f"/domains/{host}/type", "service")
        result = client.write(f"/domains/{host}/value", "straddle")
        written.append((host, int(result.modifiedIndex)))
        if extra or (len(written) % 5 == 0 and loaded.search(proxy.log())):
            extra += 1
        assert time.monotonic() < deadline, proxy.log()
    match = loaded.search(proxy.log())
    assert match is not None
    load_index = int(match.group(1))
    # The test means something only if writes fell on both sides of the load.
    assert written[0][1] <= load_index < written[-1][1], (load_index, written[0], written[-1])
    wait_until(lambda: port_open(proxy.port), timeout=20, what="gogeta to listen")
    for host, _ in written:
        routed(proxy, host)


def test_event_index_cleared_reloads_and_sees_later_changes(
    gogeta: Start, etcd: EtcdServer, app: Backend
) -> None:
    client = etcd.client()
    write_instance(client, "paused", "1", app.port)
    write_domain(client, "before.test", "service", "paused")
    proxy = gogeta("-etcdAddress", etcd.url)
    routed(proxy, "before.test")
    assert proxy.proc is not None
    os.kill(proxy.proc.pid, signal.SIGSTOP)
    try:
        # The watch gogeta has open (or its next one) gets this event; the next watch then
        # starts from an index etcd has dropped, 1,200 writes elsewhere later (it keeps 1,000).
        write_domain(client, "during.test", "service", "paused")

        def noise(chunk: range) -> None:
            noisy = etcd.client()
            for i in chunk:
                noisy.write(f"/noise/k{i}", str(i))

        for thread in run_threads(noise, [range(i, 1200, 4) for i in range(4)]):
            thread.join(60)
        write_domain(client, "after.test", "service", "paused")
    finally:
        os.kill(proxy.proc.pid, signal.SIGCONT)
        etcd.wipe("/noise")
    routed(proxy, "after.test")
    routed(proxy, "during.test")
    routed(proxy, "before.test")
    assert log_count(proxy, "/domains: etcd no longer has events from index") == 1, proxy.log()
    assert log_count(proxy, "/domains: loaded at etcd index") == 2, proxy.log()


# --------------------------------------------------------------------------- etcd trouble


def test_etcd_killed_and_restarted_while_serving(
    own_etcd: EtcdServer, gogeta: Start, app: Backend
) -> None:
    own_etcd.start()
    client = own_etcd.client()
    write_instance(client, "steady", "1", app.port)
    write_domain(client, "steady.test", "service", "steady")
    proxy = gogeta("-etcdAddress", own_etcd.url)
    routed(proxy, "steady.test")

    own_etcd.kill()

    def noticed_and_still_serving() -> bool:
        resp = proxy.get(host="steady.test")
        assert (resp.status, resp.text) == (200, "app")  # fails the test at once if not
        return log_count(proxy, "etcd unreachable") >= 1

    wait_until(noticed_and_still_serving, timeout=10, what="gogeta to notice etcd is gone")
    for _ in range(10):
        resp = proxy.get(host="steady.test", timeout=2)
        assert (resp.status, resp.text) == (200, "app")

    own_etcd.start()
    client = own_etcd.client()
    write_domain(client, "comeback.test", "service", "steady")
    routed(proxy, "comeback.test", timeout=20)
    routed(proxy, "steady.test")
    # One line each way for the outage, however many directories are watched.
    assert log_count(proxy, "etcd unreachable") == 1, proxy.log()
    assert log_count(proxy, "etcd reachable again") == 1, proxy.log()
    for prefix in ("/domains", "/services"):
        assert log_count(proxy, f"{prefix}: resuming from index") == 1, proxy.log()


def test_gogeta_started_before_etcd_picks_routes_up(
    own_etcd: EtcdServer, gogeta: Start, app: Backend
) -> None:
    proxy = gogeta("-etcdAddress", own_etcd.url)  # nothing listens there yet
    assert proxy.get(host="early.test").status == 404
    wait_until(
        lambda: log_count(proxy, "etcd unreachable") >= 1,
        timeout=10,
        what="gogeta to report etcd unreachable",
    )
    assert proxy.get(host="early.test").status == 404

    own_etcd.start()
    client = own_etcd.client()
    write_instance(client, "early", "1", app.port)
    write_domain(client, "early.test", "service", "early")
    routed(proxy, "early.test", timeout=20)
    assert log_count(proxy, "etcd unreachable") == 1, proxy.log()


def test_first_endpoint_refusing_connections(gogeta: Start, etcd: EtcdServer, app: Backend) -> None:
    client = etcd.client()
    write_instance(client, "second", "1", app.port)
    write_domain(client, "second.test", "service", "second")
    dead = f"http://127.0.0.1:{refused_port()}"
    proxy = gogeta("-etcdAddress", f"{dead},{etcd.url}")
    routed(proxy, "second.test")
    # The writes go to the endpoint that answers too.
    wait_until(
        lambda: client.read("/services/second/1/lastAccess").value,
        timeout=10,
        what="lastAccess written through the second endpoint",
    )
    # And a change after the load arrives through the watch.
    write_domain(client, "second2.test", "service", "second")
    routed(proxy, "second2.test")
