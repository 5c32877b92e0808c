"""A soak backend: `python bench/soak_backend.py NAME PORT` answers NAME to every request.

Rule: it reads the whole request body first (the soak sends POSTs) and sets TCP_NODELAY
on accepted sockets, as gogeta's server does, so that it is never the slow side.
"""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

from gevent import pywsgi  # noqa: E402


class NoDelayHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, address, server, rfile)


def make_app(body: bytes) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.input"].read()
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        start_response("200 OK", headers)
        return [body]

    return app


def main() -> None:
    name, port = sys.argv[1], int(sys.argv[2])
    server = pywsgi.WSGIServer(
        ("127.0.0.1", port), make_app(name.encode()), log=None, handler_class=NoDelayHandler
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
