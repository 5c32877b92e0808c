"""No byte of one exchange reaches another: request and response framing, end to end.

Raw-socket clients and scripted raw backends, against a real gogeta process. Each case is
a way a front server and a backend (or gogeta and its client) could disagree on where a
message ends, which on a shared keep-alive connection hands one client's answer to
another. The pure checks behind them are in tests/test_guard.py and
tests/test_response_framing.py.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator

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
    through,
    wait_until,
)

# ----------------------------------------------------------------------- requests


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


def status_of(answer: bytes) -> int:
    line = answer.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1.1 "), answer[:200]
    return int(line.split()[1])


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


# ---------------------------------------------------------------------- responses


def scripted(
    answers: list[bytes], after: Callable[[socket.socket], None] | None = None
) -> RawServer:
    """A backend whose n-th request (over all connections) gets answers[n], or a plain
    `ok` once they are used up; `after(conn)` runs after each scripted answer."""
    count = iter(range(1_000_000))
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        while read_request_head(conn):
            with lock:
                n = next(count)
            if n < len(answers):
                conn.sendall(answers[n])
                if after is not None:
                    after(conn)
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    return RawServer(handle)


INJECTED = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def two_answers(port: int, first_headers: dict[str, str]) -> tuple[int, str | None, bytes, bytes]:
    """Two requests for two tenants on one client connection: the first answer's status,
    Content-Length and body, and the second answer's body (http.client reconnects when
    the first answer said `Connection: close`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/1", headers={"Host": "tenant-a.test", **first_headers})
        first = conn.getresponse()
        first_body = first.read()
        conn.request("GET", "/2", headers={"Host": "tenant-b.test"})
        second_body = conn.getresponse().read()
    finally:
        conn.close()
    return first.status, first.getheader("Content-Length"), first_body, second_body


UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket"}


@pytest.mark.parametrize("upgrade", [False, True], ids=["plain", "declined-upgrade"])
@pytest.mark.parametrize("length", [b"0", b"3", b"999"])
def test_length_and_chunked_from_a_backend_cannot_poison_the_next_answer(
    gogeta: Start, length: bytes, upgrade: bool
) -> None:
    evil = (
        b"HTTP/1.1 200 OK\r\nContent-Length: "
        + length
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk(INJECTED)
        + b"0\r\n\r\n"
    )
    with scripted([evil]) as raw:
        proxy = through(gogeta, raw.url + "/")
        status, first_length, first_body, second_body = two_answers(
            proxy.port, UPGRADE if upgrade else {}
        )
    assert second_body == b"ok"
    if status == 200:  # relayed as chunked, its length dropped (RFC 9112 §6.3)
        assert first_body == INJECTED
        assert first_length is None
    else:
        assert status == 502


@pytest.mark.parametrize(
    "cut",
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/pl",
    ],
)
def test_a_backend_closing_inside_its_head_is_a_502(gogeta: Start, cut: bytes) -> None:
    def handle(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(cut)
        conn.close()

    with RawServer(handle) as raw:
        proxy = through(gogeta, raw.url + "/")
        assert proxy.get("/").status == 502


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: abc\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 1, 2\r\n",
        b"Content-Length: 2\r\nContent-Length: 3\r\n",
        b"Content-Length: \xa02\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: chunked\x0b\r\n",
        b"X-A: b\rc\r\nContent-Length: 2\r\n",
        b"X-A: b\x00c\r\nContent-Length: 2\r\n",
        b"X-A: b\r\n folded\r\nContent-Length: 2\r\n",
        b"Bad Name: x\r\nContent-Length: 2\r\n",
        b"Content-Length : 2\r\n",
    ],
)
def test_a_backend_answer_with_invalid_framing_is_a_502(gogeta: Start, head: bytes) -> None:
    with scripted([b"HTTP/1.1 200 OK\r\n" + head + b"\r\nok"], after=lambda c: c.close()) as raw:
        proxy = through(gogeta, raw.url + "/")
        resp = proxy.get("/")
    assert resp.status == 502, resp.headers
    assert "Traceback" not in proxy.log()


def test_101_to_a_request_that_asked_no_upgrade_is_a_502(gogeta: Start) -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    with scripted([switch, switch], after=lambda c: c.sendall(INJECTED)) as raw:
        proxy = through(gogeta, raw.url + "/")
        assert proxy.get("/").status == 502


def test_an_http_1_0_client_gets_close_when_the_answer_has_no_length(gogeta: Start) -> None:
    with scripted([b"HTTP/1.1 200 OK\r\n\r\nhello"], after=lambda c: c.close()) as raw:
        proxy = through(gogeta, raw.url + "/")
        answer = exchange(
            proxy.port, b"GET / HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n"
        )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 200
    assert b"\r\nConnection: close" in head
    assert body == b"hello"


def test_a_backend_trickling_its_head_gets_a_504_at_the_read_deadline(gogeta: Start) -> None:
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        while not stop.is_set():  # one more header byte every 0.2 s, forever
            conn.sendall(b"X")
            stop.wait(0.2)

    with RawServer(handle) as raw:
        proxy = through(gogeta, raw.url + "/", "-readTimeout", "1")
        try:
            resp = proxy.get("/", timeout=30)
        finally:
            stop.set()
    assert resp.status == 504
