"""Forwarding (docs/behaviour.md §2.2, §2.4–§2.6): what the backend gets.

gogeta runs with the Dummy resolver pointed at a recording backend on a real socket: the
request line, body and headers that reach it, X-Forwarded-*, the hop-by-hop headers
dropped, -forceFwSsl and -UrlHeaderParam. What the client gets back is
tests/test_forwarding_responses.py.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from contextlib import closing

import pytest

from tests.support import Backend, GogetaProcess, Start, read_request_head, through


# One echo backend and one gogeta in front of it serve every test that needs no special
# flags: starting a process per test would make this file several times slower.
@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend() as b:
        yield b


def shared_proxy(backend: Backend, *flags: str) -> Iterator[GogetaProcess]:
    proc = GogetaProcess(["-resolverType", "Dummy", "-dummyTarget", backend.url, *flags])
    yield proc.start()
    proc.stop()


@pytest.fixture(scope="module")
def proxy(backend: Backend) -> Iterator[GogetaProcess]:
    yield from shared_proxy(backend)


@pytest.fixture(scope="module")
def ssl_proxy(backend: Backend) -> Iterator[GogetaProcess]:
    yield from shared_proxy(backend, "-forceFwSsl")


@pytest.fixture(scope="module")
def url_proxy(backend: Backend) -> Iterator[GogetaProcess]:
    yield from shared_proxy(backend, "-UrlHeaderParam", "X-Public-Url")


# --------------------------------------------------------------------------- request line, body


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS", "POST", "PUT", "PATCH"])
def test_method_path_query_and_body_pass_through(
    proxy: GogetaProcess, backend: Backend, method: str
) -> None:
    body = b"" if method in ("GET", "DELETE", "OPTIONS") else b"name=gogeta&\x00\xff binary"
    # %2F must stay encoded: decoding it would change which resource the backend serves.
    raw = "/a%2Fb/c%20d;p=1/%7Euser?q=%2F&x=1+2&empty="
    resp = proxy.get(raw, method=method, body=body or None)
    assert resp.status == 200
    seen = backend.seen[-1]
    assert seen.method == method
    assert seen.path == raw
    assert seen.body == body
    assert resp.body == f"{method} {raw}".encode()


def test_client_host_reaches_the_backend(proxy: GogetaProcess, backend: Backend) -> None:
    proxy.get("/", host="Shop.Example.com:8443")
    assert backend.seen[-1].header_all("Host") == ["Shop.Example.com:8443"]


def test_only_x_forwarded_headers_are_added(proxy: GogetaProcess, backend: Backend) -> None:
    proxy.get("/", headers={"Accept": "text/html", "Cookie": "a=1; b=2", "User-Agent": "ua/1"})
    names = sorted(k.lower() for k, _ in backend.seen[-1].headers)
    assert names == sorted(
        [
            "host",
            "accept",
            "cookie",
            "user-agent",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
        ]
    )
    assert backend.seen[-1].header("Cookie") == "a=1; b=2"
    assert backend.seen[-1].header("User-Agent") == "ua/1"


def test_chunked_request_body(proxy: GogetaProcess, backend: Backend) -> None:
    chunks = [b"first,", b"x" * 100_000, b",last"]
    resp = proxy.get("/upload", method="POST", body=iter(chunks))
    assert resp.status == 200
    assert backend.seen[-1].body == b"".join(chunks)


def test_empty_chunked_request_body(proxy: GogetaProcess, backend: Backend) -> None:
    resp = proxy.get("/upload", method="POST", body=iter([]))
    assert resp.status == 200
    assert backend.seen[-1].body == b""


def test_expect_100_continue(proxy: GogetaProcess, backend: Backend) -> None:
    body = b"payload after the interim response"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            b"PUT /up HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        interim = read_request_head(sock)  # reads up to the blank line
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        sock.sendall(body)
        final = http.client.HTTPResponse(sock)
        final.begin()
        assert final.status == 200
        final.read()
    assert backend.seen[-1].body == body
    assert backend.seen[-1].header("Expect") is None


# --------------------------------------------------------------------------- uri-style targets


@pytest.mark.parametrize(
    ("base", "requested", "expected"),
    [
        ("/base", "/x/y", "/base/x/y"),
        ("/base/", "/x/y", "/base/x/y"),
        ("/base", "/", "/base/"),
        ("/base", "/x?b=2", "/base/x?b=2"),
        ("/base?a=1", "/x?b=2", "/base/x?a=1&b=2"),
        ("/base?a=1", "/x", "/base/x?a=1"),
        ("/?a=1", "/x?b=2", "/x?a=1&b=2"),
        ("", "/x%2Fy", "/x%2Fy"),
    ],
)
def test_target_path_and_query_are_joined(
    gogeta: Start, backend: Backend, base: str, requested: str, expected: str
) -> None:
    proxy = through(gogeta, backend.url + base)
    assert proxy.get(requested).status == 200
    assert backend.seen[-1].path == expected


# --------------------------------------------------------------------------- X-Forwarded-*


def test_x_forwarded_for_gets_the_client_address(proxy: GogetaProcess, backend: Backend) -> None:
    proxy.get("/")
    assert backend.seen[-1].header_all("X-Forwarded-For") == ["127.0.0.1"]
    proxy.get("/", headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.1"})
    assert backend.seen[-1].header_all("X-Forwarded-For") == ["203.0.113.7, 10.0.0.1, 127.0.0.1"]


def test_x_forwarded_proto_host_port_set_when_absent(
    proxy: GogetaProcess, backend: Backend
) -> None:
    proxy.get("/", host="shop.example.com")
    seen = backend.seen[-1]
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == "shop.example.com"
    assert seen.header("X-Forwarded-Port") == str(proxy.port)


def test_x_forwarded_proto_host_port_kept_when_present(
    proxy: GogetaProcess, backend: Backend
) -> None:
    sent = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "public.example.org",
        "X-Forwarded-Port": "443",
    }
    proxy.get("/", host="internal.example.com", headers=sent)
    seen = backend.seen[-1]
    for name, value in sent.items():
        assert seen.header_all(name) == [value]


# --------------------------------------------------------------------------- hop-by-hop


def test_hop_by_hop_request_headers_are_not_forwarded(
    proxy: GogetaProcess, backend: Backend
) -> None:
    proxy.get(
        "/",
        headers={
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Trailer": "X-Checksum",
            "Upgrade": "h2c",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Proxy-Connection": "keep-alive",
            "X-End-To-End": "kept",
        },
    )
    seen = backend.seen[-1]
    for name in (
        "X-Private-Hop",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Connection",
    ):
        assert seen.header(name) is None, name
    # The backend connection's own Connection header is urllib3's business, never the client's.
    assert "X-Private-Hop" not in (seen.header("Connection") or "")
    assert seen.header("X-End-To-End") == "kept"


# --------------------------------------------------------------------------- forceFwSsl


@pytest.mark.parametrize(
    ("host", "path", "location"),
    [
        ("shop.example.com", "/", "https://shop.example.com/"),
        (
            "www.Shop.Example.com:8080",
            "/a%2Fb/c?x=1&y=%20",
            "https://shop.example.com/a%2Fb/c?x=1&y=%20",
        ),
        ("shop.example.com", "/p?", "https://shop.example.com/p"),
    ],
)
def test_force_ssl_redirects_plain_http(
    ssl_proxy: GogetaProcess, backend: Backend, host: str, path: str, location: str
) -> None:
    before = len(backend.seen)
    for headers in ({}, {"X-Forwarded-Proto": "http"}):
        resp = ssl_proxy.get(path, host=host, headers=headers)
        assert resp.status == 301
        assert resp.header("Location") == location
    resp = ssl_proxy.get(path, host=host, method="POST", body=b"data")
    assert resp.status == 301
    assert len(backend.seen) == before  # nothing forwarded


def test_force_ssl_forwards_https(ssl_proxy: GogetaProcess, backend: Backend) -> None:
    resp = ssl_proxy.get("/secure?x=1", headers={"X-Forwarded-Proto": "https"})
    assert resp.status == 200
    assert backend.seen[-1].path == "/secure?x=1"


def test_force_ssl_off_by_default(proxy: GogetaProcess) -> None:
    assert proxy.get("/").status == 200


# --------------------------------------------------------------------------- UrlHeaderParam


@pytest.mark.parametrize(
    ("host", "forwarded", "expected"),
    [
        ("shop.example.com", {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "443"}, "https://shop.example.com/"),
        ("shop.example.com", {"X-Forwarded-Proto": "http", "X-Forwarded-Port": "80"}, "http://shop.example.com/"),
        ("shop.example.com:8443", {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "8443"}, "https://shop.example.com:8443/"),
        ("shop.example.com", {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "80"}, "https://shop.example.com:80/"),
    ],
)  # fmt: skip
def test_url_header_param(
    url_proxy: GogetaProcess, backend: Backend, host: str, forwarded: dict[str, str], expected: str
) -> None:
    url_proxy.get("/", host=host, headers=forwarded)
    assert backend.seen[-1].header_all("X-Public-Url") == [expected]


def test_url_header_param_without_forwarded_headers_uses_our_port(
    url_proxy: GogetaProcess, backend: Backend
) -> None:
    url_proxy.get("/", host="shop.example.com")
    expected = f"http://shop.example.com:{url_proxy.port}/"
    assert backend.seen[-1].header_all("X-Public-Url") == [expected]


def test_url_header_param_replaces_the_clients(url_proxy: GogetaProcess, backend: Backend) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "443"}
    url_proxy.get("/", headers={**forwarded, "x-public-url": "https://attacker.example/"})
    assert backend.seen[-1].header_all("X-Public-Url") == ["https://example.com/"]


def test_url_header_param_off_by_default(proxy: GogetaProcess, backend: Backend) -> None:
    proxy.get("/", headers={"X-Public-Url": "from-client"})
    assert backend.seen[-1].header_all("X-Public-Url") == ["from-client"]


# --------------------------------------------------------------------------- keep-alive


def test_many_requests_on_one_client_connection(proxy: GogetaProcess, backend: Backend) -> None:
    with closing(http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)) as conn:
        for i in range(20):
            conn.request("POST", f"/n/{i}", body=b"x" * i, headers={"Host": "example.com"})
            resp = conn.getresponse()
            assert resp.read() == f"POST /n/{i}".encode()
    assert [s.body for s in backend.seen[-20:]] == [b"x" * i for i in range(20)]
