"""What only etcd's v3 API has, each against a real etcd: compaction, a new cluster, auth
tokens that expire, TLS client certificates, and the wrong API at the address.

The shared behaviour (routing, status table, wake-ups, lastAccess, robots, faults, a lease
expiring an `alive` key as a DELETE) runs in both APIs in the other test files.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.etcd_routes import log_count, named_backend, write_domain, write_instance
from tests.support import (
    Backend,
    EtcdServer,
    GogetaProcess,
    Reply,
    Seen,
    Start,
    StartEtcd,
    refused_port,
    wait_until,
)

PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def api() -> str:
    return "v3"


@pytest.fixture
def app() -> Iterator[Backend]:
    with named_backend("app") as backend:
        yield backend


def routed(proxy: GogetaProcess, host: str, body: str = "app", timeout: float = 15) -> None:
    wait_until(
        lambda: (r := proxy.get(host=host)).status == 200 and r.text == body,
        timeout=timeout,
        what=f"gogeta to route {host}",
    )


def not_found(proxy: GogetaProcess, host: str, timeout: float = 15) -> None:
    wait_until(
        lambda: proxy.get(host=host).status == 404, timeout=timeout, what=f"{host} to be gone"
    )


def health(proxy: GogetaProcess) -> tuple[int, str]:
    import json

    resp = proxy.get("/__gogeta/health")
    return resp.status, str(json.loads(resp.body).get("reason", ""))


def paused(proxy: GogetaProcess) -> Any:
    """SIGSTOP gogeta for a `with` block: its connections stay, it reads nothing."""
    from contextlib import contextmanager

    @contextmanager
    def block() -> Iterator[None]:
        assert proxy.proc is not None
        os.kill(proxy.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(proxy.proc.pid, signal.SIGCONT)

    return block()


# --------------------------------------------------------------------------- compaction


def test_compaction_while_gogeta_is_stopped_reloads(
    start_etcd: StartEtcd, gogeta: Start, app: Backend
) -> None:
    server = start_etcd()
    client = server.client()
    write_instance(client, "kept", "1", app.port)
    write_domain(client, "kept.test", "service", "kept")
    write_domain(client, "dropped.test", "service", "kept")
    proxy = gogeta(*server.flags)
    routed(proxy, "dropped.test")
    with paused(proxy):
        # etcd restarts (same data, same cluster): gogeta's streams are gone and it cannot
        # reconnect until continued, by which time the history it needs is compacted away.
        server.kill()
        server.start()
        client = server.client()
        write_domain(client, "later.test", "service", "kept")
        client.delete("/domains/dropped.test", recursive=True)
        client.compact()
    routed(proxy, "later.test")
    not_found(proxy, "dropped.test")  # a deletion whose event no longer exists
    routed(proxy, "kept.test")
    assert log_count(proxy, "/domains: etcd compacted its history") == 1, proxy.log()
    assert log_count(proxy, "/domains: loaded at etcd revision") == 2, proxy.log()


def test_compaction_while_watching_loses_nothing(
    etcd: EtcdServer, gogeta: Start, app: Backend
) -> None:
    client = etcd.client()
    write_instance(client, "live", "1", app.port)
    write_domain(client, "live.test", "service", "live")
    proxy = gogeta(*etcd.flags)
    routed(proxy, "live.test")
    client.compact()
    write_domain(client, "after.test", "service", "live")
    client.delete("/domains/live.test", recursive=True)
    routed(proxy, "after.test")
    not_found(proxy, "live.test")
    assert log_count(proxy, "compacted") == 0, proxy.log()  # a live watch is not cancelled
    assert log_count(proxy, "loaded at etcd revision") == 2, proxy.log()  # one per prefix


# --------------------------------------------------------------------------- another cluster


def test_etcd_replaced_by_a_new_cluster_at_a_higher_revision_reloads(
    start_etcd: StartEtcd, gogeta: Start, app: Backend
) -> None:
    server = start_etcd()
    client = server.client()
    write_instance(client, "old", "1", app.port)
    write_domain(client, "old.test", "service", "old")
    proxy = gogeta(*server.flags)
    routed(proxy, "old.test")
    old_revision = client.revision()
    with paused(proxy):
        server.kill()
        # A fresh etcd on the same address. Its cluster id hashes its members' peer URLs and
        # --initial-cluster-token, which etcd wants unique per cluster: a new one here.
        shutil.rmtree(server.data_dir / "data")
        server.token = "replacement"
        server.start()
        client = server.client()
        for i in range(old_revision + 10):  # refilled past the revision gogeta resumes from
            client.put(f"/elsewhere/k{i % 5}", str(i))
        write_instance(client, "new", "1", app.port)
        write_domain(client, "new.test", "service", "new")
        assert client.revision() > old_revision + 10
    routed(proxy, "new.test")
    not_found(proxy, "old.test")  # only in the old cluster
    assert log_count(proxy, "is another cluster") >= 1, proxy.log()


# --------------------------------------------------------------------------- auth


def enable_auth(server: EtcdServer) -> None:
    client = server.client()
    client.call("/v3/auth/user/add", {"name": "root", "password": PASSWORD})
    client.call("/v3/auth/role/add", {"name": "root"})
    client.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
    client.call("/v3/auth/enable", {})
    server.username, server.password = "root", PASSWORD


def test_expired_tokens_are_taken_again(start_etcd: StartEtcd, gogeta: Start, app: Backend) -> None:
    server = start_etcd(extra=("--auth-token-ttl=2",))
    enable_auth(server)
    client = server.client()
    write_instance(client, "auth", "1", app.port)
    write_domain(client, "auth.test", "service", "auth")
    proxy = gogeta(
        *server.flags, "-lastAccessInterval", "0", env={"GOGETA_ETCD_PASSWORD": PASSWORD}
    )
    routed(proxy, "auth.test")
    # Idle past the token TTL: time itself is the condition here.
    idle_until = time.monotonic() + 3
    wait_until(lambda: time.monotonic() > idle_until, timeout=5, interval=0.1, what="idle")
    write_domain(client, "idle.test", "service", "auth")
    routed(proxy, "idle.test")  # through the watch opened with the old token
    client.delete("/services/auth/1/lastAccess")
    routed(proxy, "auth.test")
    wait_until(  # a write with an expired token, refused, then taken again
        lambda: client.read("/services/auth/1/lastAccess").value,
        timeout=10,
        what="lastAccess written after the token expired",
    )
    server.kill()  # a restarted etcd forgets every token: the watches reconnect with theirs
    server.start()
    client = server.client()
    write_domain(client, "restart.test", "service", "auth")
    routed(proxy, "restart.test", timeout=20)
    assert log_count(proxy, "refused") == 0, proxy.log()
    assert PASSWORD not in proxy.log()
    assert health(proxy)[0] == 200


def test_wrong_credentials_are_said_once_and_in_health(
    start_etcd: StartEtcd, gogeta: Start
) -> None:
    server = start_etcd()
    enable_auth(server)
    proxy = gogeta(*server.flags, env={"GOGETA_ETCD_PASSWORD": "not-the-password"})
    wait_until(
        lambda: (h := health(proxy))[0] == 503 and "refused user 'root'" in h[1],
        timeout=10,
        what="health to say the credentials are refused",
    )
    assert log_count(proxy, "refused user 'root'") == 1, proxy.log()
    assert "not-the-password" not in proxy.log()
    anonymous = gogeta("-etcdAddress", server.url, "-etcdApi", "v3")
    wait_until(
        lambda: "-etcdUsername" in health(anonymous)[1],
        timeout=10,
        what="health to say etcd wants credentials",
    )


# --------------------------------------------------------------------------- TLS


def test_tls_with_client_certificates(start_etcd: StartEtcd, gogeta: Start, app: Backend) -> None:
    server = start_etcd(tls=True)
    client = server.client()
    write_instance(client, "tls", "1", app.port)
    write_domain(client, "tls.test", "service", "tls")
    proxy = gogeta(*server.flags)
    routed(proxy, "tls.test")
    write_domain(client, "tls2.test", "service", "tls")
    routed(proxy, "tls2.test")
    wait_until(
        lambda: client.read("/services/tls/1/lastAccess").value,
        timeout=10,
        what="lastAccess written over TLS",
    )
    # And without the client certificate etcd does not answer.
    assert server.tls is not None
    bare = gogeta("-etcdAddress", server.url, "-etcdApi", "v3", "-etcdCaFile", str(server.tls.ca))
    wait_until(lambda: health(bare)[0] == 503 and "etcd unreachable" in bare.log(), timeout=10)


# --------------------------------------------------------------------------- the wrong API


def test_the_wrong_api_is_named_in_one_line(gogeta: Start, etcd: EtcdServer) -> None:
    # An etcd without v2 (3.6+, or v2 off) asked for v2...
    v2 = gogeta("-etcdAddress", etcd.url, "-etcdApi", "v2")
    wait_until(lambda: "-etcdApi v3" in health(v2)[1], timeout=10, what="health naming v3")
    assert log_count(v2, "-etcdApi v3") == 1, v2.log()

    # ...and an address without the v3 API asked for v3.
    def not_found_page(seen: Seen) -> Reply:
        return 404, [("Content-Type", "text/plain")], b"404 page not found\n"

    with Backend(not_found_page) as elsewhere:
        v3 = gogeta("-etcdAddress", elsewhere.url, "-etcdApi", "v3")
        wait_until(lambda: "-etcdApi v2" in health(v3)[1], timeout=10, what="health naming v2")
        assert log_count(v3, "-etcdApi v2") == 1, v3.log()


# --------------------------------------------------------------------------- endpoints


def test_a_dead_first_endpoint_is_passed_over(
    gogeta: Start, etcd: EtcdServer, app: Backend
) -> None:
    client = etcd.client()
    write_instance(client, "second", "1", app.port)
    write_domain(client, "second.test", "service", "second")
    dead = f"http://127.0.0.1:{refused_port()}"
    proxy = gogeta("-etcdAddress", f"{dead},{etcd.url}", "-etcdApi", "v3")
    routed(proxy, "second.test")
    wait_until(
        lambda: client.read("/services/second/1/lastAccess").value,
        timeout=10,
        what="lastAccess written through the second endpoint",
    )
    write_domain(client, "second2.test", "service", "second")
    routed(proxy, "second2.test")


def test_etcd_stopping_mid_stream_is_an_outage_resumed_without_loss(
    start_etcd: StartEtcd, gogeta: Start, app: Backend
) -> None:
    server = start_etcd()
    client = server.client()
    write_instance(client, "calm", "1", app.port)
    write_domain(client, "calm.test", "service", "calm")
    proxy = gogeta(*server.flags)
    routed(proxy, "calm.test")
    server.kill(signal.SIGTERM)  # etcd 3.5 ends open watches with {"error": ...}
    wait_until(lambda: log_count(proxy, "etcd unreachable") == 1, what="the outage noticed")
    routed(proxy, "calm.test")  # the last table keeps serving
    server.start()
    write_domain(server.client(), "back.test", "service", "calm")
    routed(proxy, "back.test", timeout=20)
    assert log_count(proxy, "etcd reachable again") == 1, proxy.log()
    for prefix in ("/domains", "/services"):
        assert log_count(proxy, f"{prefix}: resuming from revision") == 1, proxy.log()
        assert log_count(proxy, f"{prefix}: loaded at etcd revision") == 1, proxy.log()
