"""Forwarding (docs/behaviour.md §2.2, §2.4–§2.6): what the client gets back.

gogeta runs with the Dummy resolver pointed at a backend on a real socket (a recording
one, or a raw one scripted in a few lines): status, headers and body come back unchanged
but for the hop-by-hop headers, body-less answers keep the connection's framing, and a
backend's interim (1xx) answers are never taken for its final one.
"""

from __future__ import annotations

import http.client
import socket
from contextlib import closing

import pytest

from tests.support import (
    Backend,
    RawServer,
    Reply,
    Seen,
    Start,
    exchange,
    read_request_head,
    through,
)


@pytest.mark.parametrize(
    ("code", "headers", "body"),
    [
        (201, [("Location", "/things/1")], b"created"),
        (204, [], b""),
        (304, [("ETag", '"v1"')], b""),
        (302, [("Location", "https://elsewhere.example/next?x=1")], b"moved"),
        (404, [("Content-Type", "application/json")], b'{"error": "backend 404"}'),
        (500, [("Content-Type", "text/plain")], b"backend exploded"),
        (503, [("Retry-After", "120")], b"backend busy"),
    ],
)
def test_backend_status_headers_and_body_come_back_unchanged(
    gogeta: Start, code: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    with Backend(lambda seen: (code, [*headers, ("X-From", "backend")], body)) as backend:
        proxy = through(gogeta, backend.url)
        with closing(http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)) as conn:
            # Twice on one connection: a body-less answer must not break the framing.
            for _ in range(2):
                conn.request("GET", "/", headers={"Host": "example.com"})
                resp = conn.getresponse()
                assert resp.status == code
                assert resp.read() == body
                assert resp.getheader("X-From") == "backend"
                for name, value in headers:
                    assert resp.getheader(name) == value


def test_304_with_the_representations_content_length(gogeta: Start) -> None:
    # RFC 9110 §8.6 lets a 304 carry the Content-Length a 200 would have had.
    reply: Reply = (304, [("ETag", '"v1"'), ("Content-Length", "1234")], b"")
    with Backend(lambda seen: reply) as backend:
        proxy = through(gogeta, backend.url)
        with closing(http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)) as conn:
            for _ in range(2):
                conn.request("GET", "/", headers={"Host": "example.com", "If-None-Match": '"v1"'})
                resp = conn.getresponse()
                assert resp.status == 304
                assert resp.getheader("ETag") == '"v1"'
                assert resp.read() == b""


def test_several_set_cookie_headers_are_preserved(gogeta: Start) -> None:
    cookies = ["a=1; Path=/", "b=2; HttpOnly", "c=3; Expires=Wed, 21 Oct 2037 07:28:00 GMT"]
    with Backend(lambda seen: (200, [("Set-Cookie", c) for c in cookies], b"ok")) as backend:
        resp = through(gogeta, backend.url).get("/")
    assert resp.header_all("Set-Cookie") == cookies


def test_head_with_content_length(gogeta: Start) -> None:
    def reply(seen: Seen) -> Reply:
        return 200, [("Content-Length", "1234"), ("Content-Type", "text/plain")], b""

    with Backend(reply) as backend:
        proxy = through(gogeta, backend.url)
        with closing(http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)) as conn:
            for _ in range(2):
                conn.request("HEAD", "/file", headers={"Host": "example.com"})
                resp = conn.getresponse()
                assert resp.status == 200
                assert resp.getheader("Content-Length") == "1234"
                assert resp.read() == b""
    assert [s.method for s in backend.seen] == ["HEAD", "HEAD"]


def test_head_of_a_chunked_resource_keeps_the_connection_usable(gogeta: Start) -> None:
    # A backend that would stream its GET answer announces `Transfer-Encoding: chunked`
    # on HEAD and sends no body; the client must not receive one either.
    def handle(conn: socket.socket) -> None:
        while head := read_request_head(conn):
            if head.startswith(b"HEAD"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with RawServer(handle) as raw:
        proxy = through(gogeta, raw.url)
        # Raw bytes: http.client would hide stray bytes after a HEAD answer in its buffer.
        received = exchange(
            proxy.port,
            b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        )
    head_answer, _, rest = received.partition(b"\r\n\r\n")
    assert head_answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest
    assert rest.endswith(b"\r\n\r\nok")


def test_interim_answers_are_skipped_and_never_taken_for_the_final_one(gogeta: Start) -> None:
    """A backend's 1xx before its answer (103 Early Hints, 102 Processing, a 100 it was
    not asked for) is dropped; taking it for the answer would leave the real one on the
    pooled connection, to be handed to the next request, maybe another client's."""

    def handle(conn: socket.socket) -> None:
        served = 0
        while head := read_request_head(conn):
            served += 1
            path = head.split(b" ")[1]
            conn.sendall(
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 102 Processing\r\n\r\n"
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)
            )

    with RawServer(handle) as raw:
        proxy = through(gogeta, raw.url)
        for i in range(3):  # over the same pooled backend connection
            resp = proxy.get(f"/answer{i}")
            assert (resp.status, resp.body) == (200, f"/answer{i}".encode())
            assert resp.header("Link") is None
        assert len(raw.connections) == 1


def test_endless_interim_answers_are_a_bad_gateway(gogeta: Start) -> None:
    def handle(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 100)

    with RawServer(handle) as raw:
        proxy = through(gogeta, raw.url)
        assert proxy.get("/").status == 502
        assert proxy.get("/__gogeta/health").status == 200  # and it keeps serving


def test_response_without_reason_phrase(gogeta: Start) -> None:
    def handle(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 \r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    with RawServer(handle) as raw:
        received = exchange(
            through(gogeta, raw.url).port,
            b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        )
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b"\r\n\r\nok")


def test_hop_by_hop_response_headers_are_not_returned(gogeta: Start) -> None:
    def reply(seen: Seen) -> Reply:
        return (
            200,
            [
                ("Connection", "X-Backend-Hop"),
                ("X-Backend-Hop", "internal"),
                ("Keep-Alive", "timeout=5, max=100"),
                ("Trailer", "X-Checksum"),
                ("Upgrade", "h2c"),
                ("Proxy-Authenticate", "Basic"),
                ("X-End-To-End", "kept"),
            ],
            b"ok",
        )

    with Backend(reply) as backend:
        resp = through(gogeta, backend.url).get("/")
    assert resp.status == 200
    assert resp.body == b"ok"
    for name in ("X-Backend-Hop", "Keep-Alive", "Trailer", "Upgrade", "Proxy-Authenticate"):
        assert resp.header(name) is None, name
    assert "X-Backend-Hop" not in (resp.header("Connection") or "")
    assert resp.header("X-End-To-End") == "kept"
