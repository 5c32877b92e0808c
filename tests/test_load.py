"""Loading a whole directory from etcd: one GET, its JSON walked into `Node`s.

The walk must give the nodes python-etcd's `read(...).get_subtree()` gives (parents before
children), and the mirrors built from it must equal those built through python-etcd.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
from typing import Any

import etcd
import pytest
from etcd import EtcdKeyNotFound

from resolvers.etcd2_client import (
    DECODE_SWITCH_SECONDS,
    DECODED_HERE,
    Endpoints,
    nodes_of,
    read_tree,
)
from resolvers.etcd2_watcher import Watcher
from resolvers.nodes import Node
from resolvers.source import uncollected
from resolvers.tree import DomainTree, ServiceTree
from tests.etcd_routes import write_domain, write_instance
from tests.support import EtcdServer

ANSWER: dict[str, Any] = {
    "action": "get",
    "node": {
        "key": "/services",
        "dir": True,
        "nodes": [
            {
                "key": "/services/a",
                "dir": True,
                "nodes": [
                    {
                        "key": "/services/a/1",
                        "dir": True,
                        "nodes": [
                            {"key": "/services/a/1/location", "value": '{"host": "h", "port": 1}'},
                            {"key": "/services/a/1/status", "dir": True},
                        ],
                    }
                ],
            },
            {"key": "/services/empty", "dir": True},
            {"key": "/services/file", "value": "not a directory"},
        ],
    },
}


def subtree_of(answer: dict[str, Any]) -> list[Node]:
    """What the watcher used to load: python-etcd's objects, walked by python-etcd."""
    result = etcd.EtcdResult(**json.loads(json.dumps(answer)))
    return [Node(n.key, n.value, bool(n.dir)) for n in result.get_subtree(leaves_only=False)]


def test_nodes_are_those_of_python_etcd() -> None:
    nodes = list(nodes_of(json.dumps(ANSWER).encode()))
    assert sorted(nodes) == sorted(subtree_of(ANSWER))
    position = {node.key: i for i, node in enumerate(nodes)}
    for node in nodes:  # each parent before its children
        parent = node.key.rpartition("/")[0]
        if parent in position:
            assert position[parent] < position[node.key]


def test_an_empty_directory_is_one_node() -> None:
    body = b'{"action": "get", "node": {"key": "/domains", "dir": true}}'
    assert list(nodes_of(body)) == [Node("/domains", None, True)]


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"action": "get"}', b"null"])
def test_an_invalid_answer_is_an_etcd_error(body: bytes) -> None:
    with pytest.raises(etcd.EtcdException):
        list(nodes_of(body))


def test_a_deep_tree_is_walked_parents_first() -> None:
    node: dict[str, Any] = {"key": "/d/" + "x/" * 200 + "leaf", "value": "v"}
    for depth in range(200, 0, -1):
        node = {"key": "/d/" + "x/" * depth, "dir": True, "nodes": [node]}
    nodes = list(nodes_of(json.dumps({"action": "get", "node": node}).encode()))
    assert len(nodes) == 201
    assert nodes[-1] == Node("/d/" + "x/" * 200 + "leaf", "v", False)


@pytest.fixture
def routes(etcd: EtcdServer) -> Any:
    client = etcd.client()
    for i in range(40):
        write_domain(client, f"d{i}.test", "service", f"s{i}")
        write_instance(client, f"s{i}", "1", 9000 + i)
        write_instance(client, f"s{i}", "2", 9100 + i, status=("started", "started", "x"))
    write_domain(client, "u.test", "uri", "http://10.0.0.1:8080/base?x=1")
    return client


def test_a_large_answer_is_decoded_with_short_gil_turns() -> None:
    """Decoded in another thread, a large answer must hand the GIL back to the loop's
    thread often (docs/behaviour.md §5.4): at the default 5 ms, every socket call of a
    request waited up to that long for it."""
    children = [
        {"key": f"/domains/d{i}.test/type", "value": "service", "modifiedIndex": i}
        for i in range(DECODED_HERE // 25)
    ]
    node = {"key": "/domains", "dir": True, "nodes": children}
    body = json.dumps({"action": "get", "node": node}).encode()
    assert len(body) > DECODED_HERE
    before = sys.getswitchinterval()
    seen: list[float] = []  # the interval, read by another thread during the decode
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(sys.getswitchinterval())
            done.wait(0.0002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        nodes = list(nodes_of(body))
    finally:
        done.set()
        watcher.join()
    assert len(nodes) == len(children) + 1
    assert DECODE_SWITCH_SECONDS in seen  # short while decoding
    assert sys.getswitchinterval() == before  # and put back


def test_a_load_equals_one_through_python_etcd(etcd: EtcdServer, routes: Any) -> None:
    for prefix, tree_class in (("/domains", DomainTree), ("/services", ServiceTree)):
        loaded = tree_class(prefix)
        index = Watcher(Endpoints([etcd.url]), loaded)._load()
        result = routes.read(prefix, recursive=True)
        reference = tree_class(prefix)
        reference.load(
            Node(n.key, n.value, bool(n.dir)) for n in result.get_subtree(leaves_only=False)
        )
        assert index == int(result.etcd_index) + 1  # nothing written in between
        table = "domains" if prefix == "/domains" else "services"
        assert getattr(loaded, table) == getattr(reference, table)
        assert len(getattr(loaded, table)) == (41 if prefix == "/domains" else 40)
    assert gc.isenabled()


def test_a_missing_directory_loads_empty(etcd: EtcdServer) -> None:
    tree = DomainTree("/domains")
    tree.load([Node("/domains/old.test/type", "service"), Node("/domains/old.test/value", "s")])
    index = Watcher(Endpoints([etcd.url]), tree)._load()
    assert tree.domains == {}
    with pytest.raises(EtcdKeyNotFound) as exc:
        etcd.client().read("/domains")
    assert index == int(exc.value.payload["index"]) + 1


def test_a_large_answer_is_read_with_turns_and_a_cut_one_never_reused(etcd: EtcdServer) -> None:
    writer = etcd.client()
    for i in range(24):  # ~2.4 MB: the answer comes in many parts
        writer.write(f"/bulk/k{i}", "x" * 100_000)
    client = Endpoints([etcd.url]).client()
    turns: list[int] = []
    index, body = read_tree(client, "/bulk", lambda: turns.append(1))
    assert len(turns) >= 10  # a turn between parts, not one read of the whole
    reference = client.api_execute(client.key_endpoint + "/bulk", "GET", {"recursive": "true"})
    assert index == int(reference.headers["X-Etcd-Index"])

    def nodes(answer: bytes) -> list[Node]:  # etcd lists a directory in no set order
        return sorted(nodes_of(answer))

    assert nodes(body) == nodes(reference.data) and len(nodes(body)) == 25

    def cut() -> None:  # the load stopped halfway (its greenlet killed, say)
        if len(turns) > 13:
            raise RuntimeError("stopped")
        turns.append(1)

    with pytest.raises(RuntimeError):
        read_tree(client, "/bulk", cut)
    # The connection with the rest of that answer in it is not read from again.
    again, answer = read_tree(client, "/bulk")
    assert again == index and nodes(answer) == nodes(body)
    with pytest.raises(EtcdKeyNotFound):
        read_tree(client, "/missing")


def test_the_collector_waits_for_every_load_in_progress() -> None:
    """The two directories load at once (a greenlet each): the first to finish must not turn
    the cyclic collector on under the other, which would then walk its growing table again
    and again (full collections of 30 to 115 ms at 100,000 domains)."""
    assert gc.isenabled()
    first, second = uncollected(), uncollected()
    try:
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert not gc.isenabled()
    finally:
        second.__exit__(None, None, None)
        gc.enable()  # whatever happened above, the next test has its collector
    assert gc.isenabled()
    with uncollected():
        assert not gc.isenabled()
    assert gc.isenabled()
