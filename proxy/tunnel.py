"""`Connection: Upgrade` requests (WebSocket...): one raw connection, spliced both ways.

urllib3 cannot hand over a connection after `101 Switching Protocols`, so an upgrade
request gets its own socket to the backend. The handshake is forwarded like any request
(same headers, X-Forwarded-*, the client's Host) plus `Connection: Upgrade` and `Upgrade`;
a backend that declines gets its answer relayed as usual. After a 101 the bytes are copied
as they come in both directions, nothing buffered, until either side closes; then both
are closed. Works with pywsgi (standalone) and gunicorn's gevent worker: both give the
client socket in the environ, and a `write` callable that sends the 101 head at once.
"""

from __future__ import annotations

import http.client
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent

from framing.response import relay_head
from proxy.connection import AnswerHead
from proxy.errors import BadGateway, GatewayTimeout
from proxy.forward import request_headers, target_of
from resolvers.base import Upstream
from transport.sockets import shutdown

log = logging.getLogger(__name__)

BLOCK = 64 * 1024


def wants_upgrade(environ: dict[str, Any]) -> bool:
    connection = environ.get("HTTP_CONNECTION", "")
    return bool(environ.get("HTTP_UPGRADE")) and "upgrade" in connection.lower()


class _Reader:
    """What http.client.HTTPResponse needs of a socket: one buffered reader we keep."""

    def __init__(self, reader: Any, timeout: float | None) -> None:
        self.reader = reader
        self.timeout = timeout

    def gettimeout(self) -> float | None:  # the deadline for the answer head (AnswerHead)
        return self.timeout

    def makefile(self, *args: Any, **kwargs: Any) -> Any:
        return self.reader


class Tunnels:
    """Opens tunnels and counts them (`opened`, `active`) for the metrics and the logs."""

    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        url_header: str = "",
        on_count: Callable[[int], None] = lambda delta: None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.url_header = url_header
        self.opened = 0
        self.active = 0
        self.on_count = on_count  # +1 open, -1 closed (the open-tunnels gauge)

    def open(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        upstream: Upstream,
        trusted: bool = False,
    ) -> Iterable[bytes]:
        """Forward the handshake; on 101 splice until one side closes. Raises UpstreamError.

        `trusted`: the peer is one of `-trustedProxies` (see `request_headers`).
        """
        try:
            backend = socket.create_connection(
                (upstream.host, upstream.port), timeout=self.connect_timeout
            )
        except TimeoutError as exc:
            raise GatewayTimeout(f"connect timed out: {exc}", upstream.label, True) from exc
        except OSError as exc:
            raise BadGateway(f"cannot connect: {exc}", upstream.label, True) from exc
        try:
            backend.settimeout(self.read_timeout)
            backend.sendall(self._handshake(environ, upstream, trusted))
            reader = backend.makefile("rb")
            response = AnswerHead(
                _Reader(reader, self.read_timeout), method=environ["REQUEST_METHOD"]
            )
            response.begin()
            # The same framing rules as any answer (framing.response): a declined
            # upgrade is relayed like a plain answer, and must be framed like one.
            head = relay_head(
                response.status,
                response.reason,
                response.version,
                response.headers.items(),
                method=environ["REQUEST_METHOD"],
                client_version=environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
                upgrade=True,
            )
        except TimeoutError as exc:
            backend.close()
            raise GatewayTimeout(f"no answer to the upgrade: {exc}", upstream.label) from exc
        except (OSError, http.client.HTTPException) as exc:
            backend.close()
            raise BadGateway(f"upgrade failed: {exc}", upstream.label) from exc

        if response.status != 101:
            start_response(head.status, head.headers)
            return self._relay(response, backend)
        upgrade = response.headers.get("Upgrade", environ.get("HTTP_UPGRADE", ""))
        write = start_response(
            head.status, [*head.headers, ("Connection", "Upgrade"), ("Upgrade", upgrade)]
        )
        write(b"")  # the 101 head goes out now: the client waits for it before sending
        self._splice(environ, reader, backend, upstream)
        return []

    def _handshake(self, environ: dict[str, Any], upstream: Upstream, trusted: bool) -> bytes:
        headers = request_headers(environ, self.url_header, trusted)
        lines = [f"{environ['REQUEST_METHOD']} {target_of(environ, upstream)} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += ["Connection: Upgrade", f"Upgrade: {environ['HTTP_UPGRADE']}", "", ""]
        return "\r\n".join(lines).encode("latin-1")

    @staticmethod
    def _relay(response: http.client.HTTPResponse, backend: socket.socket) -> Iterator[bytes]:
        """A declined upgrade: the backend's answer, framed by http.client, then closed."""
        try:
            while block := response.read(BLOCK):
                yield block
        finally:
            backend.close()

    def _splice(
        self,
        environ: dict[str, Any],
        reader: Any,
        backend: socket.socket,
        upstream: Upstream,
    ) -> None:
        client = environ.get("gogeta.socket") or environ.get("gunicorn.socket")
        client_input = environ.get("wsgi.input")
        if client is None:
            backend.close()
            raise BadGateway("no client socket to tunnel from", upstream.label)
        # A tunnel may stay silent for long (an idle WebSocket): no read deadline on it.
        backend.settimeout(None)
        client.settimeout(None)
        sent = {"up": 0, "down": 0}

        def read_client() -> bytes:
            if client_input is not None and hasattr(client_input, "read1"):
                data: bytes = client_input.read1(BLOCK)  # pywsgi: its buffered reader
                return data
            return bytes(client.recv(BLOCK))

        def up() -> None:
            try:
                while data := read_client():
                    backend.sendall(data)
                    sent["up"] += len(data)
            except (OSError, ValueError):
                pass  # either side went away: the tunnel ends

        def down() -> None:
            try:
                while data := reader.read1(BLOCK):
                    # Straight to the socket: after a 1xx head a server's `write` may drop
                    # body bytes (gunicorn does, as RFC 9110 wants for a real 1xx answer).
                    client.sendall(data)
                    sent["down"] += len(data)
            except (OSError, ValueError):
                pass

        self.opened += 1
        self.active += 1
        self.on_count(1)
        log.info("tunnel to %s opened", upstream.label)
        pumps = [gevent.spawn(up), gevent.spawn(down)]
        try:
            gevent.wait(pumps, count=1)  # the first side to close ends the tunnel
        finally:
            gevent.killall(pumps)
            self.active -= 1
            self.on_count(-1)
            for sock in (backend, client):
                try:
                    shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass
            backend.close()
            log.info(
                "tunnel to %s closed: %d bytes up, %d bytes down",
                upstream.label,
                sent["up"],
                sent["down"],
            )
