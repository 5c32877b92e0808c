"""Routing from a real etcd (docs/behaviour.md §1–§5): keys written, changed and deleted.

Domains and instances that appear, change, expire and go while gogeta runs, and invalid
values (skipped, logged once), against etcd's v2 API and its v3 API, a gogeta process per
API (tests/etcd_routing_fixtures.py); each test waits on a `Barrier` after its writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.etcd_routes import (
    Barrier,
    answer_with,
    echo_backend,
    location,
    log_count,
    named_backend,
    named_backends,
    page_of,
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
from tests.support import EtcdServer, GogetaProcess

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
