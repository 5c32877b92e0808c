"""WebSocket through gogeta: handshake forwarded, frames spliced both ways, closes passed on.

The backend is a minimal RFC 6455 echo server on a raw socket; the client speaks the same
protocol by hand, so nothing here depends on a WebSocket library.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import subprocess
import sys
import threading

import pytest

from tests.support import (
    ROOT,
    RawServer,
    Start,
    free_port,
    port_open,
    read_request_head,
    through,
    wait_until,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_of(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(payload: bytes, mask: bool) -> bytes:
    head = bytes([0x81])  # FIN + text
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    else:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data


def read_frame(sock: socket.socket) -> bytes:
    b1, b2 = read_exact(sock, 2)
    size = b2 & 0x7F
    if size == 126:
        size = struct.unpack("!H", read_exact(sock, 2))[0]
    key = read_exact(sock, 4) if b2 & 0x80 else None
    payload = read_exact(sock, size)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return payload


class EchoServer(RawServer):
    def __init__(self, decline: bool = False) -> None:
        self.heads: list[bytes] = []
        self.closed = threading.Event()
        self.decline = decline
        super().__init__(self.serve)

    def serve(self, conn: socket.socket) -> None:
        head = read_request_head(conn)
        self.heads.append(head)
        if self.decline:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nno, sir")
            return
        lines = head.split(b"\r\n")
        key = [ln.split(b":", 1)[1].strip() for ln in lines if b"sec-websocket-key:" in ln.lower()][
            0
        ]
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_of(key) + b"\r\n\r\n"
        )
        try:
            while True:
                message = read_frame(conn)
                if message == b"bye":
                    conn.close()
                    return
                conn.sendall(frame(b"echo:" + message, mask=False))
        except (EOFError, OSError):
            self.closed.set()


def handshake(port: int, host: str = "chat.example.com") -> tuple[socket.socket, bytes]:
    key = base64.b64encode(os.urandom(16))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"GET /socket?room=1 HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return sock, head if accept_of(key) in head or not head.startswith(b"HTTP/1.1 101") else b""


def converse(port: int, backend: EchoServer) -> None:
    sock, head = handshake(port)
    assert head.startswith(b"HTTP/1.1 101"), head
    try:
        for text in (b"hello", b"x" * 300, "h\u00e9".encode()):
            sock.sendall(frame(text, mask=True))
            assert read_frame(sock) == b"echo:" + text
    finally:
        sock.close()  # the client leaves: the backend must see it
    wait_until(backend.closed.is_set, timeout=10, what="backend to see the close")
    seen = backend.heads[0]
    assert seen.startswith(b"GET /socket?room=1 HTTP/1.1")
    assert b"Host: chat.example.com" in seen
    assert b"X-Forwarded-For: 127.0.0.1" in seen


def test_websocket_standalone(gogeta: Start) -> None:
    with EchoServer() as backend:
        proxy = through(gogeta, backend.url + "/")
        converse(proxy.port, backend)
        # the backend ends the conversation: the client sees the connection close
        sock, head = handshake(proxy.port)
        sock.sendall(frame(b"bye", mask=True))
        with pytest.raises(EOFError):
            read_frame(sock)
        sock.close()
        assert "tunnel to" in proxy.log() and "closed" in proxy.log()
        # and plain requests still work afterwards
        assert proxy.get("/__static__/gogeta.css").status == 200


def test_declined_upgrade_is_relayed(gogeta: Start) -> None:
    with EchoServer(decline=True) as backend:
        proxy = through(gogeta, backend.url + "/")
        sock, head = handshake(proxy.port)
        assert head.startswith(b"HTTP/1.1 403")
        body = b""
        while not body.endswith(b"no, sir"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
        sock.close()
        assert body == b"no, sir"


@pytest.mark.parametrize("worker_class", ["", "gevent"], ids=["ProxyWorker", "gevent"])
def test_websocket_under_gunicorn(worker_class: str) -> None:
    port = free_port()
    with EchoServer() as backend:
        env = {
            **os.environ,
            "GOGETA_RESOLVER_TYPE": "Dummy",
            "GOGETA_DUMMY_TARGET": backend.url + "/",
        }
        proc = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "gunicorn"),
                *(["-k", worker_class] if worker_class else []),
                "-w",
                "1",
                "-b",
                f"127.0.0.1:{port}",
                "gogeta:create_app()",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: port_open(port), timeout=30, what="gunicorn to listen")
            converse(port, backend)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
