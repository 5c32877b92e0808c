"""`/__gogeta/` admin paths on a real gogeta: health, routes, metrics, trusted networks.

Answered for any Host and before routing; `routes` and `metrics` only for trusted clients.
Metrics are parsed with prometheus-client's own parser, as a Prometheus server reads them.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Backend, EtcdServer, Response, Start, free_port, through, wait_until


def route(etcd: Any, host: str, service: str, port: int) -> None:
    client = etcd.client()
    client.write(f"/domains/{host}/type", "service")
    client.write(f"/domains/{host}/value", service)
    client.write(f"/services/{service}/1/location", json.dumps({"host": "127.0.0.1", "port": port}))


def samples(resp: Response) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`{(sample name, sorted labels): value}` of a Prometheus text answer."""
    found = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def health(resp: Response) -> dict[str, Any]:
    assert resp.header("Content-Type") == "application/json"
    body: dict[str, Any] = json.loads(resp.body)
    return body


def test_health_is_200_once_the_table_is_loaded_for_any_host(
    gogeta: Start, etcd: EtcdServer
) -> None:
    proxy = gogeta("-etcdAddress", etcd.url, "-forceFwSsl")
    resp = wait_until(
        lambda: (r := proxy.get("/__gogeta/health", host="any.example.org")).status == 200 and r,
        what="health 200",
    )
    body = health(resp)
    assert body["status"] == "ok" and body["loaded"] is True
    assert body["pid"] == proxy.proc.pid  # type: ignore[union-attr]
    # Not redirected to https by -forceFwSsl, not routed, whatever the Host.
    assert proxy.get("/__gogeta/health", host=None).status == 200
    assert proxy.get("/__gogeta/health", host="www.unknown.test").status == 200
    assert proxy.get("/", host="www.unknown.test").status == 301


def test_health_is_503_until_etcd_answered(gogeta: Start) -> None:
    proxy = gogeta("-etcdAddress", f"http://127.0.0.1:{free_port()}")
    resp = proxy.get("/__gogeta/health")
    assert resp.status == 503
    body = health(resp)
    assert body["status"] == "unavailable"
    assert "not loaded" in body["reason"]
    assert proxy.get("/__gogeta/health", method="HEAD").status == 503


def test_health_turns_503_when_etcd_is_unreachable_past_the_grace(
    gogeta: Start, tmp_path: Path
) -> None:
    etcd = EtcdServer(tmp_path / "etcd").start()
    try:
        proxy = gogeta("-etcdAddress", etcd.url, "-healthGraceSeconds", "1")
        wait_until(lambda: proxy.get("/__gogeta/health").status == 200, what="health 200")
        etcd.kill()
        resp = wait_until(
            lambda: (r := proxy.get("/__gogeta/health")).status == 503 and r,
            timeout=30,
            what="health 503 with etcd down",
        )
        assert "etcd unreachable" in health(resp)["reason"]
        etcd.start()
        wait_until(lambda: proxy.get("/__gogeta/health").status == 200, timeout=30, what="recovery")
    finally:
        etcd.stop()


def test_routes_is_the_live_table(gogeta: Start, etcd: EtcdServer) -> None:
    with Backend() as backend:
        route(etcd, "shop.example.com", "shop", backend.port)
        proxy = gogeta("-etcdAddress", etcd.url)

        def table() -> dict[str, Any]:
            resp = proxy.get("/__gogeta/routes", host="shop.example.com")
            assert resp.status == 200 and resp.header("Content-Type") == "application/json"
            body: dict[str, Any] = json.loads(resp.body)
            # Each directory loads on its own: wait for both, not the domain alone.
            loaded = "shop.example.com" in body["domains"] and "shop" in body["services"]
            return body if loaded else {}

        body = wait_until(table, what="the route in /routes")
    assert body["domains"]["shop.example.com"] == {"type": "service", "value": "shop"}
    [instance] = body["services"]["shop"]
    assert instance["status"] == "started"
    assert instance["location"] == {"host": "127.0.0.1", "port": backend.port}
    assert isinstance(body["etcd_index"], int)
    assert body["last_error"] is None


@pytest.mark.parametrize("path", ["routes", "metrics"])
def test_untrusted_clients_get_the_notfound_page(gogeta: Start, path: str) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/",
            "-trustedNetworks", "10.0.0.0/8, 192.168.0.0/16",
        )  # fmt: skip
        resp = proxy.get(f"/__gogeta/{path}")
        assert resp.status == 404
        assert resp.header("Content-Type") == "text/html; charset=utf-8"
        assert resp.body == proxy.get("/__gogeta/no-such-path").body
        assert proxy.get("/__gogeta/health").status == 200  # health stays open
    assert not backend.seen  # never forwarded


def test_metrics_count_requests_domains_latency_and_connections(
    gogeta: Start, etcd: EtcdServer
) -> None:
    with Backend() as backend:
        route(etcd, "shop.example.com", "shop", backend.port)
        proxy = gogeta("-etcdAddress", etcd.url)
        wait_until(lambda: proxy.get("/", host="shop.example.com").status == 200)
        before = samples(proxy.get("/__gogeta/metrics"))
        for _ in range(5):
            assert proxy.get("/", host="shop.example.com").status == 200
        for i in range(3):
            assert proxy.get("/", host=f"nope{i}.example.com").status == 404
        # A client connection held open while scraping.
        held = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        held.request("GET", "/", headers={"Host": "shop.example.com"})
        held.getresponse().read()
        resp = proxy.get("/__gogeta/metrics")
        held.close()
    assert resp.status == 200
    assert resp.header(
        "Content-Type",
    ).startswith("text/plain")  # type: ignore[union-attr]
    after = samples(resp)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gogeta_requests_total", code="200") == 6
    assert delta("gogeta_requests_total", code="404") == 3
    ok, missing = {"class": "2xx"}, {"class": "4xx"}
    assert delta("gogeta_domain_requests_total", domain="shop.example.com", **ok) == 6
    assert delta("gogeta_domain_requests_total", domain="unknown", **missing) == 3
    assert not [k for k in after if "nope0" in str(k)]  # unknown hosts are no label
    assert delta("gogeta_service_latency_seconds_count", service="shop") == 6
    assert value(after, "gogeta_service_latency_seconds_bucket", service="shop", le="+Inf") >= 6
    assert value(after, "gogeta_open_connections") >= 2  # the held one and the scrape
    assert value(after, "gogeta_resolver_events_applied_total") >= 0
    assert ("gogeta_resolver_reloads_total", ()) in after
    assert value(after, "gogeta_etcd_index") > 0
    assert value(after, "gogeta_etcd_unreachable") == 0


def test_domain_labels_are_bounded(gogeta: Start) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/")
        for i in range(230):
            assert proxy.get("/", host=f"d{i}.example.com").status == 200
        found = samples(proxy.get("/__gogeta/metrics"))
    domains: dict[str, float] = {}
    for (name, labels), v in found.items():
        if name == "gogeta_domain_requests_total":
            domain = dict(labels)["domain"]
            domains[domain] = domains.get(domain, 0) + v
    assert len(domains) == 201
    assert domains["other"] == 30
    assert sum(domains.values()) == 230


def test_a_domain_keeps_its_series_and_later_ones_stay_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first MAX_DOMAINS domains keep their own series however often they come back;
    domains first seen after them count as `other` every time."""
    from proxy.metrics import MAX_DOMAINS, Metrics

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    for _ in range(2):
        for i in range(MAX_DOMAINS + 30):
            metrics.count_request(200, f"d{i}.test")
    metrics.count_request(404, "unknown")
    metrics.count_request(502, "d0.test")
    _, text = metrics.render()
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    by_domain: dict[str, float] = {}
    for s in families["gogeta_domain_requests"].samples:
        if s.name.endswith("_total"):
            by_domain[s.labels["domain"]] = by_domain.get(s.labels["domain"], 0) + s.value
    assert len(by_domain) == MAX_DOMAINS + 2
    assert by_domain["d0.test"] == 3
    assert by_domain[f"d{MAX_DOMAINS - 1}.test"] == 2
    assert f"d{MAX_DOMAINS}.test" not in by_domain
    assert by_domain["other"] == 60
    assert by_domain["unknown"] == 1
    by_code = {
        s.labels["code"]: s.value
        for s in families["gogeta_requests"].samples
        if s.name.endswith("_total")
    }
    assert by_code == {"200": 2 * (MAX_DOMAINS + 30), "404": 1, "502": 1}
    d0 = {
        s.labels["class"]: s.value
        for s in families["gogeta_domain_requests"].samples
        if s.labels["domain"] == "d0.test"
    }
    assert d0 == {"2xx": 2, "5xx": 1}
