"""TLS on `-tlsPort` (docs/behaviour.md §9): certificates from etcd chosen by SNI, live.

gogeta runs as a process against the session's real etcd (tests/tls_fixtures.py); the
certificates are made by the tests (tests/pki.py) and written under `/certs` as an
operator writes them; clients are the standard library's TLS, and they check which
certificate they got: the name's, a wildcard's or the default, added, replaced and
deleted live, broken pairs skipped, expiry shown, under gunicorn too. What goes over the
connections is tests/test_tls_connections.py.
"""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path

import pytest

from tests.pki import issue
from tests.support import EtcdServer, GogetaProcess, Start, free_port, request, wait_until
from tests.tls_fixtures import A, TlsStart

# The fixtures, imported under their own names so that pytest finds them here.
from tests.tls_fixtures import certs as certs
from tests.tls_fixtures import tls_gogeta as tls_gogeta
from tests.tls_support import Conn, connect, https_get, served, store

WILDCARD = issue("*.example.com")
DEFAULT = issue("default.localhost")
BAD_PEM = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


def tls_state(proc: GogetaProcess) -> dict[str, object]:
    state: dict[str, object] = json.loads(proc.get("/__gogeta/routes").body)["tls"]
    return state


def test_sni_picks_the_exact_name_then_a_one_label_wildcard_then_the_default(
    tls_gogeta: TlsStart, certs: EtcdServer, tmp_path: Path
) -> None:
    store(certs, "a.example.com", A)
    store(certs, "*.example.com", WILDCARD)
    cert_file, key_file = DEFAULT.write(tmp_path, "default")
    _, port = tls_gogeta("-tlsCertFile", cert_file, "-tlsKeyFile", key_file)
    wait_until(lambda: served(port, "a.example.com") == A.der, what="a.example.com served")
    assert served(port, "A.Example.COM") == A.der  # names compare in lower case
    assert served(port, "b.example.com") == WILDCARD.der
    # One label only, and never the bare domain (RFC 6125 §6.4.3).
    assert served(port, "x.b.example.com") == DEFAULT.der
    assert served(port, "example.com") == DEFAULT.der
    assert served(port, "unknown.test") == DEFAULT.der
    assert served(port, None) == DEFAULT.der  # a client without SNI


def test_without_a_default_unknown_names_are_refused_and_the_rest_served(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    store(certs, "a.example.com", A)
    proc, port = tls_gogeta()
    wait_until(lambda: served(port, "a.example.com") == A.der)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        connect(port, "nobody.test")
    with pytest.raises(ssl.SSLError):
        connect(port, None)
    assert served(port, "a.example.com") == A.der  # the process serves on
    assert proc.proc is not None and proc.proc.poll() is None


def test_certificates_are_added_replaced_and_deleted_live(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    proc, port = tls_gogeta()
    assert served(port, "live.example.com") is None
    first, second = issue("live.example.com"), issue("live.example.com")

    began = time.monotonic()
    store(certs, "live.example.com", first)
    wait_until(lambda: served(port, "live.example.com") == first.der, what="the new cert")
    added = time.monotonic() - began

    # A connection opened with the first certificate is untouched by the replacement.
    kept = Conn(connect(port, "live.example.com"))
    assert kept.get("/__gogeta/health").status == 200
    store(certs, "live.example.com", second)  # cert, then key: two writes
    wait_until(lambda: served(port, "live.example.com") == second.der, what="the replacement")
    assert kept.tls.getpeercert(binary_form=True) == first.der
    assert kept.get("/__gogeta/health").status == 200
    kept.close()

    certs.client().delete("/certs/live.example.com", recursive=True, dir=True)
    wait_until(lambda: served(port, "live.example.com") is None, what="the deletion")
    assert tls_state(proc)["hostnames"] == {}
    # Half-written replacements never counted as broken: nothing logged above INFO.
    assert "WARNING" not in proc.log()
    assert added < 5, f"a new certificate took {added:.2f}s to be served"


def test_broken_pairs_are_skipped_logged_once_and_shown(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    good, other = issue("good.example.com"), issue("mismatch.example.com")
    client = certs.client()
    store(certs, "good.example.com", good)
    client.write("/certs/bad.example.com/cert", BAD_PEM)
    client.write("/certs/bad.example.com/key", good.key)
    client.write("/certs/mismatch.example.com/cert", other.chain)
    client.write("/certs/mismatch.example.com/key", good.key)  # another certificate's key
    client.write("/certs/half.example.com/cert", other.chain)  # no key yet
    client.write("/certs/no*pe.example.com/cert", good.chain)
    client.write("/certs/no*pe.example.com/key", good.key)
    proc, port = tls_gogeta()

    assert served(port, "good.example.com") == good.der
    for name in ("bad.example.com", "mismatch.example.com", "half.example.com"):
        assert served(port, name) is None, name
    hostnames = tls_state(proc)["hostnames"]
    assert isinstance(hostnames, dict)
    assert hostnames["good.example.com"]["state"] == "ok"
    assert hostnames["bad.example.com"]["state"] == "skipped"
    assert "not a readable X.509 certificate" in hostnames["bad.example.com"]["reason"]
    assert hostnames["mismatch.example.com"]["reason"] == "the key does not match the certificate"
    assert hostnames["half.example.com"]["reason"] == "incomplete: no key"
    assert "one whole label" in hostnames["no*pe.example.com"]["reason"]

    # A later event elsewhere does not log the broken ones again.
    store(certs, "late.example.com", issue("late.example.com"))
    wait_until(lambda: served(port, "late.example.com") is not None)
    log = proc.log()
    assert log.count("certificate for bad.example.com skipped") == 1
    assert log.count("certificate for mismatch.example.com skipped") == 1
    # Keys are never shown nor logged.
    secret = good.key.splitlines()[1]
    assert secret not in log
    assert secret not in proc.get("/__gogeta/routes").text


def test_expiring_certificates_are_flagged_and_measured(
    tls_gogeta: TlsStart, certs: EtcdServer
) -> None:
    import datetime

    soon = issue("soon.example.com", not_after=datetime.datetime.now() + datetime.timedelta(days=3))
    store(certs, "soon.example.com", soon)
    store(certs, "a.example.com", A)
    proc, port = tls_gogeta()
    wait_until(lambda: served(port, "soon.example.com") == soon.der)
    hostnames = tls_state(proc)["hostnames"]
    assert isinstance(hostnames, dict)
    assert hostnames["soon.example.com"]["state"] == "expiring"
    assert hostnames["soon.example.com"]["expiring_soon"] is True
    assert hostnames["a.example.com"]["expiring_soon"] is False
    metrics = proc.get("/__gogeta/metrics").text
    line = next(
        ln for ln in metrics.splitlines() if ln.startswith("gogeta_certificate_expiry_seconds{")
    )
    assert 'hostname="soon.example.com"' in line  # soonest first
    assert 2 * 86400 < float(line.split()[-1]) <= 3 * 86400
    assert 'gogeta_certificates{state="expiring"} 1.0' in metrics
    assert 'gogeta_certificates{state="ok"} 1.0' in metrics


def test_a_bad_default_certificate_stops_gogeta_at_start(
    gogeta: Start, certs: EtcdServer, tmp_path: Path
) -> None:
    cert_file, _ = A.write(tmp_path, "a")
    _, key_file = issue("other.test").write(tmp_path, "other")
    proc = gogeta(
        "-etcdAddress",
        certs.url,
        "-tlsPort",
        str(free_port()),
        "-tlsCertFile",
        cert_file,
        "-tlsKeyFile",
        key_file,
        wait=False,
    )
    assert proc.proc is not None
    assert proc.proc.wait(timeout=30) == 2
    assert "the key does not match the certificate" in proc.log()


def test_under_gunicorn_every_worker_serves_tls_and_follows_etcd(certs: EtcdServer) -> None:
    from tests.gunicorn_process import Gunicorn

    store(certs, "a.example.com", A)
    tls_port = free_port()
    server = Gunicorn(
        {"GOGETA_ETCD_ADDRESS": certs.url, "GOGETA_TLS_PORT": str(tls_port)}, workers=2
    )
    try:
        server.start()
        pids: set[int] = set()

        def both_workers_answer_over_tls() -> bool:
            answer = https_get(tls_port, "a.example.com", "/__gogeta/health")
            pids.add(int(json.loads(answer.body)["pid"]))
            return pids == server.worker_pids()

        wait_until(both_workers_answer_over_tls, timeout=30, what="both workers over TLS")
        # The plain port is still plain.
        assert request(server.port, "/__gogeta/health").status == 200

        fresh = issue("new.example.com")
        store(certs, "new.example.com", fresh)
        # Every worker follows etcd: ten handshakes in a row, whichever workers take them.
        wait_until(
            lambda: all(served(tls_port, "new.example.com") == fresh.der for _ in range(10)),
            what="every worker serving the new certificate",
        )
        assert "Traceback" not in server.log()
    finally:
        server.stop()
