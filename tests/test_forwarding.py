"""Forwarding (docs/behaviour.md §2.2, §2.4–§2.6): what the backend gets, what the client gets back.

gogeta runs with the Dummy resolver pointed at a recording backend on a real socket.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from contextlib import closing

import pytest

from tests.support import (
    Backend,
    GogetaProcess,
    RawServer,
    Reply,
    Seen,
    Start,
    exchange,
    read_request_head,
    through,
)


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


def test_hop_by_hop_response_headers_are_not_returned(gogeta: Start) -> None:
    def reply(seen: Seen) -> Reply:
        return (
            200,
            [
                ("Connection", "X-Backend-Hop"),
                ("X-Backend-Hop", "internal"),
                ("Keep-Alive", "timeout=5, max=100"),
                ("Trailer", "X-Checksum"),
                ("Upgrade", "h2c"),
                ("Proxy-Authenticate", "Basic"),
                ("X-End-To-End", "kept"),
            ],
            b"ok",
        )

    with Backend(reply) as backend:
        resp = through(gogeta, backend.url).get("/")
    assert resp.status == 200
    assert resp.body == b"ok"
    for name in ("X-Backend-Hop", "Keep-Alive", "Trailer", "Upgrade", "Proxy-Authenticate"):
        assert resp.header(name) is None, name
    assert "X-Backend-Hop" not in (resp.header("Connection") or "")
    assert resp.header("X-End-To-End") == "kept"


# --------------------------------------------------------------------------- responses


@pytest.mark.parametrize(
    ("code", "headers", "body"),
    [
        (201, [("Location", "/things/1")], b"created"),
        (204, [], b""),
        (304, [("ETag", '"v1"')], b""),
        (302, [("Location", "https://elsewhere.example/next?x=1")], b"moved"),
        (404, [("Content-Type", "application/json")], b'{"error": "backend 404"}'),
        (500, [("Content-Type", "text/plain")], b"backend exploded"),
        (503, [("Retry-After", "120")], b"backend busy"),
    ],
)
def test_backend_status_headers_and_body_come_back_unchanged(
    gogeta: Start, code: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    with Backend(lambda seen: (code, [*headers, ("X-From", "backend")], body)) as backend:
        proxy = through(gogeta, backend.url)
        with closing(http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)) as conn:
            # Twice on one connection: a body-less answer must not break the framing.
            for _ in range(2):
                conn.request("GET", "/", headers={"Host": "example.com"})
                resp = conn.getresponse()
                assert resp.status == code
                assert resp.read() == body
                assert resp.getheader("X-From") == "backend"
                for name, value in headers:
                    assert resp.getheader(name) == value


def test_304_with_the_representations_content_length(gogeta: Start) -> None:
    # RFC 9110 §8.6 lets a 304 carry the Content-Length a 200 would have had.
    reply: Reply = (304, [("ETag", '"v1"'), ("Content-Length", "1234")], b"")
    with Backend(lambda seen: reply) as backend:
        proxy = through(gogeta, backend.url)
        with closing(http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)) as conn:
            for _ in range(2):
                conn.request("GET", "/", headers={"Host": "example.com", "If-None-Match": '"v1"'})
                resp = conn.getresponse()
                assert resp.status == 304
                assert resp.getheader("ETag") == '"v1"'
                assert resp.read() == b""


def test_several_set_cookie_headers_are_preserved(gogeta: Start) -> None:
    cookies = ["a=1; Path=/", "b=2; HttpOnly", "c=3; Expires=Wed, 21 Oct 2037 07:28:00 GMT"]
    with Backend(lambda seen: (200, [("Set-Cookie", c) for c in cookies], b"ok")) as backend:
        resp = through(gogeta, backend.url).get("/")
    assert resp.header_all("Set-Cookie") == cookies


def test_head_with_content_length(gogeta: Start) -> None:
    def reply(seen: Seen) -> Reply:
        return 200, [("Content-Length", "1234"), ("Content-Type", "text/plain")], b""

    with Backend(reply) as backend:
        proxy = through(gogeta, backend.url)
        with closing(http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)) as conn:
            for _ in range(2):
                conn.request("HEAD", "/file", headers={"Host": "example.com"})
                resp = conn.getresponse()
                assert resp.status == 200
                assert resp.getheader("Content-Length") == "1234"
                assert resp.read() == b""
    assert [s.method for s in backend.seen] == ["HEAD", "HEAD"]


def test_head_of_a_chunked_resource_keeps_the_connection_usable(gogeta: Start) -> None:
    # A backend that would stream its GET answer announces `Transfer-Encoding: chunked`
    # on HEAD and sends no body; the client must not receive one either.
    def handle(conn: socket.socket) -> None:
        while head := read_request_head(conn):
            if head.startswith(b"HEAD"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with RawServer(handle) as raw:
        proxy = through(gogeta, raw.url)
        # Raw bytes: http.client would hide stray bytes after a HEAD answer in its buffer.
        received = exchange(
            proxy.port,
            b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        )
    head_answer, _, rest = received.partition(b"\r\n\r\n")
    assert head_answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest
    assert rest.endswith(b"\r\n\r\nok")


def test_interim_answers_are_skipped_and_never_taken_for_the_final_one(gogeta: Start) -> None:
    """A backend's 1xx before its answer (103 Early Hints, 102 Processing, a 100 it was
    not asked for) is dropped; taking it for the answer would leave the real one on the
    pooled connection, to be handed to the next request, maybe another client's."""

    def handle(conn: socket.socket) -> None:
        served = 0
        while head := read_request_head(conn):
            served += 1
            path = head.split(b" ")[1]
            conn.sendall(
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 102 Processing\r\n\r\n"
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)
            )

    with RawServer(handle) as raw:
        proxy = through(gogeta, raw.url)
        for i in range(3):  # over the same pooled backend connection
            resp = proxy.get(f"/answer{i}")
            assert (resp.status, resp.body) == (200, f"/answer{i}".encode())
            assert resp.header("Link") is None
        assert len(raw.connections) == 1


def test_endless_interim_answers_are_a_bad_gateway(gogeta: Start) -> None:
    def handle(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 100)

    with RawServer(handle) as raw:
        proxy = through(gogeta, raw.url)
        assert proxy.get("/").status == 502
        assert proxy.get("/__gogeta/health").status == 200  # and it keeps serving


def test_response_without_reason_phrase(gogeta: Start) -> None:
    def handle(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 \r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    with RawServer(handle) as raw:
        received = exchange(
            through(gogeta, raw.url).port,
            b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        )
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b"\r\n\r\nok")


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
