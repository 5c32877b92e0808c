"""The ceiling of our own stack: a bare gevent.pywsgi app that answers without forwarding.

`python bench/hello.py PORT`: `/big` answers 100 KB, anything else `hello world\\n`
(12 bytes), like the nginx backend. Accepted sockets get TCP_NODELAY exactly as gogeta's
server does (transport/server.py), and there is no access log, so what is left is the cost of
pywsgi itself: parse a request, call the app, write the answer.
"""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

from gevent import pywsgi  # noqa: E402

SMALL = b"hello world\n"
BIG = b"x" * (100 * 1024)


class NoDelayHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, address, server, rfile)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = BIG if environ.get("PATH_INFO") == "/big" else SMALL
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def main() -> None:
    port = int(sys.argv[1])
    server = pywsgi.WSGIServer(("127.0.0.1", port), app, log=None, handler_class=NoDelayHandler)
    server.serve_forever()


if __name__ == "__main__":
    main()
