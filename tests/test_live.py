"""The live view's JSON on a real gogeta and etcd, without a browser: the reasons in
`/__gogeta/routes`, its pages, and `/__gogeta/live` (process, last minute, one page)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support import (
    Backend,
    EtcdServer,
    GogetaProcess,
    Start,
    free_port,
    through,
    wait_until,
)


def put_many(etcd: EtcdServer, items: Iterable[tuple[str, str]], threads: int = 16) -> None:
    """Write many keys through etcd's v2 API from several keep-alive connections."""
    pending = list(items)
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", etcd.client_port, timeout=30)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        try:
            while not failures:
                with lock:
                    if not pending:
                        return
                    key, value = pending.pop()
                conn.request("PUT", "/v2/keys" + key, urlencode({"value": value}), headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status not in (200, 201):
                    raise AssertionError(f"etcd PUT {key}: {resp.status}")
        except BaseException as exc:
            failures.append(exc)
        finally:
            conn.close()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]


def domain_keys(host: str, service: str) -> list[tuple[str, str]]:
    return [(f"/domains/{host}/type", "service"), (f"/domains/{host}/value", service)]


def location(port: int) -> str:
    return json.dumps({"host": "127.0.0.1", "port": port})


def get_json(proxy: GogetaProcess, path: str) -> dict[str, Any]:
    resp = proxy.get(path)
    assert resp.status == 200, resp.text
    assert resp.header("Content-Type") == "application/json"
    assert resp.header("Cache-Control") == "no-store"
    body: dict[str, Any] = json.loads(resp.body)
    return body


def test_routes_say_why_each_instance_is_not_routable(gogeta: Start, etcd: EtcdServer) -> None:
    refused = free_port()  # nothing listens there: connections are refused
    with Backend() as backend:
        put_many(etcd, [
            *domain_keys("shop.example.com", "shop"),
            ("/services/shop/1/location", location(backend.port)),
            ("/services/shop/2/location", '{"host": "127.0.0.1", "port": "eighty"}'),
            ("/services/shop/3/location", location(backend.port)),
            ("/services/shop/3/status/current", "started"),
            ("/services/shop/3/status/expected", "started"),
            ("/services/shop/4/location", location(refused)),
            ("/services/shop/5/status/current", "starting"),
            ("/services/shop/5/status/expected", "started"),
        ])  # fmt: skip
        proxy = gogeta("-etcdAddress", etcd.url, "-ejectSeconds", "60")

        def shop() -> dict[str, Any]:
            body = get_json(proxy, "/__gogeta/routes")
            return {i["index"]: i for i in body["services"].get("shop", [])}

        instances = wait_until(lambda: len(shop()) == 5 and shop(), what="shop's 5 instances")
        assert instances["1"]["routable"] is True and instances["1"]["reasons"] == []
        assert instances["2"]["routable"] is False
        assert instances["2"]["location"] is None
        assert instances["2"]["location_error"] == "location port is not a number"
        assert instances["2"]["reasons"] == ["invalid location: location port is not a number"]
        assert instances["3"]["status"] == "error"
        assert instances["3"]["reasons"] == ["not alive: status/alive is missing or empty"]
        assert instances["5"]["reasons"] == ["no location", "starting"]
        assert instances["4"]["routable"] is True and instances["4"]["ejected_until"] is None

        # Round robin reaches instance 4, whose connection is refused: ejected.
        for _ in range(4):
            assert proxy.get("/", host="shop.example.com").status == 200
        four = wait_until(
            lambda: (i := shop()["4"])["ejected_until"] and i, what="instance 4 ejected"
        )
        assert four["routable"] is False
        assert four["status"] == "started"
        assert four["reasons"][0].startswith("ejected")
        assert 0 < four["ejected_until"] - time.time() <= 60.5
        body = get_json(proxy, "/__gogeta/routes")
        # lastAccess: what gogeta wrote to etcd, read back from it.
        one = wait_until(lambda: (i := shop()["1"])["last_access"] and i, what="lastAccess")
        assert len(one["last_access"]) == len("2026-01-02 03:04:05")
        # The keys routes always had stay as they were.
        assert body["domains"]["shop.example.com"] == {"type": "service", "value": "shop"}
        assert {"resolver", "loaded", "etcd_index", "counters", "gauges"} <= body.keys()
        assert body["source"] == "etcd v2" and body["endpoint"] == etcd.url
        assert body["last_reload"]["reason"].endswith("first load")


def test_routes_and_live_page_through_the_domains(gogeta: Start, etcd: EtcdServer) -> None:
    with Backend() as backend:
        hosts = [f"site{i:03}.example.com" for i in range(240)] + ["shop.example.com"]
        put_many(etcd, [
            *(k for h in hosts for k in domain_keys(h, "web")),
            ("/services/web/1/location", location(backend.port)),
            ("/services/unused/1/location", location(backend.port)),
        ])  # fmt: skip
        proxy = gogeta("-etcdAddress", etcd.url)
        wait_until(
            lambda: len(get_json(proxy, "/__gogeta/routes")["domains"]) == len(hosts),
            what="every domain loaded",
        )
        first = get_json(proxy, "/__gogeta/routes?page=1")
        assert list(first["domains"]) == sorted(hosts)[:200]
        assert first["page"] == {
            "query": "",
            "number": 1,
            "per_page": 200,
            "total": 241,
            "pages": 2,
        }
        assert list(first["services"]) == ["web"]  # only the services the page names
        second = get_json(proxy, "/__gogeta/routes?page=2")
        assert list(second["domains"]) == sorted(hosts)[200:]
        assert get_json(proxy, "/__gogeta/routes?per_page=100000")["page"]["per_page"] == 200
        assert get_json(proxy, "/__gogeta/routes?page=99")["page"]["number"] == 2  # clamped
        assert get_json(proxy, "/__gogeta/routes?page=x")["page"]["number"] == 1
        found = get_json(proxy, "/__gogeta/routes?q=SITE01&per_page=5&page=2")
        assert list(found["domains"]) == [f"site01{i}.example.com" for i in range(5, 10)]
        assert found["page"]["total"] == 10
        # Without a query string: the whole table, as before.
        assert len(get_json(proxy, "/__gogeta/routes")["services"]) == 2

        for _ in range(3):
            assert proxy.get("/", host="shop.example.com").status == 200
        assert proxy.get("/", host="nowhere.example.com").status == 404
        live = get_json(proxy, "/__gogeta/live?q=shop")
    [shop] = live["domains"]
    assert shop["host"] == "shop.example.com" and shop["value"] == "web"
    assert shop["traffic"]["requests"] == 3 and shop["traffic"]["errors"] == 0
    [web1] = shop["instances"]
    assert web1["routable"] is True and web1["traffic"]["requests"] == 3
    assert web1["traffic"]["p99_ms"] > 0
    assert live["page"]["total"] == 1
    totals = live["totals"]
    assert totals["requests"] == 4 and totals["4xx"] == 1  # /__gogeta/ itself not counted
    assert totals["open_connections"] >= 1
    assert len(totals["per_second"]) == 60
    process = live["process"]
    assert process["pid"] == live["answered_by"] == proxy.proc.pid  # type: ignore[union-attr]
    assert process["source"] == "etcd v2" and process["endpoint"] == etcd.url
    assert process["loaded"] is True and process["etcd_index"] > 0
    assert process["unreachable_since"] is None
    assert live["mode"] == "standalone" and len(live["workers"]) == 1


def test_a_uri_domain_shows_its_url_and_traffic(gogeta: Start, etcd: EtcdServer) -> None:
    with Backend() as backend:
        put_many(etcd, [
            ("/domains/api.example.com/type", "uri"),
            ("/domains/api.example.com/value", backend.url + "/v1"),
        ])  # fmt: skip
        proxy = gogeta("-etcdAddress", etcd.url)
        wait_until(lambda: proxy.get("/", host="api.example.com").status == 200)
        live = get_json(proxy, "/__gogeta/live")
    [api] = live["domains"]
    assert api["type"] == "uri" and api["upstream"] == f"127.0.0.1:{backend.port}"
    assert api["upstream_traffic"]["requests"] >= 1


@pytest.mark.parametrize("path", ["/__gogeta/", "/__gogeta/live", "/__gogeta/routes?q=a"])
def test_the_live_view_is_for_trusted_networks_only(gogeta: Start, path: str) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/", "-trustedNetworks", "10.0.0.0/8")
        resp = proxy.get(path)
        assert resp.status == 404
        assert resp.body == proxy.get("/__gogeta/no-such-path").body
    assert not backend.seen


def test_the_page_is_a_shell_of_its_own_assets(gogeta: Start) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/")
        page = proxy.get("/__gogeta/")
        assert page.status == 200 and page.header("Content-Type") == "text/html; charset=utf-8"
        assert "default-src 'self'" in (page.header("Content-Security-Policy") or "")
        for asset in ("/__static__/live.js", "/__static__/live.css", "/__static__/live.svg"):
            assert asset in page.text
            assert proxy.get(asset).status == 200
        assert "http://" not in page.text and "https://" not in page.text
        assert proxy.get("/__gogeta/", method="POST").status == 405
        live = get_json(proxy, "/__gogeta/live")
        assert live["process"]["resolver"] == "Dummy"
        assert [d["host"] for d in live["domains"]] == ["*"]
    assert not backend.seen
