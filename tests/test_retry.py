"""Retries and passive ejection: a dead instance costs no failed request when another can serve."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

from tests.support import (
    Backend,
    EtcdServer,
    RawServer,
    Reply,
    Seen,
    Start,
    read_request_head,
    refused_port,
    through,
    wait_until,
)


def add_route(etcd: EtcdServer, domain: str, service: str, ports: list[int]) -> None:
    client = etcd.client()
    for i, port in enumerate(ports, 1):
        client.write(
            f"/services/{service}/{i}/location", json.dumps({"host": "127.0.0.1", "port": port})
        )
    client.write(f"/domains/{domain}/type", "service")
    client.write(f"/domains/{domain}/value", service)


def named(name: str) -> Callable[[Seen], Reply]:
    def reply(seen: Seen) -> Reply:
        return 200, [("Content-Type", "text/plain")], name.encode()

    return reply


def test_refused_instance_is_skipped_for_every_method(etcd: EtcdServer, gogeta: Start) -> None:
    with Backend(named("alive")) as alive:
        add_route(etcd, "retry.test", "retry", [refused_port(), alive.port])
        proxy = gogeta("-etcdAddress", etcd.url, "-ejectSeconds", "0")
        wait_until(lambda: proxy.get("/", host="retry.test").status == 200, what="route")
        for i in range(6):
            assert proxy.get(f"/g{i}", host="retry.test").body == b"alive"
            resp = proxy.get(f"/p{i}", host="retry.test", method="POST", body=b"payload")
            assert resp.status == 200 and resp.body == b"alive"
        assert all(s.body == b"payload" for s in alive.seen if s.method == "POST")


def test_refused_instance_is_ejected_for_a_while(etcd: EtcdServer, gogeta: Start) -> None:
    def count(conn: socket.socket) -> None:
        conn.close()  # accepted then closed: a failed exchange, and counted

    with RawServer(count) as closing, Backend(named("alive")) as alive:
        add_route(etcd, "eject.test", "eject", [closing.port, alive.port])
        proxy = gogeta("-etcdAddress", etcd.url, "-ejectSeconds", "30")
        wait_until(lambda: proxy.get("/", host="eject.test").status == 200, what="route")
        before = len(closing.connections)
        for i in range(10):
            assert proxy.get(f"/{i}", host="eject.test").body == b"alive"
        # the failing instance is not tried again while ejected
        assert len(closing.connections) == before
    assert proxy.log().count("preferring other instances") == 1


def test_reset_after_the_request_is_replayed_only_when_safe(
    etcd: EtcdServer, gogeta: Start
) -> None:
    def reset(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # RST: the request was received, no answer

    with RawServer(reset) as broken, Backend(named("alive")) as alive:
        add_route(etcd, "reset.test", "reset", [broken.port, alive.port])
        proxy = gogeta("-etcdAddress", etcd.url, "-ejectSeconds", "0")
        wait_until(lambda: proxy.get("/", host="reset.test").status == 200, what="route")
        statuses = [proxy.get(f"/{i}", host="reset.test").status for i in range(6)]
        assert statuses == [200] * 6
        # a POST with a body may have been acted upon: never sent twice
        posts = [
            proxy.get("/p", host="reset.test", method="POST", body=b"x").status for _ in range(4)
        ]
        assert 502 in posts and 200 in posts


def test_an_instance_dying_after_its_head_is_replayed_only_when_safe(
    etcd: EtcdServer, gogeta: Start
) -> None:
    """Killed between writing its head and its body: nothing has reached the client yet
    (gogeta waits for the first body block), so a safe request still goes elsewhere."""

    def dies_after_head(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # RST, as the kernel does for a killed process

    with RawServer(dies_after_head) as dying, Backend(named("alive")) as alive:
        add_route(etcd, "dying.test", "dying", [dying.port, alive.port])
        proxy = gogeta("-etcdAddress", etcd.url, "-ejectSeconds", "0")
        wait_until(lambda: proxy.get("/", host="dying.test").status == 200, what="route")
        before = len(dying.connections)
        answers = [proxy.get(f"/{i}", host="dying.test") for i in range(6)]
        assert [(a.status, a.body) for a in answers] == [(200, b"alive")] * 6
        assert len(dying.connections) > before  # the dying instance had its turns
        posts = [
            proxy.get("/p", host="dying.test", method="POST", body=b"x").status for _ in range(4)
        ]
        assert 502 in posts and 200 in posts  # a POST with a body is never sent twice


def test_stale_keep_alive_connection_is_not_a_502(gogeta: Start) -> None:
    """A backend that drops a kept-alive connection instead of answering its next request."""

    def one_answer_per_connection(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        read_request_head(conn)  # the pooled connection is reused...
        conn.close()  # ...and closed without an answer, as an idle timeout would

    with RawServer(one_answer_per_connection) as backend:
        proxy = through(gogeta, backend.url + "/")
        for i in range(5):
            resp = proxy.get(f"/{i}")
            assert (resp.status, resp.body) == (200, b"ok")
