"""The shortest path through gogeta: one request forwarded by the Dummy resolver."""

from __future__ import annotations

from tests.support import Backend, Start, through


def test_dummy_resolver_forwards_to_its_target(gogeta: Start) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/")
        resp = proxy.get("/hello?x=1", host="shop.example.com")
    assert resp.status == 200
    assert resp.body == b"GET /hello?x=1"
    assert backend.seen[0].header("Host") == "shop.example.com"
