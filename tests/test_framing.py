"""No byte of one exchange reaches another: request framing, end to end.

Raw-socket clients against a real gogeta process, in front of a recording backend or a raw
one. Each case is a way a front server and a backend could disagree on where a request
ends, which on a shared keep-alive connection hands one client's answer to another. The
pure checks behind them are in tests/test_guard.py; the answers' side is
tests/test_framing_answers.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.etcd_routes import write_domain
from tests.support import (
    Backend,
    EtcdServer,
    GogetaProcess,
    RawServer,
    Start,
    exchange,
    read_request_head,
    status_of,
    through,
    wait_until,
)

Recorded = tuple[GogetaProcess, Backend]  # the `recorded` fixture


@pytest.fixture(scope="module")
def recorded() -> Iterator[Recorded]:
    """One gogeta in front of one recording backend, for the request-side cases."""
    with Backend() as backend:
        proxy = GogetaProcess(
            ["-resolverType", "Dummy", "-dummyTarget", backend.url + "/", "-clientTimeout", "5"]
        ).start()
        try:
            yield proxy, backend
        finally:
            proxy.stop()


def exchange_quietly(port: int, data: bytes) -> bytes:
    """`exchange`, but a server that closes while we still send is fine: its answer counts."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


# Bytes a Content-Length value may not hold, before or after its digits: anything but
# SP / HTAB (allowed around a field value) and the digits themselves. LF after the value
# ends the line (RFC 9112 §2.2 lets a recipient take a bare LF as a line end), so it is
# no violation there.
NOT_AROUND_A_LENGTH = [b for b in range(256) if b not in b" \t0123456789"]


def content_length_requests() -> Iterator[tuple[str, bytes]]:
    for b in NOT_AROUND_A_LENGTH:
        yield f"{b:#04x} before", bytes([b]) + b"5"
        if b != 0x0A:
            yield f"{b:#04x} after", b"5" + bytes([b])


def test_a_content_length_with_any_other_byte_around_it_is_refused(recorded: Recorded) -> None:
    proxy, backend = recorded
    before = len(backend.seen)
    wrong = []
    for name, value in content_length_requests():
        data = b"POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: " + value + b"\r\n\r\n"
        answer = exchange_quietly(proxy.port, data + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        if not answer.startswith(b"HTTP/1.1 400 "):
            wrong.append((name, answer[:60]))
    assert wrong == []
    assert len(backend.seen) == before, [s.path for s in backend.seen[before:]]


@pytest.mark.parametrize(
    "value",
    ["\xa040", "40\x85", "5\x0b", "4_0", "+5", "-5", "0x5", "5 5", "５", "", "1" * 20],
)
def test_content_lengths_pythons_int_would_take_are_refused(recorded: Recorded, value: str) -> None:
    proxy, backend = recorded
    before = len(backend.seen)
    head = f"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: {value}\r\n\r\n"
    answer = exchange_quietly(proxy.port, head.encode("latin-1", "replace") + b"x" * 40)
    assert status_of(answer) == 400
    assert len(backend.seen) == before


def test_the_backend_gets_the_normalised_content_length() -> None:
    heads: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        heads.append(read_request_head(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    with RawServer(handle) as raw:
        proxy = GogetaProcess(["-resolverType", "Dummy", "-dummyTarget", raw.url + "/"]).start()
        try:
            data = b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: \t 005 \t\r\n\r\nhello"
            answer = exchange_quietly(
                proxy.port, data + b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
        finally:
            proxy.stop()
    assert status_of(answer) == 200
    assert b"\r\nContent-Length: 5\r\n" in heads[0], heads[0]


@pytest.mark.parametrize(
    "line",
    [
        b"G\x01T / HTTP/1.1",
        b"GET\x0b/ HTTP/1.1",
        b"GET /\xa0 HTTP/1.1",
        b"GET  / HTTP/1.1",
        b"GET / HTTP/1.1 ",
        b"GET foo HTTP/1.1",
        b"GET foo",
        b"GET /",
        b"GET / HTTP/1.1\rX",
        b"GET / http/1.1",
        b"GET ftp://a.test/ HTTP/1.1",
        b"GET http://user@a.test/ HTTP/1.1",
    ],
)
def test_malformed_request_lines_are_400_and_reach_no_backend(
    recorded: Recorded, line: bytes
) -> None:
    proxy, backend = recorded
    before = len(backend.seen)
    answer = exchange_quietly(proxy.port, line + b"\r\nHost: a.test\r\n\r\n")
    assert status_of(answer) == 400
    assert len(backend.seen) == before
    assert "ERROR" not in proxy.log()
    assert proxy.get("/still-serving").status == 200


@pytest.mark.parametrize(
    "line", [b"CONNECT a.test:443 HTTP/1.1", b"TRACE / HTTP/1.1", b"TRACE * HTTP/1.1"]
)
def test_connect_and_trace_are_answered_405_by_gogeta(recorded: Recorded, line: bytes) -> None:
    proxy, backend = recorded
    before = len(backend.seen)
    answer = exchange_quietly(proxy.port, line + b"\r\nHost: a.test\r\n\r\n")
    assert status_of(answer) == 405
    assert b"\r\nAllow: " in answer
    assert len(backend.seen) == before


def test_http2_preface_is_505_without_an_error_line(recorded: Recorded) -> None:
    proxy, backend = recorded
    before = len(backend.seen)
    answer = exchange_quietly(proxy.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert status_of(answer) == 505
    assert len(backend.seen) == before
    assert "ERROR" not in proxy.log()


@pytest.mark.parametrize("value", [b"b\x0bc", b"b\x7fc", b"b\x1fc", b"\x0cb"])
def test_control_bytes_in_a_request_header_are_400(recorded: Recorded, value: bytes) -> None:
    proxy, backend = recorded
    before = len(backend.seen)
    answer = exchange_quietly(
        proxy.port, b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: " + value + b"\r\n\r\n"
    )
    assert status_of(answer) == 400
    assert len(backend.seen) == before


@pytest.mark.parametrize("coding", [b"chunked\x0b", b"\xa0chunked", b"chunked, chunked"])
def test_a_transfer_coding_with_odd_bytes_is_refused(recorded: Recorded, coding: bytes) -> None:
    proxy, backend = recorded
    before = len(backend.seen)
    data = b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
    answer = exchange_quietly(
        proxy.port, data + b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert status_of(answer) == 400
    assert len(backend.seen) == before


def test_chunked_from_an_http_1_0_client_is_refused(recorded: Recorded) -> None:
    proxy, backend = recorded
    before = len(backend.seen)
    data = b"POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert status_of(exchange_quietly(proxy.port, data)) == 400
    assert len(backend.seen) == before


@pytest.mark.parametrize("token", ["host", "Host", "x-forwarded-for", "content-length"])
def test_connection_tokens_cannot_remove_what_gogeta_must_send(
    recorded: Recorded, token: str
) -> None:
    proxy, backend = recorded
    resp = proxy.get(
        "/tokens", host="a.test", method="POST", body=b"data", headers={"Connection": token}
    )
    assert resp.status == 200
    seen = backend.seen[-1]
    assert seen.path == "/tokens"
    assert seen.header("Host") == "a.test"
    assert seen.header("X-Forwarded-For")
    assert seen.body == b"data"


def test_absolute_form_is_routed_by_its_authority_and_sent_origin_form(
    gogeta: Start, etcd: EtcdServer
) -> None:
    client = etcd.client()
    with Backend() as a, Backend() as other:
        write_domain(client, "a.test", "uri", a.url + "/")
        write_domain(client, "other.test", "uri", other.url + "/")
        proxy = gogeta("-etcdAddress", etcd.url)
        wait_until(lambda: proxy.get(host="other.test").status == 200, what="routes loaded")
        before_a = len(a.seen)
        answer = exchange(
            proxy.port,
            b"GET http://other.test/x?y=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        )
    assert status_of(answer) == 200
    assert len(a.seen) == before_a
    assert other.seen[-1].path == "/x?y=1"
    assert other.seen[-1].header("Host") == "other.test"


def test_websocket_handshakes_carry_no_internal_markers(gogeta: Start) -> None:
    heads: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        heads.append(read_request_head(conn))
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    with RawServer(handle) as raw:
        proxy = through(gogeta, raw.url + "/")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(
                b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            assert read_request_head(sock).startswith(b"HTTP/1.1 400 ")  # the declined answer
    assert heads, "the handshake never reached the backend"
    assert b"SKIP_HEADER" not in heads[0], heads[0]
    assert b"\r\nUpgrade: websocket\r\n" in heads[0]
