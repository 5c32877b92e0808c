"""Waking a sleeping application: one write for many proxies, wait page or JSON, optional hold."""

from __future__ import annotations

import json
import threading

import etcd as etcd_client
import pytest

from tests.support import Backend, EtcdServer, Start, wait_until


def passivated(etcd: EtcdServer, domain: str, service: str, port: int) -> None:
    client = etcd.client()
    base = f"/services/{service}/1"
    client.write(f"{base}/location", json.dumps({"host": "127.0.0.1", "port": port}))
    client.write(f"{base}/status/current", "stopped")
    client.write(f"{base}/status/expected", "passivated")
    client.write(f"/domains/{domain}/type", "service")
    client.write(f"/domains/{domain}/value", service)


def expected_of(etcd: EtcdServer, service: str) -> tuple[str, int]:
    node = etcd.client().read(f"/services/{service}/1/status/expected")
    return node.value, node.modifiedIndex


def orchestrate(etcd: EtcdServer, service: str) -> None:
    """What the platform does once asked: starting, then started and alive."""
    wait_until(lambda: expected_of(etcd, service)[0] == "started", what="wake-up write")
    client = etcd.client()
    client.write(f"/services/{service}/1/status/current", "starting")
    client.write(f"/services/{service}/1/status/alive", "1")
    client.write(f"/services/{service}/1/status/current", "started")


def test_two_proxies_wake_an_application_once(etcd: EtcdServer, gogeta: Start) -> None:
    with Backend() as backend:
        passivated(etcd, "sleepy.test", "sleepy", backend.port)
        proxies = [gogeta("-etcdAddress", etcd.url) for _ in range(2)]
        for proxy in proxies:  # both loaded it asleep: a HEAD wakes nothing
            wait_until(lambda p=proxy: p.get("/", host="sleepy.test", method="HEAD").status == 503)  # type: ignore[misc]
        # Both visited: each asks for the wake-up, unless the other's write reached it first
        # (then it reads stopped/started, an error by docs/behaviour.md §3.1, and asks for nothing).
        asked = [p for p in proxies if p.get("/", host="sleepy.test").status == 503]
        assert proxies[0] in asked
        wait_until(lambda: expected_of(etcd, "sleepy")[0] == "started", what="wake-up write")
        for _ in range(5):
            for proxy in asked:
                # stopped/started reads "error" by docs/behaviour.md §3.1, but visitors of an app
                # this gogeta is waking keep the self-reloading wait page until it starts
                resp = proxy.get("/", host="sleepy.test")
                assert resp.status == 503 and b'http-equiv="refresh"' in resp.body
        value, index = expected_of(etcd, "sleepy")
        assert value == "started"
        # no second write after the first: a watch from the next index sees nothing
        with pytest.raises(etcd_client.EtcdWatchTimedOut):
            etcd.client().read(
                "/services/sleepy/1/status/expected", wait=True, waitIndex=index + 1, timeout=1
            )
        assert not backend.seen


def test_api_client_gets_json_503_with_retry_after(etcd: EtcdServer, gogeta: Start) -> None:
    with Backend() as backend:
        passivated(etcd, "api-sleepy.test", "apisleepy", backend.port)
        proxy = gogeta("-etcdAddress", etcd.url)
        wait_until(lambda: proxy.get("/", host="api-sleepy.test", method="HEAD").status == 503)
        etcd.client().write("/services/apisleepy/1/status/expected", "passivated")
        resp = wait_until(
            lambda: (
                r
                if (
                    r := proxy.get(
                        "/", host="api-sleepy.test", headers={"Accept": "application/json"}
                    )
                ).status
                == 503
                else None
            )
        )
        assert resp.header("Retry-After") == "5"
        assert json.loads(resp.body)["status"] == "passivated"


def test_hold_forwards_once_the_application_is_up(etcd: EtcdServer, gogeta: Start) -> None:
    with Backend() as backend:
        passivated(etcd, "held.test", "held", backend.port)
        proxy = gogeta("-etcdAddress", etcd.url, "-wakeHoldSeconds", "20")
        wait_until(lambda: proxy.get("/__gogeta/health", host="x").status == 200, what="loaded")
        platform = threading.Thread(target=orchestrate, args=(etcd, "held"), daemon=True)
        platform.start()
        resp = proxy.get("/hello", host="held.test", timeout=30)
        platform.join(timeout=10)
        assert resp.status == 200
        assert resp.body == b"GET /hello"


def test_hold_gives_up_with_the_wait_page(etcd: EtcdServer, gogeta: Start) -> None:
    with Backend() as backend:
        passivated(etcd, "never.test", "never", backend.port)
        proxy = gogeta("-etcdAddress", etcd.url, "-wakeHoldSeconds", "1")
        wait_until(lambda: proxy.get("/__gogeta/health", host="x").status == 200, what="loaded")
        resp = proxy.get("/", host="never.test", timeout=30)
        assert resp.status == 503
        assert b'http-equiv="refresh"' in resp.body
        assert not backend.seen
