"""TLS connections on `-tlsPort` (docs/behaviour.md §9): what goes over them.

gogeta runs as a process against the session's real etcd (tests/tls_fixtures.py), with
certificates made by the tests (tests/pki.py); clients are the standard library's TLS:
versions and ALPN, requests forwarded as https with HSTS, silent handshakes cut,
pipelined keep-alive clients, WebSocket, and `Connection: close` said before closing.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import warnings

import pytest

from tests.pki import issue
from tests.support import Backend, EtcdServer, request, wait_until
from tests.test_websocket import EchoServer, accept_of, frame, read_exact
from tests.tls_fixtures import A, TlsStart

# The fixtures, imported under their own names so that pytest finds them here.
from tests.tls_fixtures import certs as certs
from tests.tls_fixtures import tls_gogeta as tls_gogeta
from tests.tls_support import Conn, client_context, connect, https_get, request_bytes, served, store


def route(etcd: EtcdServer, hostname: str, backend: Backend) -> None:
    client = etcd.client()
    client.write(f"/domains/{hostname}/type", "uri")
    client.write(f"/domains/{hostname}/value", backend.url + "/")


def test_tls_1_1_is_refused_and_alpn_says_http_1_1(tls_gogeta: TlsStart, certs: EtcdServer) -> None:
    store(certs, "a.example.com", A)
    _, port = tls_gogeta()
    wait_until(lambda: served(port, "a.example.com") == A.der)
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old = client_context(
            minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1
        )
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client does offer TLS 1.1
    with pytest.raises(ssl.SSLError) as refused:
        connect(port, "a.example.com", old)
    assert "PROTOCOL_VERSION" in str(refused.value)  # the server's alert, RFC 8446 §6.2
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = client_context(minimum_version=version, maximum_version=version)
        context.set_alpn_protocols(["h2", "http/1.1"])
        with connect(port, "a.example.com", context) as tls:
            assert tls.version() == version.name.replace("v1_", "v1.")
            assert tls.selected_alpn_protocol() == "http/1.1"


def test_tls_requests_are_forwarded_as_https_with_hsts(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    store(certs, "a.example.com", A)
    with Backend() as backend:
        route(certs, "a.example.com", backend)
        proc, port = tls_gogeta("-forceFwSsl", "-hstsMaxAge", "31536000")
        wait_until(lambda: served(port, "a.example.com") == A.der)

        # Plain: the redirect names the TLS port, and no HSTS (RFC 6797 §7.2).
        plain = request(proc.port, "/x/y?q=1", host="a.example.com")
        assert plain.status == 301
        assert plain.header("Location") == f"https://a.example.com:{port}/x/y?q=1"
        assert plain.header("Strict-Transport-Security") is None
        assert not backend.seen

        # Over TLS, even a trusted peer claiming http: gogeta saw https on its port.
        answer = https_get(port, "a.example.com", "/x?q=1", X_Forwarded_Proto="http")
        assert (answer.status, answer.body) == (200, b"GET /x?q=1")
        assert answer.header("Strict-Transport-Security") == "max-age=31536000"
        seen = backend.seen[-1]
        assert seen.header("X-Forwarded-Proto") == "https"
        assert seen.header("X-Forwarded-Port") == str(port)
        assert seen.header("X-Forwarded-For") == "127.0.0.1"
        # gogeta's own pages over TLS get it too.
        assert https_get(port, "a.example.com", "/__gogeta/health").status == 200
        conn = Conn(connect(port, "a.example.com"))
        missing = conn.get("/", "nowhere.example.com")
        conn.close()
        assert missing.status == 404
        assert missing.header("Strict-Transport-Security") == "max-age=31536000"


def test_a_client_silent_in_its_handshake_is_cut_and_blocks_nobody(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    store(certs, "a.example.com", A)
    _, port = tls_gogeta("-clientTimeout", "1")
    wait_until(lambda: served(port, "a.example.com") == A.der)
    silent = socket.create_connection(("127.0.0.1", port), timeout=20)
    trickle = socket.create_connection(("127.0.0.1", port), timeout=20)
    trickle.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, no more
    began = time.monotonic()
    # Meanwhile other handshakes go through at once.
    for _ in range(5):
        assert served(port, "a.example.com") == A.der
    for sock in (silent, trickle):
        try:
            assert sock.recv(1024) == b""  # closed by gogeta
        except ConnectionResetError:
            pass
        sock.close()
    assert time.monotonic() - began < 15


def test_fifty_keep_alive_tls_clients_pipelining_get_every_answer(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    """Requests sent together arrive in one TLS record and wait decrypted inside the TLS
    object, where a peek at the socket cannot see them: each must still be answered."""
    store(certs, "a.example.com", A)
    _, port = tls_gogeta()
    wait_until(lambda: served(port, "a.example.com") == A.der)
    failures: list[str] = []
    answered = [0]
    pad = "p" * 700  # five requests per record: more than the server's 1 KB read buffer

    def client(number: int) -> None:
        try:
            conn = Conn(connect(port, "a.example.com", timeout=60))
            try:
                for burst in range(4):
                    wire = b"".join(
                        request_bytes(f"/__gogeta/health?c={number}&b={burst}&r={i}", X_Pad=pad)
                        for i in range(5)
                    )
                    conn.tls.sendall(wire)  # pipelined
                    for _ in range(5):
                        assert conn.answer().status == 200
                        answered[0] += 1
                    # and back to back, each sent as soon as the last is read
                    assert conn.get("/__gogeta/health").status == 200
                    answered[0] += 1
            finally:
                conn.close()
        except Exception as exc:  # noqa: BLE001  # reported below, with the others
            failures.append(f"client {number}: {exc!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures[:5]
    assert answered[0] == 50 * 4 * 6


def test_websocket_over_tls(tls_gogeta: TlsStart, certs: EtcdServer) -> None:
    store(certs, "chat.example.com", issue("chat.example.com"))
    with EchoServer() as backend:
        client = certs.client()
        client.write("/domains/chat.example.com/type", "uri")
        client.write("/domains/chat.example.com/value", backend.url + "/")
        _, port = tls_gogeta()
        wait_until(lambda: served(port, "chat.example.com") is not None)
        tls = connect(port, "chat.example.com")
        try:
            key = b"dGhlIHNhbXBsZSBub25jZQ=="
            tls.sendall(
                b"GET /socket HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(1)
            assert head.startswith(b"HTTP/1.1 101") and accept_of(key) in head
            for text in (b"hello", b"x" * 3000):
                tls.sendall(frame(text, mask=True))
                assert read_ws_frame(tls) == b"echo:" + text
        finally:
            tls.close()
        wait_until(backend.closed.is_set, what="the backend to see the close")
        assert b"X-Forwarded-Proto: https" in backend.heads[0]


def read_ws_frame(sock: ssl.SSLSocket) -> bytes:
    head = read_exact(sock, 2)
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(read_exact(sock, 2), "big")
    return read_exact(sock, size)


def test_a_client_asking_to_close_is_told_so_on_both_ports(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    """RFC 9112 §9.6: the answer to `Connection: close` says `close` before the server
    closes, or a client counting on keep-alive takes the close for a failure."""
    store(certs, "a.example.com", A)
    proc, port = tls_gogeta()
    plain = request(proc.port, "/__gogeta/health", headers={"Connection": "close"})
    assert plain.header("Connection") == "close"
    conn = Conn(connect(port, "a.example.com"))
    try:
        answer = conn.get("/__gogeta/health", Connection="close")
        assert answer.header("Connection") == "close"
        assert conn.reader.read() == b""  # and the connection ends there
    finally:
        conn.close()
    kept = https_get(port, "a.example.com", "/__gogeta/health")
    assert kept.header("Connection") is None  # HTTP/1.1 keeps it open, unsaid
