"""Certificates on demand (docs/behaviour.md §10) against a real ACME server: pebble.

gogeta runs as processes on the session's real etcd; pebble validates HTTP-01 on one
gogeta's plain port (its mock DNS says every name is 127.0.0.1); clients check the served
chain against pebble's own root, which pebble's management API serves.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acme_support import Pebble, pebble_missing
from tests.pki import issue
from tests.support import (
    Backend,
    EtcdServer,
    GogetaProcess,
    RawServer,
    free_port,
    port_open,
    wait_until,
)
from tests.tls_support import served, store

missing = pebble_missing()
pytestmark = pytest.mark.skipif(missing is not None, reason=missing or "")

DEFAULT = issue("default.localhost")


@pytest.fixture(scope="module")
def api(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "v2"))


@pytest.fixture
def certs(etcd: EtcdServer) -> Iterator[EtcdServer]:
    etcd.wipe("/certs")
    yield etcd
    etcd.wipe("/certs")


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend() as server:
        yield server


class Fleet:
    """gogetas with -acmeDirectory on one etcd, and the pebble validating on one of them."""

    def __init__(self, etcd: EtcdServer, directory: Path) -> None:
        self.etcd = etcd
        self.directory = directory
        self.procs: list[tuple[GogetaProcess, int]] = []
        self.pebble: Pebble | None = None
        self.default_files = DEFAULT.write(directory, "default")

    def start_pebble(self, http_port: int) -> Pebble:
        self.pebble = Pebble(self.directory / "pebble", http_port).start()
        return self.pebble

    def start(self, port: int = 0, acme_url: str = "", *flags: str) -> tuple[GogetaProcess, int]:
        assert acme_url or self.pebble is not None
        tls_port = free_port()
        args = [
            *self.etcd.flags,
            "-tlsPort",
            str(tls_port),
            "-acmeDirectory",
            acme_url or (self.pebble.url if self.pebble else ""),
            "-acmeCaFile",
            self.pebble.ca_file if self.pebble else self.default_files[0],
            "-acmeEmail",
            "ops@example.test",
            "-tlsCertFile",
            self.default_files[0],
            "-tlsKeyFile",
            self.default_files[1],
            *flags,
        ]
        proc = GogetaProcess(args, port=port or free_port()).start()
        self.procs.append((proc, tls_port))
        wait_until(lambda: port_open(tls_port), what="the TLS port")
        wait_until(lambda: proc.get("/__gogeta/health").status == 200, what="the first load")
        return proc, tls_port

    def stop(self) -> None:
        # Printed, so that pytest shows them with a failure (captured otherwise).
        for proc, _ in self.procs:
            print(f"--- gogeta on {proc.port}\n{proc.log()}")
            proc.stop()
        if self.pebble is not None:
            print(f"--- pebble\n{self.pebble.server.log()}")
            self.pebble.stop()


@pytest.fixture
def fleet(certs: EtcdServer, tmp_path: Path) -> Iterator[Fleet]:
    started = Fleet(certs, tmp_path)
    yield started
    started.stop()


def route(etcd: EtcdServer, hostname: str, backend: Backend) -> None:
    client = etcd.client()
    client.write(f"/domains/{hostname}/type", "uri")
    client.write(f"/domains/{hostname}/value", backend.url + "/")


def verified(port: int, name: str, root: str) -> bytes | None:
    """The DER of the certificate served for `name` if it verifies against `root` for
    `name` (chain and hostname); None when it does not (the default certificate)."""
    context = ssl.create_default_context(cadata=root)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            with context.wrap_socket(sock, server_hostname=name) as tls:
                return tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError:
        return None


def acme_state(proc: GogetaProcess) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(proc.get("/__gogeta/routes").body)["tls"]["acme"]
    return state


def stored(etcd: EtcdServer, key: str) -> str | None:
    import etcd as etcd2

    from tests.etcd3_client import KeyNotFound

    try:
        value = etcd.client().read(key).value
    except (etcd2.EtcdKeyNotFound, KeyNotFound):
        return None
    return None if value is None else str(value)


def any_served(port: int, name: str) -> bytes | None:
    """The DER of whatever certificate a handshake for `name` gets; None when refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            with context.wrap_socket(sock, server_hostname=name) as tls:
                return tls.getpeercert(binary_form=True)
    except ssl.SSLError:
        return None


@pytest.mark.parametrize("api", ["v2", "v3"], indirect=True)
def test_a_routed_domain_gets_a_certificate_on_its_first_handshake(
    fleet: Fleet, certs: EtcdServer, backend: Backend
) -> None:
    port = free_port()
    pebble = fleet.start_pebble(port)
    proc, tls_port = fleet.start(port)
    route(certs, "shop.example.test", backend)
    wait_until(lambda: proc.get("/", host="shop.example.test").status == 200, what="the route")
    root = pebble.root()

    # The first handshake is held while the order runs (-acmeHoldSeconds, 10 s).
    first = verified(tls_port, "shop.example.test", root)
    der = first or wait_until(lambda: verified(tls_port, "shop.example.test", root), timeout=30)
    assert first is not None, "not within the hold"
    assert verified(tls_port, "shop.example.test", root) == der  # and the next ones
    assert pebble.validations() == 1

    # In etcd for the fleet: the chain, its key, the account key; no lock, no answer left.
    chain = stored(certs, "/certs/shop.example.test/cert")
    assert chain is not None and chain.count("BEGIN CERTIFICATE") >= 2
    assert "PRIVATE KEY" in (stored(certs, "/certs/shop.example.test/key") or "")
    assert "PRIVATE KEY" in (stored(certs, "/certs/.acme/account") or "")
    wait_until(lambda: stored(certs, "/certs/shop.example.test/lock") is None, what="the unlock")
    names = acme_state(proc)["names"]
    assert names["shop.example.test"]["state"] == "idle"
    assert "issued_at" in names["shop.example.test"]
    # Keys are never shown nor logged.
    key_line = (stored(certs, "/certs/shop.example.test/key") or "").splitlines()[1]
    assert key_line not in proc.get("/__gogeta/routes").text
    assert key_line not in proc.log()
    assert "Traceback" not in proc.log()


def test_an_unrouted_name_never_starts_an_order(
    fleet: Fleet, certs: EtcdServer, backend: Backend
) -> None:
    port = free_port()
    pebble = fleet.start_pebble(port)
    proc, tls_port = fleet.start(port)
    route(certs, "routed.example.test", backend)  # another name is routed
    wait_until(lambda: proc.get("/", host="routed.example.test").status == 200)
    for name in ("random.example.test", "www.nowhere.test", "routed.example.test.evil"):
        assert served(tls_port, name) == DEFAULT.der
    state = acme_state(proc)
    assert state["orders_sent"] == 0 and state["names"] == {}
    assert stored(certs, "/certs/random.example.test/lock") is None
    assert "new-order" not in pebble.server.log()


def test_two_gogetas_order_once_and_the_one_that_did_not_order_answers_the_challenge(
    fleet: Fleet, certs: EtcdServer, backend: Backend
) -> None:
    answering_port = free_port()
    pebble = fleet.start_pebble(answering_port)  # validates on the second gogeta only
    first, first_tls = fleet.start()
    second, second_tls = fleet.start(answering_port)
    root = pebble.root()

    # A new name hits both at once: one lock, one order, one certificate for both.
    route(certs, "both.example.test", backend)
    for proc in (first, second):
        wait_until(lambda p=proc: p.get("/", host="both.example.test").status == 200)  # type: ignore[misc]
    results: dict[int, bytes | None] = {}

    def handshake(port: int) -> None:
        results[port] = verified(port, "both.example.test", root)

    threads = [threading.Thread(target=handshake, args=(p,)) for p in (first_tls, second_tls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for port in (first_tls, second_tls):
        wait_until(lambda p=port: verified(p, "both.example.test", root), timeout=30)  # type: ignore[misc]
    assert verified(first_tls, "both.example.test", root) == verified(
        second_tls, "both.example.test", root
    )
    assert acme_state(first)["orders_sent"] + acme_state(second)["orders_sent"] == 1
    assert pebble.validations() == 1

    # A name only the first gogeta sees: it orders, pebble asks the second, which answers
    # from etcd.
    route(certs, "first.example.test", backend)
    wait_until(lambda: first.get("/", host="first.example.test").status == 200)
    before = acme_state(first)["orders_sent"]
    wait_until(lambda: verified(first_tls, "first.example.test", root), timeout=30)
    assert acme_state(first)["orders_sent"] == before + 1
    assert acme_state(second)["names"].get("first.example.test") is None
    wait_until(lambda: verified(second_tls, "first.example.test", root), what="the second")
    assert pebble.validations() == 2


def test_a_failing_order_backs_off_and_says_so_in_routes(
    fleet: Fleet, certs: EtcdServer, backend: Backend
) -> None:
    refused = free_port()  # nothing listens there: the ACME server is down
    proc, tls_port = fleet.start(0, f"https://127.0.0.1:{refused}/dir")
    route(certs, "down.example.test", backend)
    wait_until(lambda: proc.get("/", host="down.example.test").status == 200)

    # The failure ends the hold at once: the default certificate, well within 10 s.
    assert served(tls_port, "down.example.test") == DEFAULT.der
    names = wait_until(lambda: acme_state(proc)["names"] or None, what="the failure shown")
    down = names["down.example.test"]
    assert down["state"] == "backing off"
    assert down["failures"] == 1
    assert down["last_error"]
    retry = datetime.datetime.fromisoformat(down["retry_at"])
    failed = datetime.datetime.fromisoformat(down["failed_at"])
    assert 55 <= (retry - failed).total_seconds() <= 65  # one minute first

    # Meanwhile no new order: the next handshakes get the default at once.
    for _ in range(3):
        assert served(tls_port, "down.example.test") == DEFAULT.der
    assert acme_state(proc)["names"]["down.example.test"]["failures"] == 1
    assert proc.log().count("certificate order for down.example.test failed") == 1
    assert proc.get("/__gogeta/health").status == 200
    assert stored(certs, "/certs/down.example.test/lock") is None


def test_a_certificate_close_to_expiry_is_renewed_without_a_failed_handshake(
    fleet: Fleet, certs: EtcdServer, backend: Backend
) -> None:
    old = issue(
        "renew.example.test",
        not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2),
    )
    store(certs, "renew.example.test", old)
    route(certs, "renew.example.test", backend)
    port = free_port()
    pebble = fleet.start_pebble(port)
    root = pebble.root()
    proc, tls_port = fleet.start(port)

    failures: list[str] = []
    seen: set[bytes | None] = set()
    done = threading.Event()

    def keep_connecting() -> None:
        while not done.is_set():
            try:
                seen.add(any_served(tls_port, "renew.example.test"))
            except OSError as exc:
                failures.append(repr(exc))

    watcher = threading.Thread(target=keep_connecting)
    watcher.start()
    try:
        renewed = wait_until(
            lambda: verified(tls_port, "renew.example.test", root), timeout=60, what="renewal"
        )
    finally:
        done.set()
        watcher.join(timeout=30)
    assert renewed != old.der
    assert not failures, failures[:3]
    assert None not in seen  # every handshake got a certificate: the old one, then the new
    assert old.der in seen
    assert "PRIVATE KEY" in (stored(certs, "/certs/renew.example.test/key") or "")


def test_a_held_handshake_holds_no_other_connection(
    fleet: Fleet, certs: EtcdServer, backend: Backend
) -> None:
    """An ACME server that accepts and never answers: the order hangs; the handshake for
    its name waits -acmeHoldSeconds, every other connection goes on meanwhile."""
    silent = threading.Event()
    with RawServer(lambda conn: silent.wait(60)) as acme:
        proc, tls_port = fleet.start(0, f"{acme.url}/dir", "-acmeHoldSeconds", "3")
        route(certs, "slow.example.test", backend)
        wait_until(lambda: proc.get("/", host="slow.example.test").status == 200)
        held: list[float] = []

        def held_handshake() -> None:
            began = time.monotonic()
            assert served(tls_port, "slow.example.test") == DEFAULT.der
            held.append(time.monotonic() - began)

        thread = threading.Thread(target=held_handshake)
        thread.start()
        wait_until(lambda: acme.connections, what="the order to reach the ACME server")
        began = time.monotonic()
        for _ in range(5):
            assert served(tls_port, "other.example.test") == DEFAULT.der
            assert proc.get("/__gogeta/health").status == 200
        assert time.monotonic() - began < 2
        thread.join(timeout=20)
        assert held and 2.5 <= held[0] < 8, held
        assert acme_state(proc)["names"]["slow.example.test"]["state"] == "ordering"
        silent.set()


def test_challenge_answers_come_from_etcd_for_any_host_and_nothing_else_does(
    fleet: Fleet, certs: EtcdServer
) -> None:
    refused = free_port()  # no ACME server needed to answer a validation request
    proc, _ = fleet.start(0, f"https://127.0.0.1:{refused}/dir")
    token = "dG9rZW4tb2YtYS12YWxpZGF0aW9u"
    certs.client().write(f"/certs/.acme/challenges/{token}", f"{token}.thumbprint")
    path = f"/.well-known/acme-challenge/{token}"
    for host in ("any.example.test", "unrouted.test:8080"):
        resp = wait_until(
            lambda h=host: (r := proc.get(path, host=h)).status == 200 and r,  # type: ignore[misc]
            what="the challenge answer",
        )
        assert resp.text == f"{token}.thumbprint"
    assert proc.get("/.well-known/acme-challenge/bm90LWEtdG9rZW4tYXQtYWxs").status == 404
    # Not a token: never read as a key (the account key sits beside the challenges).
    for odd in ("..%2Faccount", "short", "a" * 300):
        assert proc.get(f"/.well-known/acme-challenge/{odd}").status == 404
