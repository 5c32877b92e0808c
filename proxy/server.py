"""gevent.pywsgi tuned for a proxy: TCP_NODELAY and the raw request target.

pywsgi leaves Nagle's algorithm on for accepted sockets; with keep-alive clients a small
response then waits for the peer's delayed ACK (about 40 ms a request). It also only
offers the percent-decoded PATH_INFO, and a proxy must forward the path as the client sent
it, so the raw target goes into `RAW_URI` (the name gunicorn uses).
"""

from __future__ import annotations

import socket
from typing import Any

from gevent import pywsgi


def set_nodelay(sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a UNIX socket in tests, say)


class ProxyHandler(pywsgi.WSGIHandler):  # type: ignore[misc]  # gevent is untyped
    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        set_nodelay(sock)
        super().__init__(sock, address, server, rfile)

    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        env["RAW_URI"] = self.path
        return env


class ProxyServer(pywsgi.WSGIServer):  # type: ignore[misc]
    handler_class = ProxyHandler
