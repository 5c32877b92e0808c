"""The example's two instances: a WSGI app that says which instance answered, served from
the script's own process on threads.

Each instance answers every request with its number, its address and what it was asked,
so that two requests through gogeta show the round robin. Rule: standard library and
devtools only, nothing of gogeta imported; it knows the service name, not the keys in etcd.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from devtools.example_keys import SERVICE
from devtools.machine import free_port
from devtools.ports import port_free

DEFAULT_BACKEND_PORTS = (8081, 8082)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def example_app(instance: str, port: int) -> Callable[..., Iterable[bytes]]:
    """A WSGI app that says which instance answered and what it was asked."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        query = environ.get("QUERY_STRING", "")
        text = (
            f"Hello from the example application, instance {instance}"
            f" (127.0.0.1:{port}).\n\n"
            f"You asked for {environ.get('HTTP_HOST', '?')}{path}{'?' + query if query else ''}"
            f" and gogeta picked this instance of service {SERVICE!r} from etcd.\n"
            f"X-Forwarded-For: {environ.get('HTTP_X_FORWARDED_FOR', '-')}\n\n"
            "Ask again: the next request goes to the other instance (round robin).\n"
        )
        data = text.encode("utf-8")
        start_response(
            "200 OK",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
        )
        return [data]

    return app


def start_backend(instance: str, port: int) -> WSGIServer:
    server = make_server(
        "127.0.0.1",
        port,
        example_app(instance, port),
        server_class=_ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name=f"backend-{instance}", daemon=True).start()
    return server


def backend_ports(requested: Sequence[int]) -> list[int]:
    """The requested ports; 0, or a default port already taken, becomes a free one."""
    ports = []
    for want in requested:
        if want and (want not in DEFAULT_BACKEND_PORTS or port_free(want)):
            ports.append(want)
        else:
            ports.append(free_port())
    return ports
