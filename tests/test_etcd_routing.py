"""Routing from a real etcd (docs/behaviour.md §1–§5): what a route's keys answer.

The status table (§3.1), round robin (§4), robots.txt and the Env resolver, against etcd's
v2 API and its v3 API, a gogeta process per API (tests/etcd_routing_fixtures.py). Each test
uses its own domain and service names, writes its keys with python-etcd (or its v3 twin)
and waits on a `Barrier`, then asserts on the answers. Keys that change while gogeta runs,
and invalid ones, are tests/test_etcd_routing_changes.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_routes import (
    Barrier,
    answer_with,
    echo_backend,
    etcd_index,
    key_writes,
    named_backend,
    named_backends,
    page_of,
    store_stats,
    write_domain,
    write_instance,
)
from tests.etcd_routing_fixtures import DEFAULT_ROBOTS, answers

# The fixtures, imported under their own names so that pytest finds them here: the
# ones the tests take and the ones those depend on.
from tests.etcd_routing_fixtures import api as api
from tests.etcd_routing_fixtures import client as client
from tests.etcd_routing_fixtures import ok_backend as ok_backend
from tests.etcd_routing_fixtures import proxy as proxy
from tests.etcd_routing_fixtures import sync as sync
from tests.etcd_routing_fixtures import templates as templates
from tests.support import EtcdServer, GogetaProcess, wait_until

# -------------------------------------------------------------- docs/behaviour.md §3.1 table

# (status keys as (current, expected, alive), or None for no status directory) → page, code
STATUS_ROWS: list[tuple[tuple[str | None, str | None, str | None] | None, str, int]] = [
    (None, "backend:app", 200),
    (("stopped", "passivated", None), "passivated", 503),
    (("stopped", "stopped", None), "stopped", 500),
    (("stopped", "started", None), "error", 500),
    (("starting", "started", None), "starting", 503),
    (("starting", "passivated", None), "error", 500),
    (("started", "started", "1"), "backend:app", 200),
    (("started", "started", None), "error", 500),
    (("started", "started", ""), "error", 500),
    (("started", "passivated", "1"), "error", 500),
    (("started", "stopped", "1"), "error", 500),
    (("stopping", "stopped", None), "stopped", 500),
    (("stopping", "started", None), "error", 500),
    (("weird", "started", "1"), "error", 500),
    ((None, None, None), "error", 500),  # a status directory without `current`
]


@pytest.mark.parametrize(
    ("status", "page", "code"),
    STATUS_ROWS,
    ids=[f"{'/'.join(str(v) for v in s) if s else 'no-status'}" for s, _, _ in STATUS_ROWS],
)
def test_status_table_row(
    proxy: GogetaProcess,
    client: Any,
    sync: Barrier,
    status: tuple[str | None, str | None, str | None] | None,
    page: str,
    code: int,
    api: str,
) -> None:
    if api == "v3" and status == (None, None, None):
        pytest.skip("v3 has no empty directories: no status keys is no status directory")
    with named_backend("app") as app:
        write_instance(client, "row", "1", app.port, status)
        write_domain(client, "row.test", "service", "row")
        sync(proxy)
        resp = proxy.get(host="row.test")
        assert (page_of(resp), resp.status) == (page, code)
        if code == 200:
            assert len(app.seen) == 1
        else:
            assert app.seen == []


# --------------------------------------------------------------------------- round robin (§4)


def test_round_robin_alternates_between_two_instances(
    proxy: GogetaProcess, client: Any, sync: Barrier
) -> None:
    with named_backends("a", "b") as backends:
        write_instance(client, "two", "1", backends["a"].port)
        write_instance(client, "two", "2", backends["b"].port, ("started", "started", "x"))
        write_domain(client, "two.test", "service", "two")
        sync(proxy)
        got = answers(proxy, "two.test", 8)
    assert set(got) == {"backend:a", "backend:b"}
    assert all(got[i] != got[i + 1] for i in range(len(got) - 1)), got


def test_round_robin_cycles_three_instances_in_a_stable_order(
    proxy: GogetaProcess, client: Any, sync: Barrier
) -> None:
    with named_backends("a", "b", "c") as backends:
        # Written out of order, and `10` must come after `2` (numeric order).
        write_instance(client, "three", "10", backends["c"].port)
        write_instance(client, "three", "1", backends["a"].port)
        write_instance(client, "three", "2", backends["b"].port)
        write_domain(client, "three.test", "service", "three")
        sync(proxy)
        got = answers(proxy, "three.test", 9)
    first = got.index("backend:a")
    assert got[first : first + 3] == ["backend:a", "backend:b", "backend:c"]
    assert all(got[i] == got[i + 3] for i in range(6)), got


def test_round_robin_skips_stopped_and_locationless_instances(
    proxy: GogetaProcess, client: Any, sync: Barrier
) -> None:
    with named_backends("a", "stopped", "b") as backends:
        write_instance(client, "skip", "1", backends["a"].port)
        write_instance(client, "skip", "2", backends["stopped"].port, ("stopped", "stopped", None))
        write_instance(client, "skip", "3", None, ("started", "started", "1"))  # no location
        write_instance(client, "skip", "4", backends["b"].port)
        write_domain(client, "skip.test", "service", "skip")
        sync(proxy)
        got = answers(proxy, "skip.test", 8)
        assert backends["stopped"].seen == []
    assert set(got) == {"backend:a", "backend:b"}
    assert all(got[i] != got[i + 1] for i in range(len(got) - 1)), got


def test_no_started_instance_answers_with_the_last_one_looked_at(
    proxy: GogetaProcess, client: Any, sync: Barrier
) -> None:
    # docs/behaviour.md §3.2: with no instance started, the status of the last instance round robin
    # looked at answers. Starting one past the previous choice and trying each once, that
    # is the previous choice (the last instance before any choice).
    with named_backend("a") as a:
        write_instance(client, "last", "1", a.port)
        write_instance(client, "last", "2", a.port, ("starting", "started", None))
        write_instance(client, "last2", "1", a.port, ("starting", "started", None))
        write_instance(client, "last2", "2", a.port, ("stopped", "stopped", None))
        write_domain(client, "last.test", "service", "last")
        write_domain(client, "last2.test", "service", "last2")
        sync(proxy)
        # No choice yet: the last instance in order answers, every time.
        assert answers(proxy, "last2.test", 3) == ["stopped"] * 3
        # `last`: the first request chooses instance 1; then instance 1 stops.
        assert answers(proxy, "last.test", 1) == ["backend:a"]
        client.write("/services/last/1/status/current", "stopping")
        client.write("/services/last/1/status/expected", "stopped")
        sync(proxy)
        # Looks at 2 (starting), then 1 (stopped): the stopped page, not the starting one.
        resp = proxy.get(host="last.test")
        assert (page_of(resp), resp.status) == ("stopped", 500)


def test_empty_service_and_unknown_service_are_not_found(
    proxy: GogetaProcess, client: Any, sync: Barrier
) -> None:
    client.write("/services/empty", None, dir=True)
    write_domain(client, "empty.test", "service", "empty")
    write_domain(client, "ghost.test", "service", "ghost")
    sync(proxy)
    for host in ("empty.test", "ghost.test", "nowhere.test"):
        resp = proxy.get(host=host)
        assert (page_of(resp), resp.status) == ("notfound", 404)


# --------------------------------------------------------------------------- robots.txt


def test_robots_from_config_gogeta(proxy: GogetaProcess, client: Any, sync: Barrier) -> None:
    with named_backend("rb") as rb:
        base = write_instance(client, "rb", "1", rb.port)
        write_domain(client, "rb.test", "service", "rb")
        sync(proxy)
        resp = proxy.get("/robots.txt", host="rb.test")
        assert (resp.status, resp.text) == (200, DEFAULT_ROBOTS)

        client.write(f"{base}/config/gogeta", json.dumps({"robots": "User-agent: *\nAllow: /"}))
        sync(proxy)
        assert proxy.get("/robots.txt", host="rb.test").text == "User-agent: *\nAllow: /"

        client.write(f"{base}/config/gogeta", json.dumps({"robots": "Disallow: /private"}))
        sync(proxy)
        assert proxy.get("/robots.txt", host="rb.test").text == "Disallow: /private"

        client.delete(f"{base}/config", recursive=True, dir=True)
        sync(proxy)
        assert proxy.get("/robots.txt", host="rb.test").text == DEFAULT_ROBOTS
        assert rb.seen == []  # answered by gogeta, never forwarded


def test_robots_on_a_passivated_service_does_not_wake_it(
    proxy: GogetaProcess, etcd: EtcdServer, client: Any, sync: Barrier
) -> None:
    with named_backend("sleepy") as sleepy:
        base = write_instance(
            client, "sleepy", "1", sleepy.port, ("stopped", "passivated", None), robots="R"
        )
        write_domain(client, "sleepy.test", "service", "sleepy")
        sync(proxy)
        before = client.read(f"{base}/status/expected").modifiedIndex
        cas_before = store_stats(etcd) if etcd.api == "v2" else {}
        for _ in range(3):
            resp = proxy.get("/robots.txt", host="sleepy.test")
            assert (resp.status, resp.text) == (200, "R")
        sync(proxy, writer=True)  # anything gogeta queued by now has been written
        expected = client.read(f"{base}/status/expected")
        assert (expected.value, expected.modifiedIndex) == ("passivated", before)
        if cas_before:  # v2's store counts compare-and-swaps, failed ones too
            cas_after = store_stats(etcd)
            assert cas_after["compareAndSwapSuccess"] == cas_before["compareAndSwapSuccess"]
            assert cas_after["compareAndSwapFail"] == cas_before["compareAndSwapFail"]
        assert sleepy.seen == []


def test_robots_on_a_uri_domain_is_forwarded(
    proxy: GogetaProcess, client: Any, sync: Barrier
) -> None:
    with echo_backend() as echo:
        write_domain(client, "urirobots.test", "uri", echo.url)
        sync(proxy)
        assert proxy.get("/robots.txt", host="urirobots.test").text == "GET /robots.txt"


# --------------------------------------------------------------------------- Env resolver


def test_env_resolver_routes_by_first_label(
    gogeta: Any, etcd: EtcdServer, client: Any, templates: Path
) -> None:
    env = gogeta(*etcd.flags, "-resolverType", "Env", "-templateDir", str(templates))
    with named_backend("envsvc") as backend:
        write_instance(client, "envsvc", "1", backend.port)
        write_instance(client, "envoff", "1", backend.port, ("stopped", "stopped", None))
        write_domain(client, "ignored.test", "service", "envsvc")  # domains play no part
        assert answer_with(env, "envsvc.example.com", 200).text == "envsvc"
        assert env.get(host="www.envsvc.example.com").text == "envsvc"
        # envoff's keys come after envsvc's in the watch, one at a time (current, then
        # expected: "error" between the two): wait for the last of them.
        wait_until(
            lambda: page_of(env.get(host="envoff.example.com")) == "stopped",
            what="envoff's status applied",
        )
        assert page_of(env.get(host="nothing.example.com")) == "notfound"
        assert page_of(env.get(host="ignored.test")) == "notfound"
        robots = env.get("/robots.txt", host="envsvc.example.com")
        assert (robots.status, robots.text) == (200, DEFAULT_ROBOTS)
    assert env.log().count("Traceback") == 0


def test_key_writes_reads_every_write_from_etcd_history(client: Any) -> None:
    # The helper the wake-up and lastAccess tests count writes with.
    since = etcd_index(client) + 1
    for value in ("a", "b", "c"):
        client.write("/services/history/1/lastAccess", value)
    assert [w.value for w in key_writes(client, "/services/history/1/lastAccess", since)] == [
        "a",
        "b",
        "c",
    ]
