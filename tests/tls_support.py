"""TLS clients for the tests, and certificates written into etcd as an operator writes them.

The certificates come from tests/pki.py: `store` writes one under `/certs` of a real etcd,
and clients speak TLS to gogeta's `-tlsPort` with the standard library, trusting the
shared CA and checking which certificate the handshake served.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import Any

from tests.pki import CA, Leaf
from tests.support import Response


def store(etcd: Any, hostname: str, leaf: Leaf, cert_dir: str = "/certs") -> None:
    client = etcd.client()
    client.write(f"{cert_dir}/{hostname}/cert", leaf.chain)
    client.write(f"{cert_dir}/{hostname}/key", leaf.key)


def client_context(**options: Any) -> ssl.SSLContext:
    """A client trusting CA; hostnames are not checked (the tests compare certificates)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    CA.configure_trust(context)
    context.check_hostname = False
    for name, value in options.items():
        setattr(context, name, value)
    return context


def connect(
    port: int, server_name: str | None, context: ssl.SSLContext | None = None, timeout: float = 10
) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:port, its handshake done (with SNI unless None)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return (context or client_context()).wrap_socket(sock, server_hostname=server_name)
    except BaseException:
        sock.close()
        raise


def served(port: int, server_name: str | None) -> bytes | None:
    """The DER of the certificate a handshake for `server_name` gets; None when refused."""
    try:
        with connect(port, server_name) as tls:
            return tls.getpeercert(binary_form=True)
    except ssl.SSLError:
        return None


class Conn:
    """A kept-alive TLS connection with one buffered reader, so pipelined answers are
    read in turn and nothing read ahead is lost."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self.reader = tls.makefile("rb")

    def makefile(self, *args: Any, **kwargs: Any) -> Any:  # for http.client.HTTPResponse
        return _Kept(self.reader)

    def send(self, path: str = "/", host: str = "example.com", **headers: str) -> None:
        self.tls.sendall(request_bytes(path, host, **headers))

    def answer(self, method: str = "GET") -> Response:
        response = http.client.HTTPResponse(self, method=method)  # type: ignore[arg-type]
        response.begin()
        return Response(response.status, response.getheaders(), response.read())

    def get(self, path: str = "/", host: str = "example.com", **headers: str) -> Response:
        self.send(path, host, **headers)
        return self.answer()

    def close(self) -> None:
        self.reader.close()
        self.tls.close()


class _Kept:
    """The connection's reader, which http.client closes after each answer: kept open."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)

    def close(self) -> None:
        pass


def request_bytes(path: str = "/", host: str = "example.com", **headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def https_get(port: int, server_name: str, path: str = "/", **headers: str) -> Response:
    """One request over a fresh TLS connection, SNI and Host both `server_name`."""
    conn = Conn(connect(port, server_name))
    try:
        return conn.get(path, server_name, **headers)
    finally:
        conn.close()
