"""The pure parts of the live view: why an instance is not routable, pages of domains
(resolvers/listing.py), and the last minute of traffic (proxy/traffic.py), without sockets."""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass

import pytest

from proxy.traffic import BOUNDS, MAX_KEYS, Traffic
from resolvers.listing import (
    CHUNK,
    MAX_DIRTY,
    MAX_PER_PAGE,
    NameIndex,
    instance_view,
    page_of,
    sorted_in_chunks,
    unroutable_reasons,
    without_credentials,
)
from resolvers.model import Location, make_instance


@dataclass
class Raw:
    status_dir: bool = False
    current: str | None = None
    expected: str | None = None
    alive: str | None = None
    location_error: str | None = None
    last_access: str | None = None


HERE = Location("127.0.0.1", 8080)
NOT_JSON = "location is not JSON"
NOT_ALIVE = "not alive: status/alive is missing or empty"
ASLEEP = "passivated: asleep until a visitor wakes it"


def error(current: str, expected: str) -> str:
    return f"error: status/current {current} with status/expected {expected}"


@pytest.mark.parametrize(
    ("location", "raw", "reasons"),
    [
        (HERE, Raw(), []),
        (None, Raw(), ["no location"]),
        (None, Raw(location_error=NOT_JSON), [f"invalid location: {NOT_JSON}"]),
        (HERE, Raw(True, "started", "started", None), [NOT_ALIVE]),
        (HERE, Raw(True, "started", "stopped", "1"), [error("started", "stopped")]),
        (HERE, Raw(True, "passivated", None, "1"), [error("passivated", "missing")]),
        (HERE, Raw(True, "starting", "started"), ["starting"]),
        (HERE, Raw(True, "stopped", "passivated"), [ASLEEP]),
        (HERE, Raw(True, "stopped", "stopped"), ["stopped"]),
        (None, Raw(True, "stopped", "stopped"), ["no location", "stopped"]),
    ],
)  # fmt: skip
def test_each_reason_an_instance_takes_no_traffic(
    location: Location | None, raw: Raw, reasons: list[str]
) -> None:
    instance = make_instance(
        "shop", "1", location, raw.status_dir, raw.current, raw.expected, raw.alive, None
    )
    assert unroutable_reasons(instance, raw, None) == reasons
    view = instance_view(instance, raw, None)
    assert view["routable"] is (not reasons)
    assert view["reasons"] == reasons


def test_an_ejected_instance_is_not_routable_and_says_until_when() -> None:
    instance = make_instance("shop", "1", HERE, False, None, None, None, None)
    raw = Raw(last_access="2026-01-02 03:04:05")
    view = instance_view(instance, raw, 1234.5)
    assert view["routable"] is False
    assert view["ejected_until"] == 1234.5
    assert view["reasons"][0].startswith("ejected")
    assert view["last_access"] == "2026-01-02 03:04:05"
    # The keys `routes` always had are still there, unchanged.
    assert view["index"] == "1" and view["status"] == "started"
    assert view["location"] == {"host": "127.0.0.1", "port": 8080}


def test_sorting_in_chunks_pauses_and_sorts_like_sorted() -> None:
    names = [f"d{random.randrange(10**9)}.example.com" for _ in range(3 * CHUNK + 17)]
    pauses: list[int] = []
    assert sorted_in_chunks(names, lambda: pauses.append(1)) == sorted(names)
    assert len(pauses) >= 4  # between the runs, and while merging them


def test_the_index_follows_additions_and_deletions_without_sorting_again() -> None:
    present = {f"h{i:03}.test": None for i in range(0, 100, 2)}
    index = NameIndex()
    assert list(index.ordered(present)) == sorted(present)
    sorts: list[int] = []
    present["h001.test"] = None
    index.touched("h001.test")
    del present["h050.test"]
    index.touched("h050.test")
    index.touched("h098.test")  # changed in place: stays where it is
    assert list(index.ordered(present, lambda: sorts.append(1))) == sorted(present)
    assert not sorts
    # A reload sorts again; a change nobody was told about is noticed by the count.
    present = {"b.test": None, "a.test": None}
    index.invalidate()
    assert list(index.ordered(present)) == ["a.test", "b.test"]
    present["c.test"] = None
    assert list(index.ordered(present)) == ["a.test", "b.test", "c.test"]


def test_too_many_changes_at_once_sort_again() -> None:
    present = {f"h{i}.test": None for i in range(10)}
    index = NameIndex()
    index.ordered(present)
    for i in range(MAX_DIRTY + 5):
        present[f"n{i}.test"] = None
        index.touched(f"n{i}.test")
    assert list(index.ordered(present)) == sorted(present)


def test_a_page_holds_only_its_names_and_counts_every_match() -> None:
    names = sorted(f"{kind}{i:05}.example.com" for kind in ("shop", "blog") for i in range(12_000))
    pauses: list[int] = []
    page = page_of(names, " SHOP ", 3, 50, lambda: pauses.append(1))
    assert page.total == 12_000 and page.pages == 240
    assert page.names == [f"shop{i:05}.example.com" for i in range(100, 150)]
    assert page.query == "shop"
    assert pauses  # 24,000 names are read in chunks
    assert page.summary() == {
        "query": "shop",
        "number": 3,
        "per_page": 50,
        "total": 12_000,
        "pages": 240,
    }
    one = page_of(names, "shop00042.", 1, 200)
    assert one.names == ["shop00042.example.com"] and one.total == 1
    # Out of range: clamped, and never more than MAX_PER_PAGE a page.
    assert page_of(names, "", 10**9, 10**9).number == -(-len(names) // MAX_PER_PAGE)
    assert len(page_of(names, "", 1, 10**9).names) == MAX_PER_PAGE
    assert page_of(names, "", -5, 0).number == 1
    nothing = page_of(names, "nowhere", 2, 10)
    assert (nothing.names, nothing.total, nothing.number, nothing.pages) == ([], 0, 1, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_traffic_counts_the_last_minute_only() -> None:
    clock = Clock()
    traffic = Traffic(clock)
    for status in (200, 200, 404, 502):
        traffic.count(status, "shop.test", "shop/1", 0.010)
    traffic.count(200, None, None, None)  # a host gogeta does not serve: totals only
    clock.now += 30
    traffic.count(503, "shop.test", "shop/2", 0.200, failed=["shop/1"])
    totals = traffic.totals()
    assert totals["requests"] == 6 and totals["4xx"] == 1 and totals["5xx"] == 2
    assert totals["window_seconds"] == 30
    assert totals["requests_per_second"] == 0.2
    assert sum(totals["per_second"]) == 6 and totals["per_second"][-1] == 1
    found = traffic.of(["shop.test", "other.test"], ["shop/1", "shop/2"])
    shop = found["domains"]["shop.test"]
    assert (shop.requests, shop.errors) == (5, 2)
    assert "other.test" not in found["domains"]
    one = found["upstreams"]["shop/1"]
    assert (one.requests, one.errors) == (5, 2)  # the failed exchange counts there
    assert found["upstreams"]["shop/2"].summary()["p99_ms"] >= 200
    clock.now += 31  # the first second is now more than a minute old
    assert traffic.totals()["requests"] == 1
    clock.now += 60
    assert traffic.totals()["requests"] == 0
    assert traffic.of(["shop.test"], [])["domains"] == {}


def test_traffic_percentiles_are_within_a_bucket() -> None:
    traffic = Traffic(Clock())
    for ms in range(1, 101):
        traffic.count(200, "a.test", "a/1", ms / 1000)
    totals = traffic.totals()
    assert 50 <= totals["upstream_p50_ms"] <= 50 * 1.2
    assert 99 <= totals["upstream_p99_ms"] <= 99 * 1.2
    assert BOUNDS[-1] > 60  # a read timeout's worth still has a bucket


def test_traffic_keeps_a_bounded_number_of_keys_per_second() -> None:
    traffic = Traffic(Clock())
    for i in range(MAX_KEYS + 50):
        traffic.count(200, f"d{i}.test", f"s/{i}", 0.001)
    found = traffic.of([f"d{i}.test" for i in range(MAX_KEYS + 50)], [])
    assert len(found["domains"]) == MAX_KEYS
    assert traffic.totals()["requests"] == MAX_KEYS + 50


def test_traffic_by_key_leaves_nothing_for_the_cyclic_collector() -> None:
    """A minute of tallies by domain and upstream is long-lived: were each key an object
    the collector tracks, every full collection would walk tens of thousands of them."""
    clock = Clock()
    traffic = Traffic(clock)
    traffic.count(200, "warm.test", "warm/1", 0.001)  # the second's own objects made
    gc.collect()
    before = len(gc.get_objects())
    held_before = _held_by_tracked_dicts()
    for _ in range(3):
        clock.now += 1
        for i in range(MAX_KEYS):
            status = (200, 404, 502)[i % 3]
            traffic.count(status, f"d{i}.test", f"s/{i}", 0.001 * (i % 50), failed=[f"f/{i}"])
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert grown < 100, f"{grown} more objects tracked after {3 * MAX_KEYS * 3} tallies"
    # Nor held by a tracked dict: every full collection visits each of its entries.
    held = _held_by_tracked_dicts() - held_before
    assert held < 1000, f"{held} more entries in tracked dicts after {3 * MAX_KEYS} keys"
    [tally] = traffic.of(["d7.test"], [])["domains"].values()
    assert (tally.requests, tally.c4xx, tally.c5xx, tally.errors) == (3, 3, 0, 0)
    failed = traffic.of([], ["f/8", "s/8"])["upstreams"]
    assert (failed["f/8"].requests, failed["f/8"].errors, failed["f/8"].c5xx) == (3, 3, 0)
    assert (failed["s/8"].c5xx, failed["s/8"].errors) == (3, 3)


def test_connections_and_tunnels_are_counted_both_ways() -> None:
    traffic = Traffic(Clock())
    traffic.count_connection(1)
    traffic.count_connection(1)
    traffic.count_connection(-1)
    traffic.count_tunnel(1)
    totals = traffic.totals()
    assert (totals["open_connections"], totals["open_tunnels"]) == (1, 1)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://10.0.0.2:2379", "http://10.0.0.2:2379"),
        ("https://user:secret@etcd.example:2379/", "https://etcd.example:2379/"),
        ("http://a@b@etcd:2379", "http://etcd:2379"),
        (None, None),
    ],
)
def test_an_endpoint_is_shown_without_credentials(url: str | None, shown: str | None) -> None:
    assert without_credentials(url) == shown


def _held_by_tracked_dicts() -> int:
    return sum(len(o) for o in gc.get_objects() if type(o) is dict)
