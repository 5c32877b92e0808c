"""Fixtures shared by the test files: a real etcd for the session, gogeta processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support import EtcdServer, GogetaProcess


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    server = EtcdServer().start()
    yield server
    server.stop()


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> Iterator[EtcdServer]:
    """The session's etcd, with the default routing directories emptied for this test."""
    etcd_server.wipe("/domains", "/services")
    yield etcd_server
    etcd_server.wipe("/domains", "/services")


@pytest.fixture
def gogeta() -> Iterator[Callable[..., GogetaProcess]]:
    """Start gogeta processes with the given flags; all are stopped after the test."""
    started: list[GogetaProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> GogetaProcess:
        proc = GogetaProcess(list(args), env or {}).start(wait=wait)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
