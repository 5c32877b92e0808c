"""What an operator alerts on, scraped from a real gogeta at `/__gogeta/metrics`.

Counters are real counters (`_total`, TYPE counter), the `code` label is the status code,
per-domain, per-service and per-instance series carry the status class, upstream failures
are counted by kind. The text is parsed with prometheus-client's parser, as Prometheus does.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    Backend,
    EtcdServer,
    GogetaProcess,
    RawServer,
    Response,
    Start,
    read_request_head,
    refused_port,
    through,
    wait_until,
)

Found = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(proxy: GogetaProcess) -> tuple[Found, dict[str, str]]:
    """(`{(sample name, sorted labels): value}`, `{family name: type}`)."""
    resp = proxy.get("/__gogeta/metrics")
    assert resp.status == 200
    found: Found = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(resp.text):
        types[family.name] = family.type
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found, types


def value(found: Found, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def labels_of(found: Found, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in found if n == name]


def route(etcd: Any, host: str, service: str, ports: dict[str, int]) -> None:
    client = etcd.client()
    client.write(f"/domains/{host}/type", "service")
    client.write(f"/domains/{host}/value", service)
    for index, port in ports.items():
        location = json.dumps({"host": "127.0.0.1", "port": port})
        client.write(f"/services/{service}/{index}/location", location)


def routed(proxy: GogetaProcess, host: str, status: int = 200) -> Response:
    return wait_until(
        lambda: (r := proxy.get("/", host=host)).status == status and r,
        what=f"{host} to answer {status}",
    )


def test_resolver_figures_are_counters_read_at_scrape_time(gogeta: Start, etcd: EtcdServer) -> None:
    with Backend() as backend:
        route(etcd, "shop.example.com", "shop", {"1": backend.port})
        proxy = gogeta("-etcdAddress", etcd.url, "-lastAccessInterval", "0")
        routed(proxy, "shop.example.com")
        before, types = scrape(proxy)
        counters = ("reloads", "events_applied", "wakeups", "last_access_writes", "writes_dropped")
        for name in (*counters, "ejections"):
            assert types.get(f"gogeta_resolver_{name}") == "counter", name
            assert (f"gogeta_resolver_{name}_total", ()) in before, name
            assert (f"gogeta_resolver_{name}", ()) not in before, name  # no gauge copy
        assert value(before, "gogeta_resolver_reloads_total") == 2  # /domains and /services
        assert types["gogeta_etcd_index"] == "gauge"
        assert types["gogeta_resolver_watch_lag_events"] == "gauge"
        assert types["gogeta_resolver_writes_waiting"] == "gauge"

        # Changes reach the scrape without waiting for any refresh period.
        etcd.client().write("/services/shop/2/location", json.dumps({"port": 1}))
        etcd.client().write("/services/shop/2/location", json.dumps({"port": 2}))

        def applied() -> Found:
            found, _ = scrape(proxy)
            grown = value(found, "gogeta_resolver_events_applied_total") - value(
                before, "gogeta_resolver_events_applied_total"
            )
            # lastAccess is written from a background greenlet, after the request.
            written = value(found, "gogeta_resolver_last_access_writes_total")
            return found if grown >= 2 and written >= 1 else {}

        after = wait_until(applied, timeout=5, what="the two events and a lastAccess write")
    assert value(after, "gogeta_etcd_index") >= etcd.client().read("/").etcd_index - 10
    assert value(after, "gogeta_resolver_last_access_writes_total") >= 1


def test_code_is_the_status_code_and_bounded(gogeta: Start, etcd: EtcdServer) -> None:
    def odd(conn: socket.socket) -> None:
        while read_request_head(conn):
            conn.sendall(b"HTTP/1.1 599 Odd\r\nContent-Length: 0\r\n\r\n")

    with Backend() as backend, RawServer(odd) as weird:
        route(etcd, "shop.example.com", "shop", {"1": backend.port})
        route(etcd, "dead.example.com", "dead", {"1": refused_port()})
        route(etcd, "odd.example.com", "odd", {"1": weird.port})
        proxy = gogeta("-etcdAddress", etcd.url)
        routed(proxy, "shop.example.com")
        routed(proxy, "dead.example.com", 502)
        routed(proxy, "odd.example.com", 599)  # 600 and beyond: a 502 (invalid answer)
        assert proxy.get("/", host="nowhere.example.com").status == 404
        found, types = scrape(proxy)
    assert types["gogeta_requests"] == "counter"
    codes = {labels["code"] for labels in labels_of(found, "gogeta_requests_total")}
    assert {"200", "502", "404", "599"} <= codes
    assert not {"2xx", "5xx"} & codes


def test_error_ratio_per_domain_service_and_instance(gogeta: Start, etcd: EtcdServer) -> None:
    with Backend() as backend:
        dead = refused_port()
        route(etcd, "shop.example.com", "shop", {"1": backend.port})
        route(etcd, "dead.example.com", "dead", {"1": dead})
        proxy = gogeta("-etcdAddress", etcd.url, "-ejectSeconds", "0")
        routed(proxy, "shop.example.com")
        routed(proxy, "dead.example.com", 502)
        before, types = scrape(proxy)
        for _ in range(4):
            assert proxy.get("/", host="shop.example.com").status == 200
        for _ in range(3):
            assert proxy.get("/", host="dead.example.com").status == 502
        after, _ = scrape(proxy)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok, failed = {"class": "2xx"}, {"class": "5xx"}
    assert delta("gogeta_domain_requests_total", domain="shop.example.com", **ok) == 4
    assert delta("gogeta_domain_requests_total", domain="dead.example.com", **failed) == 3
    assert delta("gogeta_service_requests_total", service="shop", **ok) == 4
    assert delta("gogeta_service_requests_total", service="dead", **failed) == 3
    assert delta("gogeta_upstream_requests_total", service="shop", upstream="shop/1", **ok) == 4
    assert delta("gogeta_service_latency_seconds_count", service="shop") == 4
    assert delta("gogeta_upstream_latency_seconds_count", service="shop", upstream="shop/1") == 4
    failures = {"service": "dead", "upstream": "dead/1", "kind": "connect_refused"}
    assert delta("gogeta_upstream_failures_total", **failures) == 3
    assert types["gogeta_upstream_failures"] == "counter"


def test_failure_kinds(gogeta: Start) -> None:
    def resets(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    def nonsense(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        conn.close()

    def silent(conn: socket.socket) -> None:
        conn.recv(1)

    cases = {"reset": (resets, 502), "bad_answer": (nonsense, 502), "timeout": (silent, 504)}
    for kind, (handle, status) in cases.items():
        with RawServer(handle) as server:
            proxy = through(gogeta, server.url + "/", "-readTimeout", "0.5")
            assert proxy.get("/").status == status
            found, _ = scrape(proxy)
            upstream = f"127.0.0.1:{server.port}"
            failed = {labels["kind"]: value(found, "gogeta_upstream_failures_total", **labels)
                      for labels in labels_of(found, "gogeta_upstream_failures_total")
                      if labels["upstream"] == upstream}  # fmt: skip
            assert failed == {kind: 1.0}, (kind, failed)
            proxy.stop()


def test_retries_ejections_bytes_and_process(gogeta: Start, etcd: EtcdServer) -> None:
    with Backend() as backend:
        # Instance 1 refuses: the first request to it is replayed on instance 2.
        route(etcd, "shop.example.com", "shop", {"1": refused_port(), "2": backend.port})
        proxy = gogeta("-etcdAddress", etcd.url)
        routed(proxy, "shop.example.com")
        before, types = scrape(proxy)
        for _ in range(4):
            assert proxy.get("/", host="shop.example.com").status == 200
        body = b"x" * 1000
        resp = proxy.get("/up", host="shop.example.com", method="POST", body=body)
        assert resp.status == 200
        after, _ = scrape(proxy)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "gogeta_retries_total", service="shop") >= 1
    assert value(after, "gogeta_resolver_ejections_total") >= 1
    assert delta("gogeta_received_bytes_total") == len(body)
    assert delta("gogeta_sent_bytes_total") == 4 * len(b"GET /") + len(b"POST /up")
    assert types["process_cpu_seconds"] == "counter"
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(after, "process_open_fds") > 0


def test_a_process_kept_from_running_shows_in_the_event_loop_lag(gogeta: Start) -> None:
    """A wake-up due every 5 ms: a process stopped for 0.3 s (its loop not turning, as
    under a long collection or with no CPU) wakes up that late, and says so."""
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/")
        lag = "gogeta_event_loop_lag_seconds"

        def late(found: Found) -> float:  # wake-ups over 0.1 s late
            return value(found, f"{lag}_count") - value(found, f"{lag}_bucket", le="0.1")

        first, types = scrape(proxy)
        assert types[lag] == "histogram"
        assert types["gogeta_event_loop_run_seconds"] == "histogram"
        wait_until(lambda: value(scrape(proxy)[0], f"{lag}_count") > value(first, f"{lag}_count"),
                   what="the loop's wake-ups counted")  # fmt: skip
        before = late(scrape(proxy)[0])
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(0.3)  # the stall itself: the process is kept from running this long
        finally:
            proxy.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: late(scrape(proxy)[0]) >= before + 1, what="a late wake-up counted")
        assert proxy.get("/").status == 200


def test_service_and_upstream_labels_are_bounded() -> None:
    """Past MAX_SERVICES services or MAX_UPSTREAMS upstreams, the rest count as `other`."""
    import os

    from proxy.metrics import MAX_SERVICES, MAX_UPSTREAMS, Metrics
    from resolvers.base import Upstream

    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    metrics = Metrics()
    for i in range(MAX_SERVICES + 20):
        for j in range(3):
            metrics.count_upstream(Upstream("http", "h", 1, service=f"s{i}", instance=str(j)), 200)
    _, text = metrics.render()
    found: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            found.setdefault(s.name, set()).add(tuple(sorted(s.labels.items())))
    services = {dict(labels)["service"] for labels in found["gogeta_service_requests_total"]}
    assert len(services) == MAX_SERVICES + 1 and "other" in services
    upstreams = found["gogeta_upstream_requests_total"]
    assert len(upstreams) == MAX_UPSTREAMS + 1
    assert (("class", "2xx"), ("service", "other"), ("upstream", "other")) in upstreams
    assert (("class", "2xx"), ("service", "s0"), ("upstream", "s0/1")) in upstreams


def test_upstreams_past_the_bounds_make_no_new_objects() -> None:
    """Counting for ever more upstreams (instances moving, at 100,000 of them) adds nothing
    long-lived once the labels are bounded: the cyclic collector would walk it all."""
    import gc

    from proxy.metrics import MAX_UPSTREAMS, Metrics
    from resolvers.base import Upstream

    metrics = Metrics()
    many = [Upstream("http", "h", i, service=f"s{i}", instance="1") for i in range(10_000)]
    for upstream in many[: MAX_UPSTREAMS + 1]:  # the bounds filled, "other" made
        metrics.count_upstream(upstream, 200, 0.001)
        metrics.count_failure(upstream, "reset")
    gc.collect()
    before = len(gc.get_objects())
    for upstream in many[MAX_UPSTREAMS + 1 :]:
        metrics.count_upstream(upstream, 200, 0.001)
        metrics.count_failure(upstream, "reset")
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert grown < 50, f"{grown} more objects for {len(many) - MAX_UPSTREAMS - 1} upstreams"


def test_a_value_is_one_object_for_the_collector() -> None:
    """Standalone, a value of the labelled families is one object the cyclic collector
    walks: prometheus-client's own holds a lock each, thousands of objects at the bounds
    that every full collection walks again."""
    import gc

    from proxy.metrics import MAX_UPSTREAMS, Metrics
    from resolvers.base import Upstream

    metrics = Metrics()
    gc.collect()
    before = len(gc.get_objects())
    for i in range(MAX_UPSTREAMS):
        upstream = Upstream("http", "h", i, service=f"s{i}", instance="1")
        metrics.count_upstream(upstream, 200, 0.001)  # 2 counters, a histogram, a summary
    gc.collect()
    grown = len(gc.get_objects()) - before
    children = values = 0
    for family in (metrics.service_requests, metrics.upstream_requests):
        children += len(family._metrics)
        values += len(family._metrics)
    children += len(metrics.service_latency._metrics) + len(metrics.upstream_latency._metrics)
    buckets = len(metrics.service_latency._upper_bounds)  # +Inf included
    values += (buckets + 1) * len(metrics.service_latency._metrics)  # and the sum
    values += 2 * len(metrics.upstream_latency._metrics)
    # Each child with its labels and bookkeeping (_ByClass, _Upstream...): 4 objects at most
    # (3 measured); with a lock per value, as many objects again as values.
    assert grown < values + 4 * children, (grown, values, children)


def test_a_scrape_that_shows_new_children_puts_them_out_of_the_collectors_walk() -> None:
    """Standalone, the labelled families' children live as long as the process (bounded,
    never removed): once a scrape has shown them, full collections no longer walk them
    (they are frozen, as the routing table is after a load), and a scrape that shows none
    new freezes nothing."""
    import gc

    from proxy.metrics import MAX_UPSTREAMS, Metrics
    from resolvers.base import Upstream

    metrics = Metrics()
    metrics.render()
    try:
        for i in range(MAX_UPSTREAMS):
            upstream = Upstream("http", "h", i, service=f"s{i}", instance="1")
            metrics.count_upstream(upstream, 200, 0.001)
        children: list[Any] = list(metrics.upstream_requests._metrics.values())
        values = [child._value for child in children]
        walked = {id(o) for o in gc.get_objects()}
        assert all(id(v) in walked for v in values)
        metrics.render()
        walked = {id(o) for o in gc.get_objects()}
        assert not any(id(v) in walked for v in values)
        frozen = gc.get_freeze_count()
        metrics.count_upstream(Upstream("http", "h", 0, service="s0", instance="1"), 200, 0.1)
        metrics.render()  # numbers moved, no child added
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
