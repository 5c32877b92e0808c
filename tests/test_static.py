"""`/__static__/{file}` (docs/behaviour.md §2.3): files in `templateDir/__static__/`, none outside.

Anything else under the prefix is the notfound page (404), whatever the method: POST and
friends are 404 too, as for a file that does not exist.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, GogetaProcess, refused_port

CSS = (ROOT / "templates" / "__static__" / "gogeta.css").read_bytes()


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of templates/ with traps: a symlink out, a directory, a secret beside it."""
    root = tmp_path_factory.mktemp("static")
    (root / "secret.txt").write_text("outside the static folder")
    templates = root / "templates"
    shutil.copytree(ROOT / "templates", templates)
    static = templates / "__static__"
    (static / "sub").mkdir()
    (static / "sub" / "inner.js").write_text("console.log(1)")
    (static / "escape.txt").symlink_to(root / "secret.txt")
    (static / "escape_dir").symlink_to(root)
    (static / "inside.css").symlink_to(static / "gogeta.css")  # a link that stays inside
    return templates


@pytest.fixture(scope="module")
def proxy(templates: Path) -> Iterator[GogetaProcess]:
    target = f"http://127.0.0.1:{refused_port()}"
    proc = GogetaProcess(
        ["-resolverType", "Dummy", "-dummyTarget", target, "-templateDir", str(templates)]
    )
    yield proc.start()
    proc.stop()


def raw_get(port: int, target: bytes) -> bytes:
    """GET with a request target sent byte for byte (http.client would refuse some)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_css_is_served(proxy: GogetaProcess) -> None:
    resp = proxy.get("/__static__/gogeta.css")
    assert resp.status == 200
    assert resp.header("Content-Type") == "text/css; charset=utf-8"
    assert resp.header("Content-Length") == str(len(CSS))
    assert resp.header("X-Content-Type-Options") == "nosniff"
    assert resp.body == CSS


def test_head_has_headers_and_no_body(proxy: GogetaProcess) -> None:
    resp = proxy.get("/__static__/gogeta.css", method="HEAD")
    assert resp.status == 200
    assert resp.header("Content-Length") == str(len(CSS))
    assert resp.body == b""


def test_subdirectory_and_inner_symlink(proxy: GogetaProcess) -> None:
    resp = proxy.get("/__static__/sub/inner.js")
    assert (resp.status, resp.body) == (200, b"console.log(1)")
    assert resp.header("Content-Type") in (
        "text/javascript; charset=utf-8",
        "application/javascript; charset=utf-8",
    )
    assert proxy.get("/__static__/inside.css").body == CSS


@pytest.mark.parametrize(
    "target",
    [
        "/__static__/",
        "/__static__/nothing.css",
        "/__static__/sub",
        "/__static__/sub/",
        "/__static__/../gogeta.py",
        "/__static__/../../secret.txt",
        "/__static__/%2e%2e/notfound.html",
        "/__static__/%2E%2E/%2E%2E/secret.txt",
        "/__static__/sub%2F..%2F..%2Fnotfound.html",
        "/__static__/sub/%2F../../notfound.html",
        "/__static__//etc/passwd",
        "/__static__/%2Fetc%2Fpasswd",
        "/__static__/./gogeta.css",
        "/__static__/escape.txt",
        "/__static__/escape_dir/secret.txt",
        "/__static__/gogeta.css%00.txt",
        "/__static__/gogeta.css/",
    ],
)
def test_outside_or_not_a_file_is_404(proxy: GogetaProcess, target: str) -> None:
    answer = raw_get(proxy.port, target.encode())
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
    assert b"outside the static folder" not in answer
    assert b"root:" not in answer


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_404(proxy: GogetaProcess, method: str) -> None:
    resp = proxy.get("/__static__/gogeta.css", method=method, body=b"x")
    assert resp.status == 404
    assert resp.header("Content-Type") == "text/html; charset=utf-8"


def test_force_ssl_redirects_assets_too(templates: Path) -> None:
    # forceFwSsl redirects everything, assets included (docs/behaviour.md §2.2 comes before §2.3).
    proc = GogetaProcess(
        ["-resolverType", "Dummy", "-templateDir", str(templates), "-forceFwSsl"]
    ).start()
    try:
        resp = proc.get("/__static__/gogeta.css")
        assert resp.status == 301
        assert resp.header("Location") == "https://example.com/__static__/gogeta.css"
    finally:
        proc.stop()
