"""TLS on `-tlsPort` (docs/behaviour.md §9): certificates from etcd chosen by SNI, live.

gogeta runs as a process against the session's real etcd; the certificates are made by
the tests (tests/pki.py) and written under `/certs` as an operator writes them;
clients are the standard library's TLS, and they check which certificate they got.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.pki import issue
from tests.support import (
    Backend,
    EtcdServer,
    GogetaProcess,
    Start,
    free_port,
    port_open,
    request,
    wait_until,
)
from tests.test_websocket import EchoServer, accept_of, frame, read_exact
from tests.tls_support import (
    Conn,
    client_context,
    connect,
    https_get,
    request_bytes,
    served,
    store,
)

A = issue("a.example.com")
WILDCARD = issue("*.example.com")
DEFAULT = issue("default.localhost")
BAD_PEM = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


@pytest.fixture
def certs(etcd: EtcdServer) -> Iterator[EtcdServer]:
    """The session's etcd with `/certs` emptied too."""
    etcd.wipe("/certs")
    yield etcd
    etcd.wipe("/certs")


Started = tuple[GogetaProcess, int]


TlsStart = Callable[..., "Started"]  # the `tls_gogeta` fixture


@pytest.fixture
def tls_gogeta(gogeta: Start, certs: EtcdServer) -> Callable[..., Started]:
    """gogeta with -tlsPort on a free port, reading `certs`; (process, TLS port)."""

    def start(*flags: str) -> Started:
        tls_port = free_port()
        proc = gogeta("-etcdAddress", certs.url, "-tlsPort", str(tls_port), *flags)
        wait_until(lambda: port_open(tls_port), what="the TLS port")
        wait_until(lambda: proc.get("/__gogeta/health").status == 200, what="the first load")
        return proc, tls_port

    return start


def route(etcd: EtcdServer, hostname: str, backend: Backend) -> None:
    client = etcd.client()
    client.write(f"/domains/{hostname}/type", "uri")
    client.write(f"/domains/{hostname}/value", backend.url + "/")


def tls_state(proc: GogetaProcess) -> dict[str, object]:
    state: dict[str, object] = json.loads(proc.get("/__gogeta/routes").body)["tls"]
    return state


def test_sni_picks_the_exact_name_then_a_one_label_wildcard_then_the_default(
    tls_gogeta: TlsStart, certs: EtcdServer, tmp_path: Path
) -> None:
    store(certs, "a.example.com", A)
    store(certs, "*.example.com", WILDCARD)
    cert_file, key_file = DEFAULT.write(tmp_path, "default")
    _, port = tls_gogeta("-tlsCertFile", cert_file, "-tlsKeyFile", key_file)
    wait_until(lambda: served(port, "a.example.com") == A.der, what="a.example.com served")
    assert served(port, "A.Example.COM") == A.der  # names compare in lower case
    assert served(port, "b.example.com") == WILDCARD.der
    # One label only, and never the bare domain (RFC 6125 §6.4.3).
    assert served(port, "x.b.example.com") == DEFAULT.der
    assert served(port, "example.com") == DEFAULT.der
    assert served(port, "unknown.test") == DEFAULT.der
    assert served(port, None) == DEFAULT.der  # a client without SNI


def test_without_a_default_unknown_names_are_refused_and_the_rest_served(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    store(certs, "a.example.com", A)
    proc, port = tls_gogeta()
    wait_until(lambda: served(port, "a.example.com") == A.der)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        connect(port, "nobody.test")
    with pytest.raises(ssl.SSLError):
        connect(port, None)
    assert served(port, "a.example.com") == A.der  # the process serves on
    assert proc.proc is not None and proc.proc.poll() is None


def test_certificates_are_added_replaced_and_deleted_live(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    proc, port = tls_gogeta()
    assert served(port, "live.example.com") is None
    first, second = issue("live.example.com"), issue("live.example.com")

    began = time.monotonic()
    store(certs, "live.example.com", first)
    wait_until(lambda: served(port, "live.example.com") == first.der, what="the new cert")
    added = time.monotonic() - began

    # A connection opened with the first certificate is untouched by the replacement.
    kept = Conn(connect(port, "live.example.com"))
    assert kept.get("/__gogeta/health").status == 200
    store(certs, "live.example.com", second)  # cert, then key: two writes
    wait_until(lambda: served(port, "live.example.com") == second.der, what="the replacement")
    assert kept.tls.getpeercert(binary_form=True) == first.der
    assert kept.get("/__gogeta/health").status == 200
    kept.close()

    certs.client().delete("/certs/live.example.com", recursive=True, dir=True)
    wait_until(lambda: served(port, "live.example.com") is None, what="the deletion")
    assert tls_state(proc)["hostnames"] == {}
    # Half-written replacements never counted as broken: nothing logged above INFO.
    assert "WARNING" not in proc.log()
    assert added < 5, f"a new certificate took {added:.2f}s to be served"


def test_broken_pairs_are_skipped_logged_once_and_shown(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    good, other = issue("good.example.com"), issue("mismatch.example.com")
    client = certs.client()
    store(certs, "good.example.com", good)
    client.write("/certs/bad.example.com/cert", BAD_PEM)
    client.write("/certs/bad.example.com/key", good.key)
    client.write("/certs/mismatch.example.com/cert", other.chain)
    client.write("/certs/mismatch.example.com/key", good.key)  # another certificate's key
    client.write("/certs/half.example.com/cert", other.chain)  # no key yet
    client.write("/certs/no*pe.example.com/cert", good.chain)
    client.write("/certs/no*pe.example.com/key", good.key)
    proc, port = tls_gogeta()

    assert served(port, "good.example.com") == good.der
    for name in ("bad.example.com", "mismatch.example.com", "half.example.com"):
        assert served(port, name) is None, name
    hostnames = tls_state(proc)["hostnames"]
    assert isinstance(hostnames, dict)
    assert hostnames["good.example.com"]["state"] == "ok"
    assert hostnames["bad.example.com"]["state"] == "skipped"
    assert "not a readable X.509 certificate" in hostnames["bad.example.com"]["reason"]
    assert hostnames["mismatch.example.com"]["reason"] == "the key does not match the certificate"
    assert hostnames["half.example.com"]["reason"] == "incomplete: no key"
    assert "one whole label" in hostnames["no*pe.example.com"]["reason"]

    # A later event elsewhere does not log the broken ones again.
    store(certs, "late.example.com", issue("late.example.com"))
    wait_until(lambda: served(port, "late.example.com") is not None)
    log = proc.log()
    assert log.count("certificate for bad.example.com skipped") == 1
    assert log.count("certificate for mismatch.example.com skipped") == 1
    # Keys are never shown nor logged.
    secret = good.key.splitlines()[1]
    assert secret not in log
    assert secret not in proc.get("/__gogeta/routes").text


def test_expiring_certificates_are_flagged_and_measured(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    import datetime

    soon = issue("soon.example.com", not_after=datetime.datetime.now() + datetime.timedelta(days=3))
    store(certs, "soon.example.com", soon)
    store(certs, "a.example.com", A)
    proc, port = tls_gogeta()
    wait_until(lambda: served(port, "soon.example.com") == soon.der)
    hostnames = tls_state(proc)["hostnames"]
    assert isinstance(hostnames, dict)
    assert hostnames["soon.example.com"]["state"] == "expiring"
    assert hostnames["soon.example.com"]["expiring_soon"] is True
    assert hostnames["a.example.com"]["expiring_soon"] is False
    metrics = proc.get("/__gogeta/metrics").text
    line = next(
        ln for ln in metrics.splitlines() if ln.startswith("gogeta_certificate_expiry_seconds{")
    )
    assert 'hostname="soon.example.com"' in line  # soonest first
    assert 2 * 86400 < float(line.split()[-1]) <= 3 * 86400
    assert 'gogeta_certificates{state="expiring"} 1.0' in metrics
    assert 'gogeta_certificates{state="ok"} 1.0' in metrics


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


def test_a_bad_default_certificate_stops_gogeta_at_start(
    gogeta: Start, certs: EtcdServer, tmp_path: Path
) -> None:
    cert_file, _ = A.write(tmp_path, "a")
    _, key_file = issue("other.test").write(tmp_path, "other")
    proc = gogeta(
        "-etcdAddress",
        certs.url,
        "-tlsPort",
        str(free_port()),
        "-tlsCertFile",
        cert_file,
        "-tlsKeyFile",
        key_file,
        wait=False,
    )
    assert proc.proc is not None
    assert proc.proc.wait(timeout=30) == 2
    assert "the key does not match the certificate" in proc.log()


def test_under_gunicorn_every_worker_serves_tls_and_follows_etcd(certs: EtcdServer) -> None:
    from tests.gunicorn_process import Gunicorn

    store(certs, "a.example.com", A)
    tls_port = free_port()
    server = Gunicorn(
        {"GOGETA_ETCD_ADDRESS": certs.url, "GOGETA_TLS_PORT": str(tls_port)}, workers=2
    )
    try:
        server.start()
        pids: set[int] = set()

        def both_workers_answer_over_tls() -> bool:
            answer = https_get(tls_port, "a.example.com", "/__gogeta/health")
            pids.add(int(json.loads(answer.body)["pid"]))
            return pids == server.worker_pids()

        wait_until(both_workers_answer_over_tls, timeout=30, what="both workers over TLS")
        # The plain port is still plain.
        assert request(server.port, "/__gogeta/health").status == 200

        fresh = issue("new.example.com")
        store(certs, "new.example.com", fresh)
        # Every worker follows etcd: ten handshakes in a row, whichever workers take them.
        wait_until(
            lambda: all(served(tls_port, "new.example.com") == fresh.der for _ in range(10)),
            what="every worker serving the new certificate",
        )
        assert "Traceback" not in server.log()
    finally:
        server.stop()


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
