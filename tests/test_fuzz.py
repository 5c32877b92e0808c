"""Hostile input: any etcd key shape or value, any Host header, any header block.

Property tests (hypothesis) over the pure mirrors and parsers, so that a watcher fed with
whatever another tool wrote into etcd keeps running and keeps the valid routes, and a
client's Host or headers end as a hostname or a 4xx, never a crash.
"""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolvers.base import Status
from resolvers.model import make_domain, parse_location, parse_robots
from resolvers.nodes import Node
from resolvers.tree import DomainTree, ServiceTree

ACTIONS = ["set", "create", "update", "compareAndSwap", "delete", "expire", "compareAndDelete"]
NAMES = st.sampled_from(["a", "1", "2", "", "location", "status", "é", "x" * 300, "..", "%2F"])
FIELDS = st.sampled_from(
    ["location", "status", "current", "expected", "alive", "config", "gogeta", "type", "value",
     "lastAccess", "domain", "", "extra"]
)  # fmt: skip
VALUES = st.one_of(
    st.none(),
    st.text(max_size=50),
    st.sampled_from(
        [
            '{"host": "10.0.0.1", "port": 80}',
            '{"host": "10.0.0.1", "port": "80"}',
            '{"host": "", "port": 80}',
            '{"robots": 5}',
            '{"robots": "User-agent: *"}',
            "started",
            "stopped",
            "passivated",
            "service",
            "uri",
            "http://10.0.0.1:81/",
            "\x00💥",
            "[" * 5000,
            "9" * 5000,
            "x" * 20_000,
        ]
    ),
)


@st.composite
def events(draw: st.DrawFn, prefix: str) -> tuple[Node, str]:
    depth = draw(st.integers(min_value=0, max_value=5))
    parts = [draw(NAMES) for _ in range(min(depth, 2))] + [draw(FIELDS) for _ in range(depth - 2)]
    key = "/".join([prefix, *parts]) if parts else prefix
    if draw(st.booleans()):
        key = draw(st.sampled_from(["/", "/other/" + key, key + "/", prefix + "x/a"]))
    value = draw(VALUES)
    return Node(key, value, dir=draw(st.booleans())), draw(st.sampled_from(ACTIONS))


VALID_SERVICE = [
    Node("/services/ok/1/location", '{"host": "10.0.0.9", "port": 9000}'),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events("/services"), max_size=40))
def test_service_tree_survives_any_events(evs: list[tuple[Node, str]]) -> None:
    tree = ServiceTree("/services")
    tree.load(VALID_SERVICE + [node for node, _ in evs])
    for node, action in evs:
        if node.key.startswith(("/services/ok/", "/services/ok")) or node.key in (
            "/services",
            "/services/",
        ):
            continue  # leave the valid service alone: it must survive the rest
        tree.apply(node, action)
    for service in tree.services.values():
        for instance in service.instances:
            assert isinstance(instance.status, Status)
            if instance.upstream is not None:
                assert 0 < instance.upstream.port < 65536
    ok = tree.services["ok"].instances
    assert ok and ok[0].upstream is not None and ok[0].upstream.port == 9000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events("/domains"), max_size=40))
def test_domain_tree_survives_any_events(evs: list[tuple[Node, str]]) -> None:
    tree = DomainTree("/domains")
    valid = [Node("/domains/ok.com/type", "service"), Node("/domains/ok.com/value", "ok")]
    tree.load(valid + [node for node, _ in evs])
    for node, action in evs:
        if node.key.startswith("/domains/ok.com") or node.key.rstrip("/") == "/domains":
            continue
        tree.apply(node, action)
    assert tree.domains["ok.com"].value == "ok"
    for domain in tree.domains.values():
        assert domain.type in ("service", "uri")


@given(st.text(alphabet=string.printable + "é💥\x00", max_size=200))
def test_parsers_raise_only_value_error(text: str) -> None:
    for parse in (parse_location, parse_robots):
        try:
            parse(text)
        except ValueError:
            pass
    for type_ in ("service", "uri", text):
        try:
            make_domain(type_, text)
        except ValueError:
            pass


@given(
    st.dictionaries(
        st.sampled_from(["host", "port", "robots", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=True),
            st.text(max_size=20),
            st.lists(st.integers(), max_size=3),
        ),
    )
)
def test_parsers_on_any_json_object(data: dict[str, object]) -> None:
    import json

    text = json.dumps(data)
    try:
        location = parse_location(text)
    except ValueError:
        pass
    else:
        assert location.host and 0 < location.port < 65536
    try:
        robots = parse_robots(text)
    except ValueError:
        pass
    else:
        assert robots is None or isinstance(robots, str)


@given(st.text(max_size=300))
def test_host_header_is_a_hostname_or_a_bad_request(host: str) -> None:
    from proxy.app import hostname_of
    from proxy.errors import BadRequest

    try:
        name = hostname_of(host)
    except BadRequest:
        return
    assert name == name.lower()
    assert not name.startswith("www.") or host.lower().startswith("www.www.")
    assert ":" not in name or name.startswith("[")  # a port never stays, IPv6 keeps brackets
    assert name and " " not in name and "/" not in name


@given(st.lists(st.text(alphabet=string.printable, max_size=60), max_size=30))
def test_header_checks_refuse_or_pass_never_crash(lines: list[str]) -> None:
    from framing.request import RejectedRequest, check_header_lines

    try:
        pairs = check_header_lines([line + "\r\n" for line in lines])
    except RejectedRequest as exc:
        assert exc.code in (400, 431)
    else:
        assert len(pairs) == len(lines)
