"""Routing from a real etcd (docs/behaviour.md §1–§5): a gogeta process per API, real backends.

Every test runs against etcd's v2 API and against its v3 API (an etcd without v2). Each
uses its own domain and service names, writes its keys with python-etcd (or its v3 twin) and
waits on a `Barrier` (gogeta has applied every earlier key), then asserts on the answers.
Status pages are marker templates (`page=NAME`), so a test knows which page answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_routes import (
    Barrier,
    answer_with,
    echo_backend,
    etcd_index,
    key_writes,
    location,
    log_count,
    marker_templates,
    named_backend,
    named_backends,
    page_of,
    store_stats,
    write_domain,
    write_instance,
)
from tests.support import Backend, EtcdServer, GogetaProcess, wait_until

DEFAULT_ROBOTS = "User-agent: *\nDisallow: /\n"


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return marker_templates(tmp_path_factory.mktemp("routing"))


@pytest.fixture(scope="module", params=["v2", "v3"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def proxy(etcd_server: EtcdServer, templates: Path) -> Iterator[GogetaProcess]:
    proc = GogetaProcess([*etcd_server.flags, "-templateDir", str(templates)])
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def ok_backend() -> Iterator[Backend]:
    with named_backend("ok") as backend:
        yield backend


@pytest.fixture
def sync(etcd: EtcdServer, ok_backend: Backend) -> Barrier:
    return Barrier(etcd.client(), ok_backend)


@pytest.fixture
def client(etcd: EtcdServer) -> Any:
    return etcd.client()


def answers(proxy: GogetaProcess, host: str, count: int, path: str = "/") -> list[str]:
    return [page_of(proxy.get(path, host=host)) for _ in range(count)]


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


# --------------------------------------------------------------------------- domains


def test_domain_written_in_etcd_becomes_routable(proxy: GogetaProcess, client: Any) -> None:
    # Propagation: nothing but the watch between the write and the route (docs/behaviour.md §5.4).
    with named_backend("fresh") as fresh:
        assert proxy.get(host="fresh.test").status == 404
        write_instance(client, "fresh", "1", fresh.port)
        write_domain(client, "fresh.test", "service", "fresh")
        assert answer_with(proxy, "fresh.test", 200, timeout=5).text == "fresh"


def test_domain_is_routable_only_once_type_and_value_exist(
    proxy: GogetaProcess, client: Any, sync: Barrier
) -> None:
    with named_backend("half") as half:
        write_instance(client, "half", "1", half.port)
        client.write("/domains/half.test/value", "half")
        sync(proxy)
        assert proxy.get(host="half.test").status == 404
        client.write("/domains/half.test/type", "service")
        sync(proxy)
        assert proxy.get(host="half.test").text == "half"


def test_uri_domain_joins_path_and_query(proxy: GogetaProcess, client: Any, sync: Barrier) -> None:
    with echo_backend() as echo:
        write_domain(client, "uri.test", "uri", f"{echo.url}/base?x=1")
        write_domain(client, "slash.test", "uri", f"{echo.url}/base/")
        write_domain(client, "bare.test", "uri", echo.url)
        sync(proxy)
        assert proxy.get("/p/q?y=2", host="uri.test").text == "GET /base/p/q?x=1&y=2"
        assert proxy.get("/p", host="uri.test").text == "GET /base/p?x=1"
        assert proxy.get("/p?y=2", host="slash.test").text == "GET /base/p?y=2"
        assert proxy.get("/p?y=2", host="bare.test").text == "GET /p?y=2"


def test_domain_type_and_value_changes(proxy: GogetaProcess, client: Any, sync: Barrier) -> None:
    with named_backends("one", "two") as backends, echo_backend() as echo:
        write_instance(client, "one", "1", backends["one"].port)
        write_instance(client, "two", "1", backends["two"].port)
        write_domain(client, "change.test", "service", "one")
        sync(proxy)
        assert proxy.get(host="change.test").text == "one"

        client.write("/domains/change.test/value", "two")  # another service
        sync(proxy)
        assert proxy.get(host="change.test").text == "two"

        write_domain(client, "change.test", "uri", f"{echo.url}/u")  # service → uri
        sync(proxy)
        assert proxy.get("/x", host="change.test").text == "GET /u/x"

        client.write("/domains/change.test/value", f"{echo.url}/v")  # another uri
        sync(proxy)
        assert proxy.get("/x", host="change.test").text == "GET /v/x"

        write_domain(client, "change.test", "service", "one")  # uri → service
        sync(proxy)
        assert proxy.get(host="change.test").text == "one"

        client.delete("/domains/change.test/type")  # a domain needs both keys
        sync(proxy)
        assert proxy.get(host="change.test").status == 404

        client.write("/domains/change.test/type", "service")
        sync(proxy)
        assert proxy.get(host="change.test").text == "one"


def test_deleting_a_domain_directory(proxy: GogetaProcess, client: Any, sync: Barrier) -> None:
    with named_backend("gone") as gone:
        write_instance(client, "gone", "1", gone.port)
        write_domain(client, "gone.test", "service", "gone")
        write_domain(client, "stays.test", "service", "gone")
        sync(proxy)
        assert proxy.get(host="gone.test").text == "gone"
        client.delete("/domains/gone.test", recursive=True, dir=True)
        sync(proxy)
        assert proxy.get(host="gone.test").status == 404
        assert proxy.get(host="stays.test").text == "gone"


# --------------------------------------------------------------------------- instances


def test_location_change(proxy: GogetaProcess, client: Any, sync: Barrier) -> None:
    with named_backends("old", "new") as backends:
        write_instance(client, "moving", "1", backends["old"].port)
        write_domain(client, "moving.test", "service", "moving")
        sync(proxy)
        assert proxy.get(host="moving.test").text == "old"
        client.write("/services/moving/1/location", location(backends["new"].port))
        sync(proxy)
        assert answers(proxy, "moving.test", 3) == ["backend:new"] * 3


def test_status_changes(proxy: GogetaProcess, client: Any, sync: Barrier) -> None:
    with named_backend("st") as st:
        base = write_instance(client, "st", "1", st.port, ("starting", "started", None))
        write_domain(client, "st.test", "service", "st")
        sync(proxy)
        assert page_of(proxy.get(host="st.test")) == "starting"

        client.write(f"{base}/status/current", "started")
        client.write(f"{base}/status/alive", "1")
        sync(proxy)
        assert page_of(proxy.get(host="st.test")) == "backend:st"

        client.write(f"{base}/status/expected", "stopped")
        client.write(f"{base}/status/current", "stopping")
        sync(proxy)
        assert page_of(proxy.get(host="st.test")) == "stopped"

        client.delete(f"{base}/status", recursive=True, dir=True)  # no status dir: started
        sync(proxy)
        assert page_of(proxy.get(host="st.test")) == "backend:st"


def test_alive_ttl_expiry_makes_the_instance_an_error(
    proxy: GogetaProcess, client: Any, sync: Barrier
) -> None:
    with named_backend("ttl") as ttl:
        base = write_instance(client, "ttl", "1", None, ("started", "started", None))
        client.write(f"{base}/status/alive", "1", ttl=1)
        client.write(f"{base}/location", location(ttl.port))
        write_domain(client, "ttl.test", "service", "ttl")
        sync(proxy)
        assert proxy.get(host="ttl.test").text == "ttl"
        assert page_of(answer_with(proxy, "ttl.test", 500)) == "error"


def test_directories_with_a_ttl_expire_out_of_routing(
    proxy: GogetaProcess, client: Any, sync: Barrier, api: str
) -> None:
    if api == "v3":
        pytest.skip("v3 has no directories (a lease expires keys: the alive test)")
    with named_backends("lasting", "brief") as backends:
        write_instance(client, "ttldir", "1", backends["lasting"].port)
        client.write("/services/ttldir/2", None, dir=True, ttl=1)
        client.write("/services/ttldir/2/location", location(backends["brief"].port))
        write_domain(client, "ttldir.test", "service", "ttldir")
        client.write("/domains/brief.test", None, dir=True, ttl=1)
        write_domain(client, "brief.test", "service", "ttldir")
        sync(proxy)
        assert set(answers(proxy, "ttldir.test", 2)) == {"backend:lasting", "backend:brief"}
        answer_with(proxy, "brief.test", 404)  # the domain directory expired
        sync(proxy)  # and the instance directory (same TTL) by now
        assert answers(proxy, "ttldir.test", 4) == ["backend:lasting"] * 4


def test_deleting_one_instance_takes_it_out_of_the_round_robin(
    proxy: GogetaProcess, client: Any, sync: Barrier
) -> None:
    with named_backends("keep", "drop") as backends:
        write_instance(client, "del", "1", backends["keep"].port)
        write_instance(client, "del", "2", backends["drop"].port)
        write_domain(client, "del.test", "service", "del")
        sync(proxy)
        assert set(answers(proxy, "del.test", 2)) == {"backend:keep", "backend:drop"}
        client.delete("/services/del/2", recursive=True, dir=True)
        sync(proxy)
        assert answers(proxy, "del.test", 4) == ["backend:keep"] * 4


def test_deleting_a_service_directory(proxy: GogetaProcess, client: Any, sync: Barrier) -> None:
    with named_backend("svc") as svc:
        write_instance(client, "svcdel", "1", svc.port)
        write_instance(client, "svcdel", "2", svc.port)
        write_domain(client, "svcdel.test", "service", "svcdel")
        sync(proxy)
        assert proxy.get(host="svcdel.test").text == "svc"
        client.delete("/services/svcdel", recursive=True, dir=True)
        sync(proxy, writer=True)  # the lastAccess of that request too
        assert page_of(proxy.get(host="svcdel.test")) == "notfound"
        write_instance(client, "svcdel", "1", svc.port)  # and it can come back
        sync(proxy)
        assert proxy.get(host="svcdel.test").text == "svc"


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


# --------------------------------------------------------------------------- invalid values


def test_invalid_values_are_logged_once_and_skipped(
    proxy: GogetaProcess, client: Any, sync: Barrier
) -> None:
    bad = {
        "/services/bad/1/location": '{"host": "127.0.0.1", "port": ',
        "/services/bad/2/location": '{"port": 8080}',
        "/services/bad/3/location": '{"host": "127.0.0.1", "port": "8080"}',
        "/services/bad/4/config/gogeta": "robots",
        "/services/flat/location": location(8080),  # a value where an instance dir belongs
    }
    with named_backend("good") as good:
        write_instance(client, "good", "1", good.port)
        write_domain(client, "good.test", "service", "good")
        sync(proxy)
        for key, value in bad.items():
            client.write(key, value)
        write_instance(client, "bad", "5", good.port)
        write_domain(client, "bad.test", "service", "bad")
        write_domain(client, "flat.test", "service", "flat")
        write_domain(client, "weird.test", "redirect", "somewhere")
        sync(proxy)
        for _ in range(3):
            assert proxy.get(host="good.test").text == "good"
            # Only instance 5 can serve; 4 (bad config, no location) is just not started.
            assert proxy.get(host="bad.test").text == "good"
            assert proxy.get("/robots.txt", host="bad.test").text == DEFAULT_ROBOTS
            assert proxy.get(host="flat.test").status == 404
            assert proxy.get(host="weird.test").status == 404
        # Events on the same instances do not log the same values again.
        client.write("/services/bad/1/domain", "bad.example.com")
        client.write("/services/bad/2/domain", "bad.example.com")
        client.write("/domains/weird.test/other", "x")
        sync(proxy)
    for key in bad:
        assert log_count(proxy, key) == 1, (key, proxy.log())
    assert log_count(proxy, "/domains/weird.test") == 1, proxy.log()


def test_invalid_values_present_at_start_are_logged_once(
    gogeta: Any, etcd: EtcdServer, client: Any, templates: Path
) -> None:
    bad = {
        "/services/early/1/location": "not json",
        "/services/early/2/location": '{"host": "", "port": 80}',
        "/services/earlyflat/location": location(8080),  # instance level
        "/services/earlyleaf": "x",  # service level
        "/domains/leaf.test": "x",  # domain level
    }
    with named_backend("early") as early:
        for key, value in bad.items():
            client.write(key, value)
        write_instance(client, "early", "3", early.port)
        write_domain(client, "early.test", "service", "early")
        write_domain(client, "earlyweird.test", "redirect", "x")
        started = gogeta(*etcd.flags, "-templateDir", str(templates))
        for _ in range(3):
            assert answer_with(started, "early.test", 200).text == "early"
        assert page_of(started.get(host="earlyweird.test")) == "notfound"
        assert page_of(started.get(host="leaf.test")) == "notfound"
    for key in bad:
        assert log_count(started, f"ignoring {key} ") == 1, (key, started.log())
    assert log_count(started, "ignoring /domains/earlyweird.test ") == 1, started.log()


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
