"""Failing backends (docs/behaviour.md §2.8): each failure is a page or a cut connection, no hang,
and gogeta keeps serving afterwards.

The misbehaving backends are raw sockets scripted in a few lines; one path of each answers
properly (`/ok`), so the same gogeta shows it still works after the failure.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import (
    ROOT,
    GogetaProcess,
    RawServer,
    Response,
    Start,
    read_request_head,
    refused_port,
    through,
    wait_until,
)

Handler = Callable[[socket.socket], None]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


def misbehaving(broken: Handler) -> Handler:
    """A backend whose `/ok` answers properly and whose other paths run `broken`."""

    def handle(conn: socket.socket) -> None:
        while head := read_request_head(conn):
            if head.startswith((b"GET /ok ", b"HEAD /ok ")):
                conn.sendall(OK)
            else:
                broken(conn)
                return

    return handle


def never_answers(conn: socket.socket) -> None:
    conn.recv(1)  # blocks until the peer gives up or the server stops


def closes(conn: socket.socket) -> None:
    conn.close()


def resets(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def talks_nonsense(conn: socket.socket) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    conn.close()


def closes_mid_body(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    conn.close()


def closes_mid_chunks(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 1000)
    conn.sendall(b"\r\n")
    conn.close()


def stalls_mid_body(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    conn.recv(1)


def stalls_after_headers(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    conn.recv(1)


def closes_after_headers(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    conn.close()


def assert_still_serves(proxy: GogetaProcess) -> None:
    resp = proxy.get("/ok")
    assert (resp.status, resp.body) == (200, b"ok")


def assert_page(resp: Response, code: int) -> None:
    assert resp.status == code
    assert resp.header("Content-Type") == "text/html; charset=utf-8"
    assert f"<strong>{code}</strong>".encode() in resp.body or str(code).encode() in resp.body


# --------------------------------------------------------------------------- before the answer


def test_connection_refused_is_502(gogeta: Start) -> None:
    proxy = through(gogeta, f"http://127.0.0.1:{refused_port()}")
    for _ in range(3):
        assert_page(proxy.get("/"), 502)
    assert "upstream" in proxy.log()


def test_backend_that_never_answers_is_504_after_read_timeout(gogeta: Start) -> None:
    with RawServer(misbehaving(never_answers)) as raw:
        proxy = through(gogeta, raw.url, "-readTimeout", "0.5")
        started = time.monotonic()
        resp = proxy.get("/slow")
        elapsed = time.monotonic() - started
        assert_page(resp, 504)
        assert 0.4 < elapsed < 5
        assert_still_serves(proxy)


@pytest.mark.parametrize("broken", [closes, resets, talks_nonsense], ids=lambda f: f.__name__)
def test_backend_failing_before_answering_is_502(gogeta: Start, broken: Handler) -> None:
    with RawServer(misbehaving(broken)) as raw:
        proxy = through(gogeta, raw.url)
        for method in ("GET", "POST"):
            assert_page(proxy.get("/broken", method=method, body=b"data"), 502)
        assert_still_serves(proxy)


# Nothing of the answer has reached the client while gogeta waits for the first body block,
# so a failure there can still be a page.
def test_backend_stalling_before_the_body_is_504(gogeta: Start) -> None:
    with RawServer(misbehaving(stalls_after_headers)) as raw:
        proxy = through(gogeta, raw.url, "-readTimeout", "0.5")
        assert_page(proxy.get("/broken"), 504)
        assert_still_serves(proxy)


def test_backend_closing_before_the_body_is_502(gogeta: Start) -> None:
    with RawServer(misbehaving(closes_after_headers)) as raw:
        proxy = through(gogeta, raw.url)
        assert_page(proxy.get("/broken"), 502)
        assert_still_serves(proxy)


# --------------------------------------------------------------------------- during the body


def get_truncated(port: int) -> bytes:
    """GET /broken and return what arrived; fail if the answer looks complete."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/broken", headers={"Host": "example.com"})
        resp = conn.getresponse()
        assert resp.status == 200  # already sent when the backend failed
        with pytest.raises(http.client.IncompleteRead) as caught:
            resp.read()
        return caught.value.partial
    finally:
        conn.close()


@pytest.mark.parametrize("broken", [closes_mid_body, closes_mid_chunks], ids=lambda f: f.__name__)
def test_backend_closing_mid_body_cuts_the_client(gogeta: Start, broken: Handler) -> None:
    with RawServer(misbehaving(broken)) as raw:
        proxy = through(gogeta, raw.url)
        partial = get_truncated(proxy.port)
        assert partial == b"x" * len(partial)
        assert len(partial) <= 1000
        assert_still_serves(proxy)
        wait_until(lambda: "mid-body" in proxy.log(), what="the mid-body failure logged")


def test_backend_stalling_mid_body_cuts_the_client_after_read_timeout(gogeta: Start) -> None:
    with RawServer(misbehaving(stalls_mid_body)) as raw:
        proxy = through(gogeta, raw.url, "-readTimeout", "0.5")
        started = time.monotonic()
        get_truncated(proxy.port)
        assert time.monotonic() - started < 5
        assert_still_serves(proxy)


def test_keep_alive_client_connection_survives_other_failures(gogeta: Start) -> None:
    with RawServer(misbehaving(closes)) as raw:
        proxy = through(gogeta, raw.url)
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            for path, status in [("/ok", 200), ("/broken", 502), ("/ok", 200), ("/broken", 502)]:
                conn.request("GET", path, headers={"Host": "example.com"})
                resp = conn.getresponse()
                resp.read()
                assert resp.status == status
        finally:
            conn.close()


# --------------------------------------------------------------------------- inside gogeta


def failing_templates(tmp_path: Path, internal_error: str) -> Path:
    """A template copy whose 502 page fails at render time (an undefined variable)."""
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "bad_gateway.html").write_text(
        '{% extends "layout.html" %}{% block message %}{{ no_such_variable }}{% endblock %}'
    )
    (templates / "internal_error.html").write_text(internal_error)
    return templates


def test_unexpected_error_is_500_page_with_traceback_only_in_the_log(
    gogeta: Start, tmp_path: Path
) -> None:
    templates = failing_templates(
        tmp_path, '{% extends "layout.html" %}{% block heading %}Custom 500 page{% endblock %}'
    )
    proxy = through(
        gogeta,
        f"http://127.0.0.1:{refused_port()}",
        "-templateDir",
        str(templates),
    )
    for _ in range(2):
        resp = proxy.get("/")
        assert_page(resp, 500)
        assert "Custom 500 page" in resp.text
        assert "Traceback" not in resp.text
        assert "no_such_variable" not in resp.text
    log = wait_until(lambda: proxy.log() if "no_such_variable" in proxy.log() else "")
    assert "Traceback (most recent call last)" in log
    assert "UndefinedError" in log
    # Still serving: the static assets and the other pages.
    assert proxy.get("/__static__/gogeta.css").status == 200
    assert proxy.get("/", host=None).status == 400


def test_internal_error_page_that_fails_too_gives_the_built_in_500(
    gogeta: Start, tmp_path: Path
) -> None:
    templates = failing_templates(tmp_path, "{{ also_undefined }}")
    proxy = through(
        gogeta,
        f"http://127.0.0.1:{refused_port()}",
        "-templateDir",
        str(templates),
    )
    resp = proxy.get("/")
    assert_page(resp, 500)
    assert "Traceback" not in resp.text
    assert "also_undefined" in wait_until(proxy.log)
    assert proxy.get("/", host=None).status == 400
