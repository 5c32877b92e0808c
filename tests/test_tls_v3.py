"""Certificates from etcd's v3 API: the same live table as v2's (docs/behaviour.md §9).

The certificates' directory is mirrored through whichever source gogeta reads; v3 has keys
only, so a certificate goes when its keys do.
"""

from __future__ import annotations

import pytest

from tests.pki import issue
from tests.support import EtcdServer, Start, free_port, port_open, wait_until
from tests.tls_support import served, store


@pytest.fixture(scope="module")
def api() -> str:
    return "v3"


def test_certificates_arrive_change_and_go_through_v3(gogeta: Start, etcd: EtcdServer) -> None:
    etcd.wipe("/certs")
    tls_port = free_port()
    proc = gogeta(*etcd.flags, "-tlsPort", str(tls_port))
    wait_until(lambda: port_open(tls_port), what="the TLS port")
    wait_until(lambda: proc.get("/__gogeta/health").status == 200, what="the first load")
    assert served(tls_port, "v3.example.com") is None

    first, second = issue("v3.example.com"), issue("v3.example.com")
    store(etcd, "v3.example.com", first)
    wait_until(lambda: served(tls_port, "v3.example.com") == first.der, what="the new cert")
    store(etcd, "v3.example.com", second)
    wait_until(lambda: served(tls_port, "v3.example.com") == second.der, what="the replacement")

    client = etcd.client()
    client.delete("/certs/v3.example.com/cert")
    client.delete("/certs/v3.example.com/key")
    wait_until(lambda: served(tls_port, "v3.example.com") is None, what="the deletion")
    etcd.wipe("/certs")
