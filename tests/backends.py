"""Backends for tests: small servers on 127.0.0.1 port 0, in threads of the test process.

`Backend` is an HTTP/1.1 keep-alive server that records each request (`Seen`) and answers
what its `reply` says; `RawServer` hands each connection to a few scripted lines, for the
backends that misbehave; `HeldBackend` answers only once the test releases it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from devtools.machine import free_port
from tests.http_client import HeaderList


@dataclass
class Seen(HeaderList):
    """A request as a backend received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


Reply = tuple[int, list[tuple[str, str]], bytes]


def echo_reply(seen: Seen) -> Reply:
    return 200, [("Content-Type", "text/plain")], f"{seen.method} {seen.path}".encode()


class Backend:
    """An HTTP/1.1 keep-alive server on 127.0.0.1:0 that records what it receives.

    `reply(seen)` decides the answer; the default echoes method and raw path.
    """

    def __init__(self, reply: Callable[[Seen], Reply] = echo_reply, name: str = "") -> None:
        self.seen: list[Seen] = []
        self.name = name
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body go in two writes

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                body = b""
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    body = b"".join(parts)
                elif self.headers.get("Content-Length"):
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                seen = Seen(self.command, self.path, list(self.headers.items()), body)
                backend.seen.append(seen)
                status, headers, data = backend.reply(seen)
                self.send_response(status)
                names = {k.lower() for k, _ in headers}
                for k, v in headers:
                    self.send_header(k, v)
                if "content-length" not in names and status not in (204, 304):
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD" and status not in (204, 304):
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any

        class Server(ThreadingHTTPServer):
            # socketserver's default backlog is 5: a proxy opening 50 pooled connections at
            # once overflows it, and the dropped SYNs come back only after 1 s, 3 s, 7 s.
            request_queue_size = 1024
            daemon_threads = True

        self.reply = reply
        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll interval: `shutdown` waits for it, and tests stop many backends.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Backend:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


class RawServer:
    """A listening socket whose connections are handled by `handle(conn)` in a thread.

    For the misbehaving backends: one that never answers, one that closes mid-body...
    """

    def __init__(self, handle: Callable[[socket.socket], object]) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.handle = handle
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.sock.close()
        for c in self.connections:
            try:
                c.close()
            except OSError:
                pass


def read_request_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class HeldBackend:
    """A backend that answers 200 only once the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.received = threading.Event()
        self.server = RawServer(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        read_request_head(conn)
        self.received.set()
        if self.release.wait(30):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")

    def __enter__(self) -> HeldBackend:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.__exit__()


def refused_port() -> int:
    """A loopback port on which nothing listens (connection refused)."""
    return free_port()
