"""Bookkeeping kept per service and instance shrinks when they leave the table."""

from __future__ import annotations

import time

import settings
from resolvers import make_resolver
from resolvers.nodes import Node
from resolvers.table import TableResolver

LOC = '{"host": "10.0.0.1", "port": 8001}'


def resolver_with(*names: str) -> TableResolver:
    config = settings.parse(["-lastAccessInterval", "100", "-ejectSeconds", "0.000001"], environ={})
    resolver = make_resolver(config)  # never started: no etcd involved
    assert isinstance(resolver, TableResolver)
    resolver.services.load([Node(f"/services/{n}/1/location", LOC) for n in names])
    domains = []
    for n in names:
        domains += [Node(f"/domains/{n}.test/type", "service"), Node(f"/domains/{n}.test/value", n)]
    resolver.domains.load(domains)
    return resolver


def test_sweep_forgets_what_left_the_table() -> None:
    resolver = resolver_with("a", "b")
    upstream = resolver.resolve("a.test")
    resolver.resolve("b.test")
    resolver.failed(upstream)
    assert set(resolver._positions) == {"a", "b"}
    assert set(resolver.writer.last_touch) == {("a", "1"), ("b", "1")}

    resolver.services.apply(Node("/services/a", dir=True), "delete")
    resolver.sweep()

    assert set(resolver._positions) == {"b"}
    assert set(resolver.writer.last_touch) == {("b", "1")}
    assert not resolver.ejections  # its deadline has passed: pruned
    # what is still in the table keeps routing
    assert resolver.resolve("b.test").service == "b"


def test_a_sweep_gives_turns_and_keeps_what_was_touched_meanwhile() -> None:
    names = [f"s{i}" for i in range(1000)]
    resolver = resolver_with(*names)
    for name in names:
        resolver.resolve(f"{name}.test")
    for key in resolver.writer.last_touch:
        resolver.writer.last_touch[key] = 0.0  # every lastAccess time past due
    pauses: list[int] = []

    def pause() -> None:
        if not pauses:  # a request during the first turn uses s999 again
            resolver.writer.last_touch[("s999", "1")] = time.monotonic()
        pauses.append(1)

    resolver.sweep(pause)
    assert len(pauses) >= 2 * (len(names) // 256)  # the positions, then the lastAccess times
    assert set(resolver.writer.last_touch) == {("s999", "1")}
    assert set(resolver._positions) == set(names)  # all still in the table


def test_writes_waiting_for_etcd_are_not_for_the_collector_to_walk() -> None:
    """Traffic over every domain queues thousands of lastAccess writes (one at a time goes
    to etcd): each waiting write is names and a time, which the cyclic collector stops
    tracking, not a reference to the instance it walks at every full collection."""
    import gc

    names = [f"s{i}" for i in range(2000)]
    resolver = resolver_with(*names)
    gc.collect()
    before = len(gc.get_objects())
    for name in names:
        resolver.resolve(f"{name}.test")  # never started: every write waits
    assert len(resolver.writer.waiting) == len(names)
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert grown < len(names) / 4, f"{grown} objects for {len(names)} queued writes"
