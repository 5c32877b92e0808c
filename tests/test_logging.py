"""Logs: one access line per request (combined + fields, or JSON), application logs at
-logLevel, and no WARNING for normal traffic. The lines are parsed as a log tool would."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    Backend,
    EtcdServer,
    GogetaProcess,
    Start,
    refused_port,
    through,
    wait_until,
)

COMBINED = re.compile(
    r'(?P<client>\S+) - - \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<target>\S+) (?P<proto>[^"]+)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" '
    r'host="(?P<host>[^"]*)" upstream="(?P<upstream>[^"]*)" '
    r"time=(?P<seconds>[\d.]+) upstream_time=(?P<upstream_seconds>[\d.]+|-)$"
)


def access_lines(proxy: GogetaProcess, count: int, parse: Any) -> list[Any]:
    """The first `count` access lines of the proxy's output, parsed; waits for them."""

    def parsed() -> list[Any]:
        found = [m for line in proxy.log().splitlines() if (m := parse(line))]
        return found if len(found) >= count else []

    return wait_until(parsed, what=f"{count} access lines")


def as_json(line: str) -> dict[str, Any] | None:
    return json.loads(line) if line.startswith("{") else None


def route(etcd: Any, host: str, service: str, port: int) -> None:
    client = etcd.client()
    client.write(f"/domains/{host}/type", "service")
    client.write(f"/domains/{host}/value", service)
    client.write(f"/services/{service}/1/location", json.dumps({"host": "127.0.0.1", "port": port}))


def test_combined_line_per_request_with_host_upstream_and_times(
    gogeta: Start, etcd: EtcdServer
) -> None:
    with Backend() as backend:
        route(etcd, "shop.example.com", "shop", backend.port)
        proxy = gogeta("-etcdAddress", etcd.url)
        wait_until(lambda: proxy.get("/", host="shop.example.com").status == 200)
        resp = proxy.get(
            "/cart?id=7",
            host="www.Shop.example.com:8080",
            headers={"User-Agent": 'agent "quoted"', "Referer": "http://ref.example/"},
        )
        assert resp.status == 200
        proxy.get("/", host="nowhere.example.com")

        def logged(field: str, value: str) -> Any:
            return next((m for m in access_lines(proxy, 1, COMBINED.match) if m[field] == value), 0)

        served = wait_until(lambda: logged("target", "/cart?id=7"), what="the /cart line")
        unknown = wait_until(lambda: logged("host", "nowhere.example.com"), what="the 404 line")
    assert served["client"] == "127.0.0.1"
    assert (served["method"], served["target"], served["proto"]) == (
        "GET",
        "/cart?id=7",
        "HTTP/1.1",
    )
    assert (served["status"], int(served["bytes"])) == ("200", len(resp.body))
    assert served["referer"] == "http://ref.example/"
    assert served["agent"] == r"agent \x22quoted\x22"
    assert served["host"] == "www.Shop.example.com:8080"
    assert served["upstream"] == "shop/1"
    assert 0 < float(served["upstream_seconds"]) <= float(served["seconds"]) < 5

    assert (unknown["status"], unknown["host"]) == ("404", "nowhere.example.com")
    assert (unknown["upstream"], unknown["upstream_seconds"]) == ("-", "-")


def test_json_lines(gogeta: Start) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/", "-accessLog=json")
        assert proxy.get("/j?q=1", host="api.example.com").status == 200
        line = access_lines(proxy, 1, as_json)[0]
    assert line["method"] == "GET"
    assert line["target"] == "/j?q=1"
    assert line["status"] == 200
    assert line["bytes"] == len(b"GET /j?q=1")
    assert line["host"] == "api.example.com"
    assert line["upstream"] == f"127.0.0.1:{backend.port}"
    assert 0 < line["upstream_seconds"] <= line["seconds"]
    assert line["client"] == "127.0.0.1"


def test_a_failed_upstream_is_logged_with_its_status(gogeta: Start) -> None:
    proxy = through(gogeta, f"http://127.0.0.1:{refused_port()}/")
    assert proxy.get("/").status == 502
    line = access_lines(proxy, 1, COMBINED.match)[0]
    assert line["status"] == "502"
    assert line["upstream"].startswith("127.0.0.1:")  # the one that failed
    assert line["upstream_seconds"] == "-"  # it never answered


def test_access_log_off(gogeta: Start) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/", "-accessLog", "off")
        for _ in range(3):
            assert proxy.get("/").status == 200
        proxy.stop()
    assert not [line for line in proxy.log().splitlines() if COMBINED.match(line)]
    assert "gogeta stopped" in proxy.log()


def test_log_level_hides_application_info_but_not_access_lines(gogeta: Start) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/", "-logLevel=WARNING")
        assert proxy.get("/").status == 200
        access_lines(proxy, 1, COMBINED.match)
        proxy.stop()
    assert "gogeta listening" not in proxy.log()
    assert " INFO " not in proxy.log()


def test_normal_traffic_logs_nothing_at_warning(gogeta: Start, etcd: EtcdServer) -> None:
    with Backend() as backend:
        route(etcd, "shop.example.com", "shop", backend.port)
        proxy = gogeta("-etcdAddress", etcd.url, "-logLevel", "DEBUG")
        wait_until(lambda: proxy.get("/", host="shop.example.com").status == 200)
        for i in range(10):
            assert proxy.get(f"/page{i}", host="shop.example.com").status == 200
            assert proxy.get("/", host="unknown.example.com").status == 404
            assert proxy.get("/robots.txt", host="shop.example.com").status == 200
            assert proxy.get("/__static__/gogeta.css").status == 200
        access_lines(proxy, 41, COMBINED.match)
        proxy.stop()
    levels = re.findall(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", proxy.log(), re.M)
    assert "INFO" in levels and "DEBUG" in levels  # the pattern does match the log format
    assert not {"WARNING", "ERROR", "CRITICAL"} & set(levels), proxy.log()


def warnings_of(proxy: GogetaProcess) -> list[str]:
    return re.findall(r"^\S+ \S+ (?:WARNING|ERROR|CRITICAL) (.*)$", proxy.log(), re.M)


def test_an_etcd_outage_logs_one_line_going_and_one_coming_back(
    gogeta: Start, tmp_path: Path
) -> None:
    etcd = EtcdServer(tmp_path / "etcd").start()
    try:
        with Backend() as backend:
            route(etcd, "shop.example.com", "shop", backend.port)
            proxy = gogeta("-etcdAddress", etcd.url, "-lastAccessInterval", "0")
            wait_until(lambda: proxy.get("/", host="shop.example.com").status == 200)
            etcd.kill()

            def down_for(seconds: float) -> bool:
                since = json.loads(proxy.get("/__gogeta/health").body)["etcd_unreachable_seconds"]
                return since is not None and since >= seconds

            # Long enough for several reconnection rounds (backoff 50 ms, 100 ms...).
            wait_until(lambda: down_for(2.5), timeout=30, what="etcd down for a while")
            for _ in range(3):  # lastAccess writes that cannot be made meanwhile
                assert proxy.get("/", host="shop.example.com").status == 200
            etcd.start()
            wait_until(
                lambda: (
                    json.loads(proxy.get("/__gogeta/health").body)["etcd_unreachable_seconds"]
                    is None
                ),
                timeout=30,
                what="etcd back",
            )
            assert proxy.get("/", host="shop.example.com").status == 200
            proxy.stop()
    finally:
        etcd.stop()
    warned = warnings_of(proxy)
    assert not [w for w in warned if "Retrying" in w], warned
    assert len([w for w in warned if "etcd unreachable" in w]) == 1, warned
    assert len([w for w in warned if "etcd reachable again" in w]) == 1, warned
    assert len(warned) == 2, warned


def test_a_failing_upstream_logs_its_state_changes_not_each_request(
    gogeta: Start, etcd: EtcdServer
) -> None:
    with Backend() as backend:
        client = etcd.client()
        route(etcd, "shop.example.com", "shop", refused_port())
        proxy = gogeta("-etcdAddress", etcd.url, "-ejectSeconds", "0")
        wait_until(lambda: proxy.get("/", host="shop.example.com").status == 502)
        for _ in range(20):
            assert proxy.get("/", host="shop.example.com").status == 502
        location = json.dumps({"host": "127.0.0.1", "port": backend.port})
        client.write("/services/shop/1/location", location)
        wait_until(lambda: proxy.get("/", host="shop.example.com").status == 200)
        access_lines(proxy, 22, COMBINED.match)  # every request is in the access log
        proxy.stop()
    warned = warnings_of(proxy)
    assert len(warned) == 1, warned
    assert "shop/1" in warned[0] and "failing" in warned[0] and "connect" in warned[0]
    recovered = [line for line in proxy.log().splitlines() if "shop/1 recovered after" in line]
    assert len(recovered) == 1, proxy.log()
    found = re.search(r"recovered after (\d+) failed requests over [\d.]+ s", recovered[0])
    assert found is not None and int(found[1]) >= 21, recovered


def test_a_long_failure_is_summed_up_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    from proxy.front import UpstreamStates

    now = [1000.0]
    states = UpstreamStates(clock=lambda: now[0])
    with caplog.at_level("INFO", logger="proxy.front"):
        for _ in range(600):  # 10 minutes of one failure a second
            states.failed("shop/1", "cannot connect: refused")
            now[0] += 1.0
        states.succeeded("shop/1")
    messages = [r.getMessage() for r in caplog.records]
    assert "failing" in messages[0] and "cannot connect: refused" in messages[0]
    summaries = [m for m in messages if "still failing" in m]
    assert 9 <= len(summaries) <= 10, messages
    assert "recovered after 600 failed requests over 600" in messages[-1]
    assert len(messages) == 2 + len(summaries)


def test_health_checks_can_be_left_out_of_the_access_log(gogeta: Start) -> None:
    with Backend() as backend:
        quiet = through(gogeta, backend.url + "/", "-accessLogHealth=false")
        loud = through(gogeta, backend.url + "/")
        for proxy in (quiet, loud):
            for _ in range(3):
                assert proxy.get("/__gogeta/health").status == 200
            assert proxy.get("/after").status == 200
            access_lines(proxy, 1, lambda line: "/after" in line and COMBINED.match(line))
            proxy.stop()
    assert "/__gogeta/health" not in quiet.log()
    assert len([line for line in loud.log().splitlines() if "/__gogeta/health" in line]) == 3
