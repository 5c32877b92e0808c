"""Hostile and broken clients: refused before any backend sees them; gogeta keeps serving."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support import (
    Backend,
    GogetaProcess,
    RawServer,
    Start,
    read_request_head,
    through,
    wait_until,
)


def exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, return the first line of the answer (b'' if the connection closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may stop reading early (oversized head): the answer counts
        answer = b""
        try:
            while b"\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return answer.split(b"\r\n", 1)[0]


HEAD = b"POST / HTTP/1.1\r\nHost: hostile.test\r\n"

REFUSED = {
    "content-length and chunked": (
        HEAD + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "duplicate content-length": (
        HEAD + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        400,
    ),
    "invalid content-length": (HEAD + b"Content-Length: 4x\r\n\r\nabcd", 400),
    "unsupported coding": (HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    "space before colon": (HEAD + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "obsolete line folding": (HEAD + b"X-A: b\r\n c\r\nContent-Length: 0\r\n\r\n", 400),
    "bare CR in a value": (HEAD + b"X-A: b\rc\r\nContent-Length: 0\r\n\r\n", 400),
    "NUL in a value": (HEAD + b"X-A: b\x00c\r\nContent-Length: 0\r\n\r\n", 400),
    "malformed chunk": (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n", 400),
    "missing host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two hosts": (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400),
    "invalid host": (b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400),
    "request line too long": (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    "too many headers": (
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(150))
        + b"\r\n",
        431,
    ),
    "headers too large": (
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"b" * 70_000 + b"\r\n\r\n",
        431,
    ),
}


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[GogetaProcess, Backend]]:
    """One gogeta in front of one recording backend, for the whole module."""
    from tests.support import GogetaProcess

    with Backend() as backend:
        proxy = GogetaProcess(
            ["-resolverType", "Dummy", "-dummyTarget", backend.url + "/", "-clientTimeout", "2"]
        ).start()
        try:
            yield proxy, backend
        finally:
            proxy.stop()


@pytest.mark.parametrize("case", list(REFUSED))
def test_ambiguous_requests_are_refused_and_never_forwarded(
    proxied: tuple[GogetaProcess, Backend], case: str
) -> None:
    proxy, backend = proxied
    data, code = REFUSED[case]
    before = len(backend.seen)
    status = exchange(proxy.port, data)
    assert status.startswith(b"HTTP/1.1 %d " % code), status
    assert len(backend.seen) == before
    # and the next, honest request is served
    assert proxy.get("/after", host="hostile.test").status == 200


def test_slowloris_head_is_cut(proxied: tuple[GogetaProcess, Backend]) -> None:
    proxy, _ = proxied
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: slow.test\r\n")
        cut = False
        for _ in range(40):  # one header line every 0.25 s: never silent, never done
            try:
                s.sendall(b"X-Drip: 1\r\n")
            except OSError:
                cut = True
                break
            time.sleep(0.25)
        if not cut:
            s.settimeout(5)
            cut = s.recv(100).startswith(b"HTTP/1.1 408")
    assert cut
    assert time.monotonic() - started < 8  # cut at -clientTimeout (2 s), not at the end
    assert proxy.get("/", host="slow.test").status == 200


def test_trickling_body_is_cut_and_releases_the_backend(gogeta: Start) -> None:
    closed = threading.Event()

    def backend(conn: socket.socket) -> None:
        read_request_head(conn)
        while conn.recv(65536):
            pass
        closed.set()  # gogeta gave up the backend connection

    with RawServer(backend) as server:
        proxy = through(gogeta, server.url + "/", "-clientTimeout", "1")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(HEAD.replace(b"hostile", b"trickle") + b"Content-Length: 100\r\n\r\nab")
            wait_until(closed.is_set, timeout=8, what="backend connection released")
        assert proxy.get("/__static__/gogeta.css", host="x.test").status == 200  # still serving


def test_client_leaving_mid_download_releases_the_backend(gogeta: Start) -> None:
    closed = threading.Event()

    def endless(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
        try:
            while True:
                conn.sendall(b"x" * 65536)
        except OSError:
            closed.set()

    with RawServer(endless) as server:
        proxy = through(gogeta, server.url + "/")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"GET /big HTTP/1.1\r\nHost: dl.test\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        wait_until(closed.is_set, timeout=10, what="backend connection closed")


def test_bodies_over_the_limit_get_413(gogeta: Start) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/", "-maxBodySize", "1k")
        assert proxy.get("/", method="POST", body=b"x" * 1024).status == 200
        # declared too large: refused before the backend is contacted, body not read
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: big.test\r\nContent-Length: 10000000000\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
        # chunked and growing past the limit: cut when it goes over
        resp = proxy.get("/", method="POST", body=iter([b"y" * 700, b"y" * 700]))
        assert resp.status == 413
        assert [len(s.body) for s in backend.seen if s.method == "POST"] == [1024]
        assert proxy.get("/after").status == 200
