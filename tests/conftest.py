"""Fixtures shared by the test files: a real etcd for the session, gogeta processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support import EtcdServer, GogetaProcess


@pytest.fixture(scope="session")
def etcd_servers() -> Iterator[dict[str, EtcdServer]]:
    """One etcd per API for the session, started when a test first needs it."""
    servers: dict[str, EtcdServer] = {}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def api() -> str:
    """The etcd API of a module's tests: modules that run in both parametrize it."""
    return "v2"


@pytest.fixture(scope="module")
def etcd_server(api: str, etcd_servers: dict[str, EtcdServer]) -> EtcdServer:
    if api not in etcd_servers:
        etcd_servers[api] = EtcdServer(api=api).start()
    return etcd_servers[api]


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> Iterator[EtcdServer]:
    """The session's etcd, with the default routing directories emptied for this test."""
    etcd_server.wipe("/domains", "/services")
    yield etcd_server
    etcd_server.wipe("/domains", "/services")


@pytest.fixture
def gogeta(api: str) -> Iterator[Callable[..., GogetaProcess]]:
    """Start gogeta processes with the given flags; all are stopped after the test.

    They speak the module's etcd API (`GOGETA_ETCD_API`) unless the flags or `env` say.
    """
    started: list[GogetaProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> GogetaProcess:
        proc = GogetaProcess(list(args), {"GOGETA_ETCD_API": api, **(env or {})}).start(wait=wait)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
