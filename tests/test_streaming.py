"""Bodies stream through gogeta (docs/behaviour.md §2.5): none is held whole in memory, either way.

The backends generate or count bytes on the fly, so nothing large is stored by the test
either. gogeta's resident memory is sampled with psutil during each transfer.

Sizes: 1 GiB each way. On the 2-core machine these tests were written on, with other work
sharing the cores, 512 MiB took about 2 s down and 3 s up through gogeta, so the whole
file stays well under a minute.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil
import pytest

from tests.support import GogetaProcess, RawServer, Start, read_request_head, through

MB = 1024 * 1024
STREAM_BYTES = 1024 * MB
BLOCK = bytes(range(256)) * 4096  # 1 MiB, not all one byte
MAX_GROWTH = 60 * MB


def content_length_of(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def generates(conn: socket.socket) -> None:
    """A backend answering `GET /bytes/N` with N bytes made on the fly (Content-Length)."""
    while head := read_request_head(conn):
        size = int(head.split(b" ")[1].rsplit(b"/", 1)[1])
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        left = size
        while left:
            n = min(left, len(BLOCK))
            conn.sendall(BLOCK[:n])
            left -= n


def counts() -> tuple[Callable[[socket.socket], None], list[int]]:
    """A backend that counts the request body's bytes without keeping them."""
    totals: list[int] = []

    def handle(conn: socket.socket) -> None:
        head = read_request_head(conn)
        header_end = head.index(b"\r\n\r\n") + 4
        received = len(head) - header_end
        length = content_length_of(head)
        while received < length:
            chunk = conn.recv(MB)
            if not chunk:
                break
            received += len(chunk)
        totals.append(received)
        body = str(received).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        conn.recv(1)

    return handle, totals


@contextmanager
def rss_sampler(proxy: GogetaProcess) -> Iterator[list[int]]:
    """Sample gogeta's resident memory every 50 ms while the block runs."""
    assert proxy.proc is not None
    process = psutil.Process(proxy.proc.pid)
    samples = [process.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            samples.append(process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()
        samples.append(process.memory_info().rss)


def download(port: int, size: int) -> tuple[int, str, float]:
    """GET `size` bytes through gogeta; return (bytes received, sha256, seconds)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    digest = hashlib.sha256()
    total = 0
    try:
        conn.request("GET", f"/bytes/{size}", headers={"Host": "example.com"})
        resp = conn.getresponse()
        assert resp.status == 200
        while chunk := resp.read(MB):
            digest.update(chunk)
            total += len(chunk)
    finally:
        conn.close()
    return total, digest.hexdigest(), time.monotonic() - started


def expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    left = size
    while left:
        n = min(left, len(BLOCK))
        digest.update(BLOCK[:n])
        left -= n
    return digest.hexdigest()


def test_100mb_download_arrives_intact(gogeta: Start) -> None:
    size = 100 * MB + 12345  # not a multiple of any block size
    with RawServer(generates) as raw:
        proxy = through(gogeta, raw.url)
        total, sha, _ = download(proxy.port, size)
    assert total == size
    assert sha == expected_sha256(size)


@pytest.mark.slow
def test_large_download_keeps_memory_flat(gogeta: Start) -> None:
    with RawServer(generates) as raw:
        proxy = through(gogeta, raw.url)
        download(proxy.port, 20 * MB)  # imports and buffers settle before measuring
        with rss_sampler(proxy) as samples:
            total, _, seconds = download(proxy.port, STREAM_BYTES)
    assert total == STREAM_BYTES
    growth = max(samples) - samples[0]
    assert growth < MAX_GROWTH, f"RSS grew {growth / MB:.0f} MB over {seconds:.1f}s"


@pytest.mark.slow
def test_large_upload_keeps_memory_flat(gogeta: Start) -> None:
    handle, totals = counts()
    with RawServer(handle) as raw:
        proxy = through(gogeta, raw.url)
        with rss_sampler(proxy) as samples:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
                sock.sendall(
                    b"PUT /upload HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n" % STREAM_BYTES
                )
                left = STREAM_BYTES
                while left:  # made on the fly, never held whole
                    n = min(left, len(BLOCK))
                    sock.sendall(BLOCK[:n])
                    left -= n
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\n%d" % STREAM_BYTES)
    assert totals == [STREAM_BYTES]
    growth = max(samples) - samples[0]
    assert growth < MAX_GROWTH, f"RSS grew {growth / MB:.0f} MB"


def test_small_writes_reach_the_client_without_waiting_for_more(gogeta: Start) -> None:
    # The backend sends half its body, then waits until the client has seen it: a proxy
    # that waits to fill a buffer first would make both wait until the read timeout.
    seen_by_client = threading.Event()

    def handle(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
        if seen_by_client.wait(10):
            conn.sendall(b"-last")
        conn.recv(1)

    with RawServer(handle) as raw:
        proxy = through(gogeta, raw.url, "-readTimeout", "20")
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        try:
            started = time.monotonic()
            conn.request("GET", "/events", headers={"Host": "example.com"})
            resp = conn.getresponse()
            assert resp.read(5) == b"first"
            assert time.monotonic() - started < 5
            seen_by_client.set()
            assert resp.read() == b"-last"
        finally:
            conn.close()
