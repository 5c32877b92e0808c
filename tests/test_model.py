"""The routing model without etcd: status, round robin, parsing (docs/behaviour.md §3.1, §4.1)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from resolvers.base import Status, Upstream
from resolvers.model import (
    Instance,
    Location,
    computed_status,
    make_domain,
    make_instance,
    make_service,
    next_instance,
    parse_location,
    parse_robots,
)

# docs/behaviour.md §3.1, one line per row: (current, expected, alive) → computed status.
STATUS_TABLE = [
    ("stopped", "passivated", None, Status.PASSIVATED),
    ("stopped", "passivated", "x", Status.PASSIVATED),
    ("stopped", "stopped", None, Status.STOPPED),
    ("stopped", "started", None, Status.ERROR),
    ("stopped", None, None, Status.ERROR),
    ("starting", "started", None, Status.STARTING),
    ("starting", "stopped", None, Status.ERROR),
    ("starting", "passivated", "1", Status.ERROR),
    ("started", "started", "1", Status.STARTED),
    ("started", "started", None, Status.ERROR),
    ("started", "started", "", Status.ERROR),
    ("started", "stopped", None, Status.ERROR),
    ("started", "stopped", "1", Status.ERROR),
    ("started", "passivated", "1", Status.ERROR),
    ("stopping", "stopped", None, Status.STOPPED),
    ("stopping", "started", "1", Status.ERROR),
    ("passivated", "passivated", None, Status.ERROR),
    ("bogus", "started", "1", Status.ERROR),
    (None, None, None, Status.ERROR),
]


@pytest.mark.parametrize(("current", "expected", "alive", "status"), STATUS_TABLE)
def test_computed_status_follows_the_table(
    current: str | None, expected: str | None, alive: str | None, status: Status
) -> None:
    assert computed_status(True, current, expected, alive) is status


def test_no_status_directory_means_started() -> None:
    assert computed_status(False, None, None, None) is Status.STARTED
    # values left over without a directory cannot exist; the directory decides
    assert computed_status(False, "stopped", "stopped", None) is Status.STARTED


def instance(index: str, status: str = "started", port: int | None = 8000) -> Instance:
    location = Location("10.0.0.1", port) if port else None
    if status == "started":
        return make_instance("svc", index, location, False, None, None, None, None)
    return make_instance("svc", index, location, True, "stopped", status, None, None)


def picks(instances: Sequence[Instance], count: int) -> list[str | None]:
    position, chosen = -1, []
    for _ in range(count):
        position, inst = next_instance(instances, position)
        chosen.append(inst.index if inst else None)
    return chosen


def test_two_started_instances_alternate() -> None:
    service = make_service("svc", [instance("1"), instance("2")])
    assert picks(service.instances, 4) == ["1", "2", "1", "2"]


def test_three_instances_skip_stopped_and_location_less() -> None:
    service = make_service(
        "svc", [instance("1"), instance("2", "stopped"), instance("3", port=None), instance("4")]
    )
    assert picks(service.instances, 4) == ["1", "4", "1", "4"]


def test_three_started_instances_take_turns() -> None:
    service = make_service("svc", [instance("3"), instance("1"), instance("2")])
    assert picks(service.instances, 6) == ["1", "2", "3", "1", "2", "3"]


def test_instances_are_ordered_numerically_then_by_name() -> None:
    service = make_service("svc", [instance("10"), instance("b"), instance("2"), instance("a")])
    assert [i.index for i in service.instances] == ["2", "10", "a", "b"]


def test_no_started_instance_answers_with_the_last_one_looked_at() -> None:
    instances = make_service(
        "svc", [instance("1", "stopped"), instance("2", "passivated")]
    ).instances
    position, chosen = next_instance(instances, -1)
    assert chosen is None
    # started at 0, looked at 0 then 1: the last looked at is "2" (passivated)
    assert instances[position].refusal is Status.PASSIVATED
    # nothing was chosen, so the next request starts from the same place: same answer
    again, chosen = next_instance(instances, position)
    assert chosen is None and again == position
    # after a choice of "1", the last looked at is "1"
    position, chosen = next_instance(instances, 0)
    assert chosen is None and instances[position].refusal is Status.STOPPED


def test_a_started_instance_without_location_refuses_with_error() -> None:
    inst = instance("1", port=None)
    assert inst.status is Status.STARTED and inst.upstream is None
    assert inst.refusal is Status.ERROR


def test_routable_instance_carries_its_upstream() -> None:
    inst = instance("7")
    assert inst.upstream is not None
    assert (inst.upstream.host, inst.upstream.port) == ("10.0.0.1", 8000)
    assert inst.upstream.label == "svc/7"


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ('{"host": "172.17.0.5", "port": 42567}', Location("172.17.0.5", 42567)),
        ('{"host":"h","port":80,"extra":true}', Location("h", 80)),
        ('{"host": " h ", "port": 80.0}', Location("h", 80)),
    ],
)
def test_valid_locations(text: str, location: Location) -> None:
    assert parse_location(text) == location


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1, 2]",
        '{"port": 80}',
        '{"host": "", "port": 80}',
        '{"host": 5, "port": 80}',
        '{"host": "h"}',
        '{"host": "h", "port": "80"}',
        '{"host": "h", "port": true}',
        '{"host": "h", "port": 0}',
        '{"host": "h", "port": 70000}',
        '{"host": "h", "port": 80.5}',
        '{"host": "h/x", "port": 80}',
        "[" * 100_000,
    ],
)
def test_invalid_locations_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_location(text)


def test_robots_config() -> None:
    assert parse_robots('{"robots": "User-agent: *\\nDisallow: /private"}') == (
        "User-agent: *\nDisallow: /private"
    )
    assert parse_robots("{}") is None
    for bad in ("nope", "[]", '{"robots": 3}'):
        with pytest.raises(ValueError):
            parse_robots(bad)


def test_service_robots_is_the_first_instance_that_has_one() -> None:
    a = make_instance("s", "1", None, False, None, None, None, None)
    b = make_instance("s", "2", None, False, None, None, None, "B")
    c = make_instance("s", "3", None, False, None, None, None, "C")
    assert make_service("s", [c, a, b]).robots == "B"
    assert make_service("s", [a]).robots is None


def test_domains() -> None:
    assert make_domain("service", "shop").upstream is None
    uri = make_domain("uri", "https://api.example.com:8443/v1/?key=1")
    assert uri.upstream is not None
    assert (uri.upstream.scheme, uri.upstream.host, uri.upstream.port) == (
        "https",
        "api.example.com",
        8443,
    )
    assert (uri.upstream.path, uri.upstream.query) == ("/v1", "key=1")
    for type_, value in [
        ("proxy", "x"),
        ("service", ""),
        ("service", "a/b"),
        ("uri", "ftp://x"),
        ("uri", "no-scheme"),
        ("uri", "http://h:99999/"),
    ]:
        with pytest.raises(ValueError):
            make_domain(type_, value)


def test_avoided_instances_are_never_chosen() -> None:
    instances = make_service("svc", [instance("1"), instance("2"), instance("3")]).instances
    tried = {instances[0].upstream, instances[1].upstream}
    position, chosen = next_instance(instances, -1, tried.__contains__)
    assert chosen is not None and chosen.index == "3"
    tried.add(instances[2].upstream)
    position, chosen = next_instance(instances, -1, tried.__contains__)
    assert chosen is None


def test_spared_instances_are_chosen_only_when_nothing_else_can_serve() -> None:
    instances = make_service("svc", [instance("1"), instance("2")]).instances
    failing = {instances[0].upstream}
    assert picks_with(instances, failing, 3) == ["2", "2", "2"]
    failing.add(instances[1].upstream)  # all failing: try them anyway, in turn
    assert picks_with(instances, failing, 2) == ["1", "2"]


def picks_with(
    instances: Sequence[Instance], failing: set[Upstream | None], count: int
) -> list[str | None]:
    position, chosen = -1, []
    for _ in range(count):
        position, inst = next_instance(instances, position, None, failing.__contains__)
        chosen.append(inst.index if inst else None)
    return chosen
