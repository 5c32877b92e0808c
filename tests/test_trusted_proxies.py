"""`-trustedProxies`: whose X-Forwarded-* gogeta believes (README, "Trusted proxies").

The tests connect from 127.0.0.1. The default list (loopback and private ranges) trusts
them; `-trustedProxies 10.0.0.0/8` or an empty value makes the same client a stranger whose
forwarding headers are replaced by what gogeta saw itself. gogeta runs with the Dummy
resolver in front of a recording backend.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

import settings
from proxy.trust import MAX_REMEMBERED, TrustedPeers
from tests.support import (
    ROOT,
    Backend,
    GogetaProcess,
    RawServer,
    Start,
    exchange,
    read_request_head,
    through,
    wait_until,
)

URL_HEADER = "X-Public-Url"
SPOOFED = {
    "X-Forwarded-For": "203.0.113.7, 10.0.0.1",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "bank.example.org",
    "X-Forwarded-Port": "443",
}


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend() as b:
        yield b


def started(backend: Backend, *flags: str) -> Iterator[GogetaProcess]:
    proc = GogetaProcess(["-resolverType", "Dummy", "-dummyTarget", backend.url, *flags])
    yield proc.start()
    proc.stop()


@pytest.fixture(
    scope="module", params=["-trustedProxies=10.0.0.0/8, 192.168.0.0/16", "-trustedProxies="]
)
def stranger(request: pytest.FixtureRequest, backend: Backend) -> Iterator[GogetaProcess]:
    """gogeta for which 127.0.0.1 is not a proxy (a list without it, or an empty one)."""
    yield from started(backend, request.param, "-UrlHeaderParam", URL_HEADER)


@pytest.fixture(scope="module", params=[None, "-trustedProxies=127.0.0.1/32"])
def behind_proxy(request: pytest.FixtureRequest, backend: Backend) -> Iterator[GogetaProcess]:
    """gogeta for which 127.0.0.1 is a proxy (the default list, or one naming it)."""
    flags = [request.param] if request.param else []
    yield from started(backend, *flags, "-UrlHeaderParam", URL_HEADER)


@pytest.fixture(scope="module")
def ssl_stranger(backend: Backend) -> Iterator[GogetaProcess]:
    yield from started(backend, "-trustedProxies", "10.0.0.0/8", "-forceFwSsl")


@pytest.fixture(scope="module")
def ssl_behind_proxy(backend: Backend) -> Iterator[GogetaProcess]:
    yield from started(backend, "-forceFwSsl")


# --------------------------------------------------------------------------- the check itself


@pytest.mark.parametrize(
    ("address", "trusted"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),  # IPv4 through a dual-stack listener
        ("fd12:3456::1", True),
        ("fe80::1%eth0", False),  # a zone is not an address of the list
        ("11.0.0.1", False),
        ("", False),
        (None, False),
        ("not an address", False),
    ],
)
def test_trusted_peers(address: str | None, trusted: bool) -> None:
    peers = TrustedPeers(
        settings.parse(["-trustedProxies", "10.0.0.0/8,fc00::/7"], {}).trustedProxies
    )
    assert (address in peers) is trusted
    assert (address in peers) is trusted  # the remembered answer is the same


def test_trusted_peers_remember_a_bounded_number_of_addresses() -> None:
    peers = TrustedPeers(settings.parse([], {}).trustedProxies)
    for i in range(3 * MAX_REMEMBERED):
        assert f"198.18.{i // 256 % 256}.{i % 256}" not in peers
    assert "192.168.1.1" in peers
    assert len(peers._known) <= MAX_REMEMBERED


def test_an_empty_list_trusts_nobody() -> None:
    peers = TrustedPeers(settings.parse(["-trustedProxies="], {}).trustedProxies)
    assert "127.0.0.1" not in peers


# --------------------------------------------------------------------------- an untrusted peer


def test_spoofed_forwarding_headers_are_replaced(stranger: GogetaProcess, backend: Backend) -> None:
    stranger.get("/", host="shop.example.com", headers=SPOOFED)
    seen = backend.seen[-1]
    assert seen.header_all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header_all("X-Forwarded-Proto") == ["http"]
    assert seen.header_all("X-Forwarded-Host") == ["shop.example.com"]
    assert seen.header_all("X-Forwarded-Port") == [str(stranger.port)]


def test_the_url_header_is_built_from_what_gogeta_saw(
    stranger: GogetaProcess, backend: Backend
) -> None:
    stranger.get("/", host="shop.example.com", headers=SPOOFED)
    expected = f"http://shop.example.com:{stranger.port}/"
    assert backend.seen[-1].header_all(URL_HEADER) == [expected]


@pytest.mark.parametrize(
    "lines",
    [
        # repeated lines, odd case, and the underscore spelling WSGI maps to the same key
        b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.2\r\n",
        b"x-forwarded-for: 203.0.113.7\r\nX-FORWARDED-PROTO: https\r\n",
        b"X_Forwarded_For: 203.0.113.7\r\nX_Forwarded_Proto: https\r\nX_Forwarded_Port: 443\r\n",
    ],
)
def test_no_spelling_of_the_headers_gets_through(
    stranger: GogetaProcess, backend: Backend, lines: bytes
) -> None:
    before = len(backend.seen)
    answer = exchange(
        stranger.port,
        b"GET /raw HTTP/1.1\r\nHost: shop.example.com\r\n" + lines + b"Connection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert len(backend.seen) == before + 1
    seen = backend.seen[-1]
    assert seen.header_all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header_all("X-Forwarded-Proto") == ["http"]
    assert seen.header_all("X-Forwarded-Port") == [str(stranger.port)]


def test_force_ssl_is_not_bypassed_by_a_client_claiming_https(
    ssl_stranger: GogetaProcess, backend: Backend
) -> None:
    before = len(backend.seen)
    resp = ssl_stranger.get("/pay?x=1", host="shop.example.com", headers=SPOOFED)
    assert resp.status == 301
    assert resp.header("Location") == "https://shop.example.com/pay?x=1"
    answer = exchange(
        ssl_stranger.port,
        b"GET /pay HTTP/1.1\r\nHost: shop.example.com\r\nX_Forwarded_Proto: https\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 301"), answer
    assert len(backend.seen) == before  # nothing forwarded


def test_a_websocket_handshake_gets_the_same_treatment(gogeta: Start) -> None:
    heads: list[bytes] = []

    def decline(conn: socket.socket) -> None:
        heads.append(read_request_head(conn))
        conn.sendall(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
        )
        conn.close()

    with RawServer(decline) as raw:
        proxy = through(gogeta, raw.url, "-trustedProxies", "10.0.0.0/8")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(
                b"GET /socket HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nX-Forwarded-For: 203.0.113.7\r\n"
                b"X-Forwarded-Proto: https\r\n\r\n"
            )
            answer = b""
            while not answer.endswith(b"\r\n\r\nno") and (chunk := sock.recv(65536)):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer
    wait_until(lambda: heads, what="the backend to get the handshake")
    lines = heads[0].split(b"\r\n")
    assert [x for x in lines if x.lower().startswith(b"x-forwarded-for:")] == [
        b"X-Forwarded-For: 127.0.0.1"
    ]
    assert [x for x in lines if x.lower().startswith(b"x-forwarded-proto:")] == [
        b"X-Forwarded-Proto: http"
    ]


# --------------------------------------------------------------------------- a trusted proxy


def test_a_proxys_forwarding_headers_pass_and_for_is_appended(
    behind_proxy: GogetaProcess, backend: Backend
) -> None:
    behind_proxy.get("/", host="internal.example.com", headers=SPOOFED)
    seen = backend.seen[-1]
    assert seen.header_all("X-Forwarded-For") == ["203.0.113.7, 10.0.0.1, 127.0.0.1"]
    for name in ("X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port"):
        assert seen.header_all(name) == [SPOOFED[name]]
    assert seen.header_all(URL_HEADER) == ["https://internal.example.com/"]


def test_a_proxy_that_sends_none_gets_them_filled_in(
    behind_proxy: GogetaProcess, backend: Backend
) -> None:
    behind_proxy.get("/", host="shop.example.com")
    seen = backend.seen[-1]
    assert seen.header_all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header_all("X-Forwarded-Proto") == ["http"]
    assert seen.header_all("X-Forwarded-Host") == ["shop.example.com"]
    assert seen.header_all("X-Forwarded-Port") == [str(behind_proxy.port)]


def test_force_ssl_believes_a_proxy(ssl_behind_proxy: GogetaProcess, backend: Backend) -> None:
    assert ssl_behind_proxy.get("/", headers={"X-Forwarded-Proto": "https"}).status == 200
    assert ssl_behind_proxy.get("/", headers={"X-Forwarded-Proto": "http"}).status == 301
    assert ssl_behind_proxy.get("/").status == 301


# --------------------------------------------------------------------------- the setting


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["-trustedProxies", "10.0.0.0/33"], {}),
        (["-trustedProxies=10.0.0.0/8,proxy.lan"], {}),
        ([], {"GOGETA_TRUSTED_PROXIES": "10.0.0.300/32"}),
    ],
)
def test_a_bad_network_exits_2_naming_the_setting(argv: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "gogeta.py"), *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert ("-trustedProxies" if argv else "GOGETA_TRUSTED_PROXIES") in result.stderr
