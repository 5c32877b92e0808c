"""The routing test files' shared gogeta and fixtures: one gogeta per module and etcd API.

`api` runs a module's tests against etcd's v2 API and against its v3 API (an etcd without
v2); `proxy` is a gogeta reading that etcd, with marker status pages (`page=NAME`, so a
test knows which page answered); `sync` is a `Barrier` (gogeta has applied every earlier
key). A test file imports each fixture under its own name for pytest to find it there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_routes import Barrier, marker_templates, named_backend, page_of
from tests.support import Backend, EtcdServer, GogetaProcess

DEFAULT_ROBOTS = "User-agent: *\nDisallow: /\n"


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return marker_templates(tmp_path_factory.mktemp("routing"))


@pytest.fixture(scope="module", params=["v2", "v3"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def proxy(etcd_server: EtcdServer, templates: Path) -> Iterator[GogetaProcess]:
    proc = GogetaProcess([*etcd_server.flags, "-templateDir", str(templates)])
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def ok_backend() -> Iterator[Backend]:
    with named_backend("ok") as backend:
        yield backend


@pytest.fixture
def sync(etcd: EtcdServer, ok_backend: Backend) -> Barrier:
    return Barrier(etcd.client(), ok_backend)


@pytest.fixture
def client(etcd: EtcdServer) -> Any:
    return etcd.client()


def answers(proxy: GogetaProcess, host: str, count: int, path: str = "/") -> list[str]:
    return [page_of(proxy.get(path, host=host)) for _ in range(count)]
