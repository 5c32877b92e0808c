"""Status pages (docs/behaviour.md §3.2, §2.8): rendered from `templateDir`, right code and headers.

The first half renders every template directly (pure: no sockets); the second checks the
pages gogeta really answers with, and that `-templateDir` is what it serves.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.errors import BadGateway, BadRequest, GatewayTimeout, GogetaError, code_of
from proxy.pages import PAGES, REFRESHING, StatusPages, TemplateError
from resolvers.base import Status
from tests.support import (
    ROOT,
    GogetaProcess,
    RawServer,
    Response,
    Start,
    exchange,
    refused_port,
    through,
)

TEMPLATES = ROOT / "templates"
HTML = "text/html; charset=utf-8"

# docs/behaviour.md §3.2: status → HTTP code.
STATUS_CODES = [
    (Status.NOTFOUND, 404),
    (Status.STARTING, 503),
    (Status.PASSIVATED, 503),
    (Status.STOPPED, 500),
    (Status.ERROR, 500),
]
# The proxy's own pages and the error that answers with each.
PROXY_PAGES: list[tuple[type[GogetaError], str, int]] = [
    (BadRequest, "bad_request", 400),
    (BadGateway, "bad_gateway", 502),
    (GatewayTimeout, "gateway_timeout", 504),
    (GogetaError, "internal_error", 500),
]
EVERY_PAGE = [(s.value, code) for s, code in STATUS_CODES] + [(p, c) for _, p, c in PROXY_PAGES]


def heading_of(template: Path) -> str:
    """The text of a page template's `heading` block: what tells one page from another."""
    found = re.search(r"{% block heading %}(.*?){% endblock %}", template.read_text())
    assert found, template
    return found.group(1)


def test_every_page_is_covered() -> None:
    assert sorted(name for name, _ in EVERY_PAGE) == sorted(PAGES)


@pytest.mark.parametrize(("status", "code"), STATUS_CODES)
def test_status_codes(status: Status, code: int) -> None:
    assert code_of(status) == code


@pytest.mark.parametrize(("error", "page", "code"), PROXY_PAGES)
def test_each_proxy_error_names_its_page_and_code(
    error: type[GogetaError], page: str, code: int
) -> None:
    assert (error.page, error.code) == (page, code)


@pytest.mark.parametrize(("name", "code"), EVERY_PAGE)
def test_render(name: str, code: int) -> None:
    page = StatusPages(TEMPLATES).render(name, code, "shop.example.com")
    headers = dict(page.headers)
    assert page.status.split()[0] == str(code)
    assert headers["Content-Type"] == HTML
    assert headers["Content-Length"] == str(len(page.body))
    assert headers["Cache-Control"] == "no-store"
    text = page.body.decode("utf-8")
    assert text.startswith("<!doctype html>")
    assert heading_of(TEMPLATES / f"{name}.html") in text
    assert "shop.example.com" in text
    refreshes = '<meta http-equiv="refresh"' in text
    assert refreshes is (name in ("starting", "passivated"))
    assert ("Retry-After" in headers) is (code == 503)


def test_refreshing_pages_are_the_waiting_ones() -> None:
    assert REFRESHING == {"starting", "passivated"}


def test_hostname_is_escaped() -> None:
    page = StatusPages(TEMPLATES).render("notfound", 404, '<script>alert("x")</script>')
    assert b"<script>alert" not in page.body
    assert b"&lt;script&gt;" in page.body


def test_missing_template_is_refused(tmp_path: Path) -> None:
    shutil.copytree(TEMPLATES, tmp_path / "t")
    (tmp_path / "t" / "stopped.html").unlink()
    with pytest.raises(TemplateError, match="stopped.html"):
        StatusPages(tmp_path / "t")


def test_template_that_does_not_compile_is_refused(tmp_path: Path) -> None:
    shutil.copytree(TEMPLATES, tmp_path / "t")
    (tmp_path / "t" / "error.html").write_text("{% block heading %}unclosed")
    with pytest.raises(TemplateError, match="error.html"):
        StatusPages(tmp_path / "t")


# --------------------------------------------------------------------------- served pages


def assert_page(resp: Response, name: str, code: int, templates: Path = TEMPLATES) -> None:
    assert resp.status == code, resp.text
    assert resp.header("Content-Type") == HTML
    assert resp.header("Content-Length") == str(len(resp.body))
    assert heading_of(templates / f"{name}.html") in resp.text


@pytest.fixture(scope="module")
def proxy() -> Iterator[GogetaProcess]:
    """One gogeta for the module, in front of a port where nothing listens."""
    target = f"http://127.0.0.1:{refused_port()}"
    proc = GogetaProcess(["-resolverType", "Dummy", "-dummyTarget", target]).start()
    yield proc
    proc.stop()


def test_missing_host_is_bad_request(proxy: GogetaProcess) -> None:
    assert_page(proxy.get("/", host=None), "bad_request", 400)


@pytest.mark.parametrize(
    "host", ["", "exa mple.com", "a/b", "example.com:port", "example.com:123456", "x" * 300]
)
def test_invalid_host_is_bad_request(proxy: GogetaProcess, host: str) -> None:
    assert_page(proxy.get("/", host=host), "bad_request", 400)


def test_http10_request_without_host_is_bad_request(proxy: GogetaProcess) -> None:
    answer = exchange(proxy.port, b"GET / HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert heading_of(TEMPLATES / "bad_request.html").encode() in answer


def test_refused_backend_is_bad_gateway(proxy: GogetaProcess) -> None:
    assert_page(proxy.get("/"), "bad_gateway", 502)


def test_silent_backend_is_gateway_timeout(gogeta: Start) -> None:
    with RawServer(lambda conn: conn.recv(65536) and conn.recv(65536)) as raw:
        proxy = through(gogeta, raw.url, "-readTimeout", "0.5")
        assert_page(proxy.get("/"), "gateway_timeout", 504)


def test_static_404_is_the_notfound_page(proxy: GogetaProcess) -> None:
    assert_page(proxy.get("/__static__/nothing.css"), "notfound", 404)


# --------------------------------------------------------------------------- -templateDir


def test_template_dir_is_what_gogeta_serves(gogeta: Start, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    (templates / "bad_gateway.html").write_text(
        '{% extends "layout.html" %}{% block heading %}Our own 502 for {{ hostname }}{% endblock %}'
    )
    proxy = through(
        gogeta,
        f"http://127.0.0.1:{refused_port()}",
        "-templateDir",
        str(templates),
    )
    resp = proxy.get("/", host="shop.example.com")
    assert resp.status == 502
    assert "Our own 502 for shop.example.com" in resp.text
    # The other pages still come from the copy, unchanged.
    assert_page(proxy.get("/", host=None), "bad_request", 400, templates)


def run_gogeta(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "gogeta.py"), "-resolverType", "Dummy", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_template_dir_missing_a_template_exits_2(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    (templates / "gateway_timeout.html").unlink()
    result = run_gogeta("-port", "0", "-templateDir", str(templates))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "-templateDir" in result.stderr
    assert "gateway_timeout.html" in result.stderr


def test_template_dir_with_a_broken_template_exits_2(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    (templates / "passivated.html").write_text("{% if %}")
    result = run_gogeta("-port", "0", "-templateDir", str(templates))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "passivated.html" in result.stderr
