"""Fixtures shared by the test files: a real etcd for the session, gogeta processes."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pki import Authority
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
def start_etcd(api: str, tmp_path: Path) -> Iterator[Callable[..., EtcdServer]]:
    """Start etcd servers of this test alone; all are stopped after it (continued first).

    They serve the module's API unless `api` says; `tls=True`: https with client
    certificates required, of a CA made for that etcd (tests/pki.py). The other keywords
    are EtcdServer's.
    """
    started: list[EtcdServer] = []

    def start(api: str = api, tls: bool = False, **kw: Any) -> EtcdServer:
        directory = tmp_path / f"etcd-{len(started)}"
        files = Authority().etcd_files(directory / "pki") if tls else None
        server = EtcdServer(directory, api=api, tls=files, **kw)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()


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
