"""gevent.pywsgi tuned for a proxy: TCP_NODELAY, the raw request target, graceful drain.

pywsgi leaves Nagle's algorithm on for accepted sockets; with keep-alive clients a small
response then waits for the peer's delayed ACK (about 40 ms a request). It also only
offers the percent-decoded PATH_INFO, and a proxy must forward the path as the client sent
it, so the raw target goes into `RAW_URI` (the name gunicorn uses). And it would end a
HEAD answer without Content-Length with a chunked body.

Draining (SIGTERM, docs/behaviour.md §6): the listener closes, connections idle between two requests
are closed, a connection busy with a request finishes that request and then closes; after
the drain timeout whatever is still running is cut.

TLS (docs/behaviour.md §9): a server given a context does each handshake in the
connection's own greenlet, within `-clientTimeout`, before the handler sees the socket.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import pywsgi
from gevent.pool import Pool

from errors import ClientError, ClientTimeout
from framing.request import (
    RequestLine,
    check_header_lines,
    parse_request_line,
    read_header_lines,
)
from transport.sockets import sendall, shutdown

log = logging.getLogger(__name__)


def set_nodelay(sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a UNIX socket in tests, say)


READ_BUFFER = 1024  # bytes of read buffer per client connection (pywsgi's default: 8 KB)
# What a handler keeps between two requests of a keep-alive connection.
CONNECTION_STATE = ("socket", "client_address", "server", "rfile")


_HOLD = object()  # ProxyHandler._head: the next `_sendall` is the head, to be held


class ProxyHandler(pywsgi.WSGIHandler):  # type: ignore[misc]  # gevent is untyped
    idle = False  # True while waiting for the next request line of a keep-alive connection
    rfile: Any  # the client's buffered reader (pywsgi's), None while idle (_wait_readable)

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        set_nodelay(sock)
        if rfile is None:
            # pywsgi's default is an 8 KB buffer per connection, most of it idle memory
            # (bench part 4): a request head usually fits in 1 KB, a longer one takes a
            # few more reads, and large reads (bodies) bypass the buffer anyway.
            rfile = sock.makefile("rb", READ_BUFFER)
        super().__init__(sock, address, server, rfile)

    def handle(self) -> None:
        server: ProxyServer = self.server
        server.connections.add(self)
        server.count_connection(1)
        try:
            super().handle()
        finally:
            server.connections.discard(self)
            server.count_connection(-1)

    def read_requestline(self) -> str:
        if self.server.draining:
            return ""  # no further request on this connection: pywsgi closes it
        # Slow clients: the whole request head (the wait on a kept-alive connection
        # included) must arrive within `client_timeout`, so a client trickling one header
        # byte at a time (slowloris) is cut; the socket timeout then bounds each silence
        # while a body is sent or a response is read.
        timeout = self.server.client_timeout
        if timeout:
            self.socket.settimeout(timeout)
            # The class, not an instance: built only when the deadline passes (greenlet's throw).
            self._head_deadline = gevent.Timeout.start_new(timeout, ClientTimeout)
        self.idle = True
        try:
            self._wait_readable()
            line: str = super().read_requestline()
            return line
        finally:
            self.idle = False

    def _wait_readable(self) -> None:
        """Wait for the next request here rather than deep in `rfile.readline`.

        An idle keep-alive connection's greenlet keeps a copy of its slice of the C stack:
        blocking before the buffered reader and the socket-IO layers are entered saves
        about 1 KB per idle connection. Nothing to wait for when a pipelined request is
        already buffered (a non-blocking peek tells), but the other connections get their
        turn first: served at once, a client pipelining many requests (or one sending
        its next request very fast) would keep the process while everyone else waits,
        the long tail of latency under load (bench/NOTES.md).
        """
        sock = self.socket
        timeout = sock.timeout
        sock.settimeout(0.0)
        try:
            try:
                buffered = self.rfile.peek(0)  # at most one read, from TLS's buffer first
            except ssl.SSLWantReadError:
                buffered = b""  # TLS, nothing decrypted: the next record is not in yet
            # Behind TLS the next request may sit decrypted in the TLS object (`pending`),
            # where the socket's read event will never announce it.
            if buffered or _decrypted(sock):
                gevent.sleep(0)  # to the back of the queue of ready connections
                return
            # Nothing buffered: the reader (and its buffer) is rebuilt when the request
            # comes, instead of being held by every idle connection; and the head
            # deadline, when there is one, bounds the wait without a second timer.
            self.rfile.close()
            self.rfile = None
            sock.settimeout(None if getattr(self, "_head_deadline", None) else timeout)
            try:
                sock._wait(sock._read_event)  # gevent's own wait on the socket's watcher
            finally:
                self.rfile = sock.makefile("rb", READ_BUFFER)
        finally:
            sock.settimeout(timeout)

    def handle_one_request(self) -> Any:
        try:
            result = super().handle_one_request()
        finally:
            self._end_head_deadline()  # whatever path the request took (414...)
        if result is True:
            # Kept alive: forget the finished request (environ, headers, response state;
            # a few KB) rather than hold it while the connection idles. What pywsgi reads
            # before setting it again has a class-level default.
            state = self.__dict__
            self.__dict__ = {name: state[name] for name in CONNECTION_STATE if name in state}
        return result

    def _end_head_deadline(self) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.close()
            self._head_deadline = None

    def close_idle(self) -> None:
        """Wake a handler blocked reading the next request: it sees end of file and closes."""
        try:
            shutdown(self.socket, socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass

    response_use_chunked: bool  # set by pywsgi for every response
    code: int
    status: Any
    response_length: int
    _head: Any = None  # the response head, held until the first block of the body

    def _write_with_headers(self, data: bytes) -> None:
        """Send the response head and the first block of the body together.

        pywsgi sends them with two `sendall` calls: for a small answer, two system calls
        and two packets where one does.
        """
        self._head = _HOLD
        try:
            super()._write_with_headers(data)
        finally:
            head, self._head = self._head, None
            if head is not None and head is not _HOLD:  # no body followed: the head alone
                self._send(head)

    def _sendall(self, data: Any) -> None:
        head = self._head
        if head is _HOLD:  # pywsgi's first write is the head: keep it for the body
            self._head = data
            return
        if head is not None:
            self._head = None
            data = head + data
        self._send(data)

    def _send(self, data: Any) -> None:
        """pywsgi's `_sendall`: on failure the access status says so."""
        try:
            sendall(self.socket, data)
        except OSError as ex:
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    close_connection: bool
    request_version: str | None
    response_headers: list[tuple[Any, Any]]

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        write = super().start_response(status, headers, exc_info)
        # RFC 9112 §9.6: a server closing after this answer (the client asked, or the
        # answer is an error that ends the connection) says so. pywsgi only does for
        # HTTP/1.0, and a keep-alive client would take the close for a failure.
        if self.close_connection and self.request_version == "HTTP/1.1":
            names = {(k if isinstance(k, str) else k.decode()).lower() for k, _ in headers}
            if "connection" not in names:
                self.response_headers.append((b"Connection", b"close"))
        return write

    def finalize_headers(self) -> None:
        super().finalize_headers()
        if self.response_use_chunked and self.command == "HEAD":
            # pywsgi frames a length-less answer as chunked even for HEAD and then sends
            # the closing `0` chunk, a body a HEAD answer must not have: the client would
            # read it as the start of its next response.
            self.response_use_chunked = False

    request_line: RequestLine | None = None

    def read_request(self, raw_requestline: str) -> Any:
        """pywsgi's parsing, after framing.request has checked the request line by RFC 9112's
        rules (pywsgi splits it on any Unicode whitespace and takes HTTP/0.9)."""
        line = self.request_line = parse_request_line(raw_requestline)
        # Checked: exactly three words with single spaces, so pywsgi's split agrees.
        result = super().read_request(raw_requestline)
        if line.authority:
            self.path = line.target  # absolute-form: the backend is sent origin-form
        return result

    def MessageClass(self, stream: Any, *args: Any) -> Any:
        """Parse the headers as pywsgi does, after refusing ambiguous framing (framing.request)."""
        message = pywsgi.OldMessage()
        # The checked lines straight into pywsgi's message class: same object and values as
        # its email-package parser would give, for a fraction of the CPU.
        version = self.request_line.version if self.request_line else "HTTP/1.1"
        for name, value in check_header_lines(read_header_lines(stream), version):
            message.set_raw(name, value)
        return message

    def _handle_client_error(self, ex: BaseException) -> Any:
        self._end_head_deadline()
        if isinstance(ex, ClientError):  # framing refused, or a head sent too slowly
            log.log(ex.log_level, "refused a request from %s: %s", self.client_address[0], ex)
            return (str(ex.code), ex.response())
        return super()._handle_client_error(ex)

    def log_request(self) -> None:
        pass  # proxy.front writes gogeta's access lines; pywsgi would format one to discard

    def get_environ(self) -> dict[str, Any]:
        self._end_head_deadline()  # the head is in: the rest is the socket timeout's job
        env: dict[str, Any] = super().get_environ()
        env["RAW_URI"] = self.path
        line = self.request_line
        if line is not None and line.authority:
            # RFC 9112 §3.2.2: the target's authority wins over any Host header sent.
            env["HTTP_HOST"] = line.authority
        env["gogeta.socket"] = self.socket  # for Upgrade tunnels (proxy.tunnel)
        return env


def _decrypted(sock: Any) -> int:
    """Bytes a TLS socket has decrypted and not handed out yet (0 for a plain socket)."""
    pending = getattr(sock, "pending", None)
    return int(pending()) if pending is not None else 0


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """What the server needs beside the WSGI app, given by the composition root."""

    client_timeout: float = 0.0  # seconds for a request head or a silence; 0: no limit
    count_connection: Callable[[int], None] = lambda delta: None  # +1 / -1: open connections
    tls: ssl.SSLContext | None = None  # serve TLS with this context (transport.tls)
    tls_port: int = 0  # under gunicorn: the bound port whose listener serves TLS


class HandshakeTimeout(ClientTimeout):
    """A client that did not complete its TLS handshake within `-clientTimeout`."""


class ProxyServer(pywsgi.WSGIServer):  # type: ignore[misc]
    handler_class = ProxyHandler

    def __init__(
        self, listener: Any, *args: Any, options: ServerOptions | None = None, **kwargs: Any
    ) -> None:
        options = options or ServerOptions()
        self.tls = options.tls  # before pywsgi's __init__, which sets the environ from it
        # A pool (unbounded) so that `drain` can wait for the handlers; without one gevent
        # forgets them and stopping cuts every request in flight.
        kwargs.setdefault("spawn", Pool())
        if not hasattr(listener, "accept"):
            # Our own listener: gevent's default backlog (128) drops connections in a
            # burst; the kernel caps it at net.core.somaxconn anyway.
            kwargs.setdefault("backlog", 1024)
        super().__init__(listener, *args, **kwargs)
        self.connections: set[ProxyHandler] = set()
        self.draining = False
        self.client_timeout = options.client_timeout  # see ProxyHandler.read_requestline
        self.count_connection = options.count_connection

    def set_environ(self, environ: Any = None) -> None:
        super().set_environ(environ)
        if self.tls is not None:
            # pywsgi says https only for its own ssl_args; X-Forwarded-Proto and the
            # -forceFwSsl check read this (docs/behaviour.md §2.5).
            self.environ["wsgi.url_scheme"] = "https"
            self.environ["HTTPS"] = "on"

    def handle(self, sock: Any, address: Any) -> None:
        """In the connection's greenlet: the TLS handshake first, when serving TLS."""
        if self.tls is None:
            super().handle(sock, address)
            return
        secured = self._handshake(sock, address)
        if secured is not None:
            try:
                super().handle(secured, address)
            finally:
                secured.close()

    def _handshake(self, sock: Any, address: Any) -> Any:
        """The TLS socket once its handshake is done, or None (refused, silent, slow).

        A client that never completes it is cut after `-clientTimeout` in all (the socket
        timeout alone would let one trickle a byte at a time); it only costs its socket.
        """
        assert self.tls is not None
        timeout = self.client_timeout or None
        deadline = (
            gevent.Timeout.start_new(timeout, HandshakeTimeout("TLS handshake too slow"))
            if timeout
            else None
        )
        secured = None
        try:
            sock.settimeout(timeout)
            secured = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            secured.do_handshake()
            return secured
        except (OSError, ValueError) as exc:  # ssl.SSLError and the timeouts are OSErrors
            # Scanners, clients refusing our certificate, no certificate for the name...
            log.debug("TLS handshake with %s failed: %s", address[0] if address else "?", exc)
            if secured is not None:
                secured.close()
            return None
        finally:
            if deadline is not None:
                deadline.close()

    def close(self) -> None:
        """Stop accepting; connections idle between two requests close now, busy ones
        after their request (SIGTERM standalone, or gunicorn stopping a worker)."""
        self.draining = True
        super().close()
        for handler in list(getattr(self, "connections", ())):
            if handler.idle:
                handler.close_idle()

    def drain(self, timeout: float) -> int:
        """Stop accepting and let requests in flight finish for up to `timeout` seconds.

        Returns how many connections were still busy at the deadline (and were cut).
        """
        self.close()
        self.pool.join(timeout=timeout)
        left = len(self.pool)
        if left:
            self.pool.kill(block=True, timeout=1)
        return left
