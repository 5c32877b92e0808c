"""Sending on gevent sockets with one system call when the kernel takes everything.

gevent's `sendall` asks the kernel for the socket's send-buffer size and sets up its own
loop (timeouts, chunks) on every call, even when a single `send` takes the whole buffer,
which for a proxy's request heads and small answers is nearly always. `sendall` here tries
one non-blocking `send` on the real socket first and leaves only the rest, if any, to
gevent (which then waits for the socket to be writable, with its timeout).
"""

from __future__ import annotations

import socket
from typing import Any

import gevent.socket

_PLAIN = gevent.socket.socket  # not TLS: a TLS socket must never be written to raw


def sendall(sock: Any, data: bytes | bytearray | memoryview) -> None:
    if type(sock) is _PLAIN and len(data):
        try:
            sent = sock._sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    sock.sendall(data)
