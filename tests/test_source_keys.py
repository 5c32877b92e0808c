"""The sources' plain key writes (`get`, `create`, `put`, `delete`), in both etcd APIs.

What the certificate orders of the fleet rely on (docs/behaviour.md §10): a `create`
only one caller wins, a TTL that frees the key of a holder that died, a `delete` that
removes only the caller's own value. Against the session's real etcd, in process.
"""

from __future__ import annotations

import pytest

from resolvers.source import EtcdAccess, Source
from tests.support import EtcdServer, wait_until


@pytest.fixture(scope="module", params=["v2", "v3"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def source(etcd_server: EtcdServer) -> Source:
    etcd_server.wipe("/keys-test")
    access = EtcdAccess((etcd_server.url,))
    if etcd_server.api == "v3":
        from resolvers.etcd3 import V3Source

        return V3Source(access)
    from resolvers.etcd2 import V2Source

    return V2Source(access)


def test_put_then_get_and_a_missing_key_is_none(source: Source) -> None:
    assert source.get("/keys-test/a/b") is None
    source.put("/keys-test/a/b", "one")
    source.put("/keys-test/a/b", "two")
    assert source.get("/keys-test/a/b") == "two"


def test_create_is_won_once_and_delete_only_removes_its_own_value(source: Source) -> None:
    assert source.create("/keys-test/lock", "me") is True
    assert source.create("/keys-test/lock", "you") is False
    assert source.get("/keys-test/lock") == "me"
    assert source.delete("/keys-test/lock", "you") is False
    assert source.get("/keys-test/lock") == "me"
    assert source.delete("/keys-test/lock", "me") is True
    assert source.get("/keys-test/lock") is None
    assert source.delete("/keys-test/lock", "me") is False  # already gone
    assert source.create("/keys-test/lock", "you") is True


def test_a_created_key_with_a_ttl_expires(source: Source) -> None:
    assert source.create("/keys-test/expiring", "holder", ttl=2) is True
    assert source.create("/keys-test/expiring", "other", ttl=2) is False
    wait_until(lambda: source.get("/keys-test/expiring") is None, timeout=15, what="expiry")
    assert source.create("/keys-test/expiring", "other", ttl=2) is True
