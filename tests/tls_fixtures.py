"""The TLS test files' gogeta: `-tlsPort` on a free port, reading `/certs` of the session's etcd.

`certs` is that etcd with `/certs` emptied around the test; `tls_gogeta(*flags)` starts
gogeta once its TLS port listens and its first load is done, and gives (process, TLS
port); `A` is a certificate for a.example.com (tests/pki.py). A test file imports each
fixture under its own name for pytest to find it there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.pki import issue
from tests.support import EtcdServer, GogetaProcess, Start, free_port, port_open, wait_until

A = issue("a.example.com")


@pytest.fixture
def certs(etcd: EtcdServer) -> Iterator[EtcdServer]:
    """The session's etcd with `/certs` emptied too."""
    etcd.wipe("/certs")
    yield etcd
    etcd.wipe("/certs")


Started = tuple[GogetaProcess, int]


TlsStart = Callable[..., "Started"]  # the `tls_gogeta` fixture


@pytest.fixture
def tls_gogeta(gogeta: Start, certs: EtcdServer) -> Callable[..., Started]:
    """gogeta with -tlsPort on a free port, reading `certs`; (process, TLS port)."""

    def start(*flags: str) -> Started:
        tls_port = free_port()
        proc = gogeta("-etcdAddress", certs.url, "-tlsPort", str(tls_port), *flags)
        wait_until(lambda: port_open(tls_port), what="the TLS port")
        wait_until(lambda: proc.get("/__gogeta/health").status == 200, what="the first load")
        return proc, tls_port

    return start
