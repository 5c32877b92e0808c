"""API clients (XHR, or an Accept without text/html) get JSON answers, browsers get pages."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support import GogetaProcess, refused_port


@pytest.fixture(scope="module")
def proxy() -> Iterator[GogetaProcess]:
    from tests.support import GogetaProcess

    target = f"http://127.0.0.1:{refused_port()}/"
    proc = GogetaProcess(["-resolverType", "Dummy", "-dummyTarget", target]).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize(
    "headers",
    [{"Accept": "application/json"}, {"Accept": "*/*"}, {"X-Requested-With": "XMLHttpRequest"}],
)
def test_api_clients_get_json(proxy: GogetaProcess, headers: dict[str, str]) -> None:
    resp = proxy.get("/api", host="api.test", headers=headers)
    assert resp.status == 502
    assert resp.header("Content-Type") == "application/json"
    document = json.loads(resp.body)
    assert document == {
        "status": "bad_gateway",
        "code": 502,
        "message": "Bad Gateway",
        "host": "api.test",
    }


@pytest.mark.parametrize("headers", [{}, {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}])
def test_browsers_get_the_page(proxy: GogetaProcess, headers: dict[str, str]) -> None:
    resp = proxy.get("/", host="api.test", headers=headers)
    assert resp.status == 502
    assert resp.header("Content-Type") == "text/html; charset=utf-8"
    assert b"<html" in resp.body
