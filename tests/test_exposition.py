"""gogeta's writer of the Prometheus text format gives prometheus-client's bytes exactly."""

from __future__ import annotations

from collections.abc import Iterator

import prometheus_client.values
import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.values import MutexValue

from proxy.exposition import PIECE_LINES, Page, Registry, exposition
from proxy.metrics import LATENCY_BUCKETS, MAX_UPSTREAMS, Metrics
from proxy.values import LoopValue
from resolvers.base import Upstream


def ours(registry: CollectorRegistry) -> bytes:
    return b"".join(exposition(registry.collect()))


def direct(registry: Registry) -> bytes:
    return b"".join(Page(registry.order).pieces())


class Timestamped(Collector):
    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily("stamped", "With\\a timestamp\nand two lines", labels=["k"])
        family.add_metric(["v"], 1.5, timestamp=1700000000.25)
        return [family]


@pytest.mark.parametrize("created", [False, True])
def test_every_kind_of_family_and_awkward_values(created: bool) -> None:
    (enable_created_metrics if created else disable_created_metrics)()  # type: ignore[no-untyped-call]
    try:
        r = Registry()
        c = Counter("hits", "Hits, by path", ["path"], registry=r)
        for path, n in (("/", 3), ('/q"uote', 1), ("/back\\slash", 2), ("/new\nline", 1)):
            c.labels(path).inc(n)
        c.labels("/é").inc(0.1)
        g = Gauge("level", "A level", registry=r)
        g.set(-12.5)
        Gauge("big", "Large and odd numbers", ["n"], registry=r).labels("x").set(123456789.0)
        for label, number in (
            ("inf", float("inf")),
            ("-inf", float("-inf")),
            ("nan", float("nan")),
        ):
            Gauge(f"odd_{label.strip('-')}_{len(label)}", "odd", registry=r).set(number)
        odd = Gauge("odd_labelled", "Odd numbers, labelled", ["k"], registry=r)
        for label, number in (("nan", float("nan")), ("inf", float("inf")), ("neg", -2e6)):
            odd.labels(label).set(number)
        Gauge("tiny", "tiny", registry=r).set(1e-7)
        Gauge("exact_million", "1e6", registry=r).set(1e6)
        h = Histogram("wait_seconds", "Waits", ["service"], buckets=(0.001, 0.5, 2.5), registry=r)
        for v in (0.0005, 0.2, 3.0, 10.0):
            h.labels("a").observe(v)
        Summary("sizes", "Sizes", registry=r).observe(512)
        Info("build", "Build", registry=r).info({"version": "1.2", "commit": "abc"})
        e = Enum("state", "State", states=["up", "down"], registry=r)
        e.state("down")
        r.register(Timestamped())
        assert ours(r) == generate_latest(r)
        assert direct(r) == generate_latest(r)
    finally:
        disable_created_metrics()  # type: ignore[no-untyped-call]


def test_gogetas_own_page_at_its_label_bounds() -> None:
    metrics = Metrics()
    for i in range(MAX_UPSTREAMS + 10):
        upstream = Upstream("http", "127.0.0.1", 1000 + i, service=f"s{i // 2}", instance=str(i))
        for code in (200, 404, 502):
            metrics.count_upstream(upstream, code, 0.003 * (i % 7))
        metrics.count_failure(upstream, "reset")
    for i in range(300):
        metrics.count_request(200 + i % 4 * 100, f"d{i}.example.com", 10, 20)
    # process_* figures move between two readings: compare without them.
    families = [f for f in metrics.families() if not f.name.startswith("process_")]
    again = [f for f in metrics.families() if not f.name.startswith("process_")]

    class Fixed(Collector):
        def collect(self) -> list[Metric]:
            return again

    r = CollectorRegistry()
    r.register(Fixed())
    assert b"".join(exposition(families)) == generate_latest(r)

    # The page as scraped: the labelled families written from their children directly.
    def steady(page: bytes) -> list[bytes]:
        return [line for line in page.splitlines() if b"process_" not in line]

    first = list(metrics.pieces()[1])  # the first scrape: every child formatted anew
    direct = steady(b"".join(first))
    assert direct == steady(generate_latest(metrics.registry))
    assert len(direct) > 5000  # the bounds filled: every labelled family has its children
    # In pieces of about `PIECE_LINES` (a child's lines are never split), each a turn at most:
    # formatted all anew, 1,000 lines are ~10 ms of a loaded machine.
    sizes = [piece.count(b"\n") for piece in first]
    assert max(sizes) <= PIECE_LINES + len(LATENCY_BUCKETS) + 3, sizes
    assert len(sizes) > len(direct) / (PIECE_LINES + 20)
    assert steady(metrics.render()[1]) == direct  # nothing moved
    metrics.count_request(404, "d1.example.com")  # a value moved, a child added
    metrics.count_upstream(Upstream("http", "127.0.0.1", 1, service="s0", instance="0"), 200, 7)
    again_direct = steady(metrics.render()[1])
    assert again_direct != direct
    assert again_direct == steady(generate_latest(metrics.registry))


@pytest.fixture(params=[MutexValue, LoopValue])
def value_class(request: pytest.FixtureRequest) -> Iterator[type]:
    """Children made with the library's values or with gogeta's (which tell when they move)."""
    before = prometheus_client.values.ValueClass
    prometheus_client.values.ValueClass = request.param
    try:
        yield request.param
    finally:
        prometheus_client.values.ValueClass = before


def test_a_page_scraped_again_shows_what_moved_and_only_that(value_class: type) -> None:
    """One `Page` scraped again and again (as gogeta's is): a child whose numbers did not
    move keeps its lines from the scrape before, every other one is written anew."""
    r = Registry()
    c = Counter("hits", "Hits", ["path"], registry=r)
    g = Gauge("level", "Level", ["k"], registry=r)
    h = Histogram("wait_seconds", "Waits", ["service"], buckets=(0.001, 0.5), registry=r)
    s = Summary("sizes", "Sizes", ["kind"], registry=r)
    assert type(c.labels("/0")._value) is value_class
    for i in range(5):
        c.labels(f"/{i}").inc(i)
        h.labels(f"s{i}").observe(0.1 * i)
        s.labels(f"k{i}").observe(i)
    g.labels("zero").set(0.0)
    g.labels("nan").set(float("nan"))
    page = Page(r.order)
    first = b"".join(page.pieces())
    assert first == generate_latest(r)
    assert b"".join(page.pieces()) == first  # nothing moved
    c.labels("/1").inc()
    c.labels("/2").inc(0)  # no move
    c.labels("/new").inc(2)  # a child added
    h.labels("s3").observe(0.0001)  # the count and a bucket move
    s.labels("k4").observe(0)  # only the count moves
    g.labels("zero").set(-0.0)  # equal to 0.0, and written otherwise
    g.labels("nan").set(float("nan"))
    second = b"".join(page.pieces())
    assert second == generate_latest(r)
    assert b'level{k="zero"} -0.0' in second
    moved = set(second.splitlines()) - set(first.splitlines())
    # /1, /new; s3: its three buckets, count and sum; k4: its count; zero
    assert len(moved) == 9, sorted(moved)
    # Scrape after scrape, every move shows: those of children written at the last scrape
    # and of the others alike.
    for n in range(3):
        c.labels("/1").inc()
        c.labels(f"/{n + 2}").inc()
        h.labels("s0").observe(0.7)
        h.labels(f"s{n + 1}").observe(0.0001)
        s.labels("k4").observe(1)
        g.labels("zero").set(n)
        assert b"".join(page.pieces()) == generate_latest(r)


@pytest.mark.parametrize("value_class", [LoopValue], indirect=True)
def test_a_move_while_the_page_is_written_shows_at_the_next_scrape(value_class: type) -> None:
    r = Registry()
    c = Counter("hits", "Hits", ["path"], registry=r)
    paths = [f"/{i}" for i in range(3 * PIECE_LINES)]
    for path in paths:
        c.labels(path).inc()
    page = Page(r.order)
    assert b"".join(page.pieces()) == generate_latest(r)
    for path in paths:
        c.labels(path).inc()
    pieces = page.pieces()
    next(pieces)  # the first piece written, then other greenlets' turn:
    c.labels(paths[0]).inc()  # written already
    c.labels(paths[-1]).inc()  # not yet
    c.labels("/added").inc()
    b"".join(pieces)
    assert b"".join(page.pieces()) == generate_latest(r)


@pytest.mark.parametrize("value_class", [LoopValue], indirect=True)
def test_two_pages_of_one_registry_both_follow_it(value_class: type) -> None:
    r = Registry()
    h = Histogram("wait_seconds", "Waits", ["service"], buckets=(0.001, 0.5), registry=r)
    h.labels("a").observe(0.1)
    one, two = Page(r.order), Page(r.order)
    for n in range(3):
        assert b"".join(one.pieces()) == generate_latest(r)
        assert b"".join(two.pieces()) == generate_latest(r)
        h.labels("a").observe(n)
        h.labels(f"b{n}").observe(n)
