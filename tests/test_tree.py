"""The etcd mirrors without etcd: loads and events as etcd sends them, applied one by one."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from resolvers.base import Status
from resolvers.nodes import PAUSE_EVERY, Node
from resolvers.tree import DomainTree, ServiceTree

LOC1 = '{"host": "10.0.0.1", "port": 8001}'
LOC2 = '{"host": "10.0.0.2", "port": 8002}'


def key(path: str, value: str | None = None) -> Node:
    return Node(path, value, dir=False)


def folder(path: str) -> Node:
    return Node(path, None, dir=True)


def service_tree(*nodes: Node) -> ServiceTree:
    tree = ServiceTree("/services")
    tree.load(list(nodes))
    return tree


def statuses(tree: ServiceTree, name: str) -> dict[str, Status]:
    return {i.index: i.status for i in tree.services[name].instances}


def test_domain_routable_once_type_and_value_exist() -> None:
    tree = DomainTree("/domains")
    tree.load([])
    assert tree.apply(key("/domains/Shop.COM/type", "service"), "set") is False
    assert "shop.com" not in tree.domains
    assert tree.apply(key("/domains/Shop.COM/value", "shop"), "set") is True
    assert tree.domains["shop.com"].value == "shop"
    tree.apply(key("/domains/shop.com/value", "other"), "set")
    assert tree.domains["shop.com"].value == "other"
    tree.apply(key("/domains/shop.com/value"), "delete")
    assert "shop.com" not in tree.domains


def test_domain_directory_deleted_or_expired() -> None:
    tree = DomainTree("/domains")
    tree.load(
        [
            folder("/domains"),
            folder("/domains/a.com"),
            key("/domains/a.com/type", "uri"),
            key("/domains/a.com/value", "http://10.0.0.9:81/x"),
            key("/domains/b.com/type", "service"),
            key("/domains/b.com/value", "b"),
        ]
    )
    assert set(tree.domains) == {"a.com", "b.com"}
    assert tree.domains["a.com"].upstream is not None
    tree.apply(folder("/domains/a.com"), "expire")
    assert set(tree.domains) == {"b.com"}
    tree.apply(folder("/domains"), "delete")
    assert tree.domains == {}


def test_events_outside_the_prefix_are_ignored() -> None:
    tree = DomainTree("/domains")
    tree.load([])
    assert tree.apply(key("/domainsX/a.com/type", "service"), "set") is False
    assert tree.apply(key("/other/a.com/type", "service"), "set") is False
    assert tree.domains == {}


def test_bad_domain_values_are_logged_once_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    tree = DomainTree("/domains")
    tree.load([key("/domains/ok.com/type", "service"), key("/domains/ok.com/value", "ok")])
    with caplog.at_level(logging.WARNING):
        tree.apply(key("/domains/bad.com/type", "teleport"), "set")
        tree.apply(key("/domains/bad.com/value", "x"), "set")
        tree.load(
            [
                key("/domains/ok.com/type", "service"),
                key("/domains/ok.com/value", "ok"),
                key("/domains/bad.com/type", "teleport"),
                key("/domains/bad.com/value", "x"),
            ]
        )
    lines = [r.getMessage() for r in caplog.records if "bad.com" in r.getMessage()]
    assert len(lines) == 1 and "teleport" in lines[0]
    assert set(tree.domains) == {"ok.com"}


def test_load_builds_services_and_instances() -> None:
    tree = service_tree(
        folder("/services/a"),
        folder("/services/a/1"),
        key("/services/a/1/location", LOC1),
        folder("/services/a/2"),
        key("/services/a/2/location", LOC2),
        folder("/services/a/2/status"),
        key("/services/a/2/status/current", "stopped"),
        key("/services/a/2/status/expected", "passivated"),
        folder("/services/empty"),
    )
    assert statuses(tree, "a") == {"1": Status.STARTED, "2": Status.PASSIVATED}
    assert tree.services["empty"].instances == ()


def test_status_keys_update_one_instance() -> None:
    tree = service_tree(key("/services/a/1/location", LOC1), key("/services/a/2/location", LOC2))
    before = tree.services["a"].instances[1]
    tree.apply(key("/services/a/1/status/current", "started"), "set")
    assert statuses(tree, "a")["1"] is Status.ERROR  # a status dir now exists, no alive
    tree.apply(key("/services/a/1/status/expected", "started"), "set")
    tree.apply(key("/services/a/1/status/alive", "1"), "set")
    assert statuses(tree, "a")["1"] is Status.STARTED
    tree.apply(key("/services/a/1/status/alive"), "expire")  # TTL heartbeat ran out
    assert statuses(tree, "a")["1"] is Status.ERROR
    tree.apply(folder("/services/a/1/status"), "delete")
    assert statuses(tree, "a")["1"] is Status.STARTED
    # the other instance was not rebuilt
    assert tree.services["a"].instances[1] is before


def test_location_change_and_removal() -> None:
    tree = service_tree(key("/services/a/1/location", LOC1))
    upstream = tree.services["a"].instances[0].upstream
    assert upstream is not None and upstream.port == 8001
    tree.apply(key("/services/a/1/location", LOC2), "set")
    upstream = tree.services["a"].instances[0].upstream
    assert upstream is not None and upstream.port == 8002
    tree.apply(key("/services/a/1/location"), "delete")
    assert tree.services["a"].instances[0].upstream is None


def test_deleting_an_instance_or_a_service() -> None:
    tree = service_tree(key("/services/a/1/location", LOC1), key("/services/a/2/location", LOC2))
    tree.apply(folder("/services/a/1"), "delete")
    assert [i.index for i in tree.services["a"].instances] == ["2"]
    tree.apply(key("/services/a/3/location", LOC1), "create")
    assert [i.index for i in tree.services["a"].instances] == ["2", "3"]
    tree.apply(folder("/services/a"), "delete")
    assert "a" not in tree.services
    tree.apply(key("/services/b/1/location", LOC1), "set")
    tree.apply(folder("/services"), "delete")
    assert tree.services == {}


def test_last_access_writes_cause_no_rebuild() -> None:
    tree = service_tree(key("/services/a/1/location", LOC1))
    service = tree.services["a"]
    assert tree.apply(key("/services/a/1/lastAccess", "2026-01-01 00:00:00"), "set") is False
    assert tree.services["a"] is service


def test_robots_from_config() -> None:
    tree = service_tree(key("/services/a/1/location", LOC1))
    assert tree.services["a"].robots is None
    tree.apply(key("/services/a/1/config/gogeta", '{"robots": "User-agent: *"}'), "set")
    assert tree.services["a"].robots == "User-agent: *"
    tree.apply(folder("/services/a/1/config"), "delete")
    assert tree.services["a"].robots is None


def test_bad_instance_values_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        tree = service_tree(
            key("/services/a/1/location", "{not json"),
            key("/services/a/2/location", LOC2),
            key("/services/a/3/location", '{"host": "h", "port": "80"}'),
            key("/services/a/location", LOC1),  # an instance level key: wrong shape
            key("/services/a/2/config/gogeta", "[]"),
        )
    assert [i.index for i in tree.services["a"].instances if i.upstream] == ["2"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    for path in (
        "/services/a/1/location",
        "/services/a/3/location",
        "/services/a/location",
        "/services/a/2/config/gogeta",
    ):
        assert path in logged


# --------------------------------------------------------------------------- keys only (v3)


def flat_services(*nodes: Node) -> ServiceTree:
    tree = ServiceTree("/services", implicit_dirs=True)
    tree.load(list(nodes))
    return tree


def test_without_directories_an_instance_goes_with_its_last_key() -> None:
    tree = flat_services(
        key("/services/a/1/location", LOC1),
        key("/services/a/1/lastAccess", "2026-01-01 00:00:00"),
        key("/services/a/2/location", LOC2),
    )
    assert [i.index for i in tree.services["a"].instances] == ["1", "2"]
    assert tree.apply(key("/services/a/1/location"), "delete") is True
    assert tree.services["a"].instances[0].upstream is None  # one key left: still there
    assert tree.apply(key("/services/a/1/lastAccess"), "delete") is True
    assert [i.index for i in tree.services["a"].instances] == ["2"]
    assert tree.apply(key("/services/a/1/lastAccess"), "delete") is False  # already gone
    tree.apply(key("/services/a/2/location"), "delete")
    assert "a" not in tree.services  # the service went with its last instance
    tree.apply(key("/services/a/2/location", LOC2), "set")
    assert [i.index for i in tree.services["a"].instances] == ["2"]


def test_without_directories_the_status_directory_is_its_keys() -> None:
    tree = flat_services(
        key("/services/a/1/location", LOC1),
        key("/services/a/1/status/current", "started"),
        key("/services/a/1/status/expected", "started"),
        key("/services/a/1/status/alive", "1"),
    )
    assert statuses(tree, "a")["1"] is Status.STARTED
    tree.apply(key("/services/a/1/status/alive"), "delete")  # a lease ran out
    assert statuses(tree, "a")["1"] is Status.ERROR
    tree.apply(key("/services/a/1/status/current"), "delete")
    assert statuses(tree, "a")["1"] is Status.ERROR  # status/expected is left
    tree.apply(key("/services/a/1/status/expected"), "delete")
    assert statuses(tree, "a")["1"] is Status.STARTED  # no status keys: no status directory
    tree.apply(key("/services/a/1/status/other", "x"), "set")
    assert statuses(tree, "a")["1"] is Status.ERROR  # a status directory without current
    loaded = flat_services(key("/services/b/1/location", LOC1), key("/services/b/1/status/x", "y"))
    assert statuses(loaded, "b")["1"] is Status.ERROR


def test_without_directories_last_access_alone_causes_no_rebuild() -> None:
    tree = flat_services(key("/services/a/1/location", LOC1))
    service = tree.services["a"]
    assert tree.apply(key("/services/a/1/lastAccess", "2026-01-01 00:00:00"), "set") is False
    assert tree.services["a"] is service
    tree.apply(key("/services/a/1/location"), "delete")
    assert tree.services["a"].instances[0].upstream is None  # lastAccess keeps it


def test_with_directories_an_instance_outlives_its_keys() -> None:
    # v2: the directory is there until it is deleted itself.
    tree = service_tree(folder("/services/a/1"), key("/services/a/1/location", LOC1))
    tree.apply(key("/services/a/1/location"), "delete")
    assert [i.index for i in tree.services["a"].instances] == ["1"]


def test_without_directories_a_domain_goes_with_its_last_key() -> None:
    tree = DomainTree("/domains", implicit_dirs=True)
    tree.load([key("/domains/a.com/type", "service"), key("/domains/a.com/value", "a")])
    assert set(tree.domains) == {"a.com"}
    tree.apply(key("/domains/a.com/type"), "delete")
    assert tree.domains == {}
    tree.apply(key("/domains/a.com/value"), "delete")
    assert tree._raw == {}  # nothing kept of it


def test_a_load_pauses_all_along_and_readers_see_the_old_table_until_its_end() -> None:
    """A reload at 100,000 domains is seconds of work: the watcher lets requests run at
    each pause, and they must find the previous table whole, never a half-built one."""
    services = ServiceTree("/services")
    services.load([key("/services/old/1/location", LOC1)])
    domains = DomainTree("/domains")
    domains.load([key("/domains/old.test/type", "service"), key("/domains/old.test/value", "old")])
    count = 3000
    fields = (("type", "service"), ("value", "s1"))
    seen_services: list[set[str]] = []
    seen_domains: list[set[str]] = []

    services.load(
        [key(f"/services/s{i}/1/location", LOC1) for i in range(count)],
        lambda: seen_services.append(set(services.services)),
    )
    domains.load(
        [key(f"/domains/d{i}.test/{f}", v) for i in range(count) for f, v in fields],
        lambda: seen_domains.append(set(domains.domains)),
    )
    # Both passes of each load (the keys, then what is built from them) pause.
    assert len(seen_services) >= 2 * count // 256
    assert len(seen_domains) >= 2 * count // 256
    # Until the swap the old table, whole; after it (while the old one is freed) the new.
    new_services, new_domains = set(services.services), set(domains.domains)
    assert all(seen in ({"old"}, new_services) for seen in seen_services)
    assert all(seen in ({"old.test"}, new_domains) for seen in seen_domains)
    assert seen_services[0] == {"old"} and seen_domains[0] == {"old.test"}
    assert len(services.services) == count and len(domains.domains) == count


def test_a_reload_frees_the_old_table_a_piece_at_a_time_unless_still_held() -> None:
    """Freed at once, the old table of 100,000 domains held the loop ~60 ms (`/services`)
    and ~18 ms (`/domains`) at the end of every reload. It goes a few entries at a time,
    with pauses for requests between; a dict someone still holds (a listing paused half
    way through it) is left whole, for them to drop."""
    count = 3000
    services, domains = ServiceTree("/services"), DomainTree("/domains")

    def load(generation: str, pause: Callable[[], None] = lambda: None) -> None:
        services.load(
            [key(f"/services/{generation}{i}/1/location", LOC1) for i in range(count)], pause
        )
        domains.load(
            [
                key(f"/domains/{generation}{i}.test/{f}", v)
                for i in range(count)
                for f, v in (("type", "service"), ("value", "x"))
            ],
            pause,
        )

    load("a")
    after_swap: list[bool] = []
    load("b", lambda: after_swap.append("b0" in services.services or "b0.test" in domains.domains))
    # The old raw entries and routing entries of both trees, PAUSE_EVERY at a time.
    assert sum(after_swap) >= 4 * count // PAUSE_EVERY - 4
    held_services, held_domains = services.services, domains.domains
    load("c")
    assert len(held_services) == count and "b0" in held_services
    assert len(held_domains) == count and "b0.test" in held_domains
