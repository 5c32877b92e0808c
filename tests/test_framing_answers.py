"""No byte of one exchange reaches another: the framing of backends' answers, end to end.

Scripted raw backends behind a real gogeta process. Each case is a way a backend and gogeta
(or gogeta and its client) could disagree on where an answer ends, which on a shared
keep-alive connection hands one client's answer to another. The pure checks behind them
are in tests/test_response_framing.py; the requests' side is tests/test_framing.py.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable

import pytest

from tests.support import RawServer, Start, exchange, read_request_head, status_of, through


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
