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


def shutdown(sock: Any, how: int) -> None:
    """`sock.shutdown(how)` that leaves a TLS socket's state alone.

    `SSLSocket.shutdown` drops the TLS layer first, so that anything still written (an
    answer's last bytes, by a greenlet that has not noticed yet) would go out in clear text.
    The kernel socket under it is shut down instead; OSError as `shutdown` raises it.
    """
    getattr(sock, "_sock", sock).shutdown(how)
