"""When to order a certificate, and how a fleet orders each one once (docs/behaviour.md §10).

A TLS handshake for a routed domain without a usable certificate asks `want`; so does the
renewal scan for a certificate past two thirds of its lifetime. An order runs in its own
greenlet and, first, creates `{certDir}/{host}/lock` with a TTL: the gogeta that created it
orders, the others wait for the certificate to arrive through their watch; a holder that
dies frees the lock when it expires. The challenge answers go to
`{certDir}/.acme/challenges/{token}` before the ACME server is told to validate, so
whichever gogeta its request reaches answers; the certificate and its key go to
`{certDir}/{host}/cert` and `/key`, which every gogeta serves. The account key lives at
`{certDir}/.acme/account`, created by the first gogeta that needs it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import gevent
from cryptography import x509

from issuance.backoff import Failure, after_failure
from issuance.client import AcmeClient, OrderFailed, new_account_key
from resolvers.certs import CertPair, ChallengeTree
from resolvers.source import Source, SourceDown, WriteRefused

log = logging.getLogger(__name__)

LOCK_SECONDS = 180  # the lock's TTL: longer than an order may take (issuance/client.py)
CHALLENGE_SECONDS = 600  # a published answer's TTL, should its withdrawal be lost
# Another gogeta holds the lock: handshakes meanwhile wait for its certificate, and the
# lock is not asked for again before this.
ELSEWHERE_SECONDS = 30.0
RENEW_SCAN_SECONDS = 600.0
FIRST_SCAN_SECONDS = 3.0  # after start: once the first loads are in, usually
SEEN_WAIT = 5.0  # at most, for this gogeta's own watch to show a published answer
# Then this long for the other gogetas' watches, which got the same event at the same time.
FLEET_SETTLE = 0.25


def renewal_due(chain: str, now: float) -> bool:
    """Whether the first certificate of `chain` is past two thirds of its lifetime (or
    unreadable: then a new one is due as well)."""
    try:
        leaf = x509.load_pem_x509_certificate(chain.encode("ascii", "replace"))
    except ValueError:
        return True
    start = leaf.not_valid_before_utc.timestamp()
    end = leaf.not_valid_after_utc.timestamp()
    return end - now < (end - start) / 3


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


class Orders:
    """The orders of this gogeta, their backoff, and the renewal scan."""

    def __init__(
        self,
        source: Source,
        cert_dir: str,
        directory_url: str,
        email: str,
        ca_file: str,
        routed: Callable[[str], bool],
        stored: Callable[[], Mapping[str, CertPair]],
        challenges: ChallengeTree,
        stopped_waiting: Callable[[str], None],
    ) -> None:
        self.source = source
        self.cert_dir = cert_dir
        self.routed = routed
        self.stored = stored  # the mirrored `certDir`: hostname → its pair
        self.challenges = challenges
        self.stopped_waiting = stopped_waiting  # no certificate coming: handshakes go on
        self.client = AcmeClient(directory_url, email, ca_file, self.account_key)
        self.directory_url = directory_url
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.running: dict[str, gevent.Greenlet] = {}
        self.failures: dict[str, Failure] = {}
        self.elsewhere: dict[str, float] = {}  # name → until when another gogeta orders it
        # name → until when not to look again: etcd had a certificate the order was not for
        self.quiet: dict[str, float] = {}
        self.issued: dict[str, float] = {}  # name → when this gogeta stored its certificate
        self.orders = 0  # orders this gogeta sent to the ACME server
        self._scanner: gevent.Greenlet | None = None

    # ------------------------------------------------------------ from handshakes

    def want(self, name: str) -> bool:
        """A handshake for `name` found no usable certificate: order one if `name` is a
        routed domain not backing off. True when one is on its way (worth waiting for).

        Called inside the handshake: it never blocks, the order runs in its own greenlet.
        """
        if name in self.running:
            return True
        now = time.time()
        if self.elsewhere.get(name, 0.0) > now:
            return True
        if not self.routed(name) or self.quiet.get(name, 0.0) > now:
            return False
        failure = self.failures.get(name)
        if failure is not None and failure.retry_at > now:
            return False
        self._start(name)
        return True

    def _start(self, name: str) -> None:
        greenlet = gevent.spawn(self._order, name)
        self.running[name] = greenlet
        greenlet.link(lambda _: self._ended(name, greenlet))

    def _ended(self, name: str, greenlet: gevent.Greenlet) -> None:
        if self.running.get(name) is greenlet:
            del self.running[name]

    # ------------------------------------------------------------ one order

    def _order(self, name: str) -> None:
        lock = f"{self.cert_dir}/{name}/lock"
        try:
            if not self.source.create(lock, self.owner, ttl=LOCK_SECONDS):
                log.info("certificate for %s: another gogeta is ordering it", name)
                self.elsewhere[name] = time.time() + ELSEWHERE_SECONDS
                return
            try:
                self._order_locked(name)
            finally:
                self.source.delete(lock, self.owner)
        except (SourceDown, WriteRefused) as exc:
            self._failed(name, f"etcd: {exc}")
        except OrderFailed as exc:
            self._failed(name, str(exc))
        except Exception as exc:  # an order must never take the process down
            log.exception("certificate order for %s failed unexpectedly", name)
            self._failed(name, f"{type(exc).__name__}: {exc}")

    def _order_locked(self, name: str) -> None:
        # The certificate may have been stored while we took the lock (by the gogeta that
        # held it just before): then there is nothing to order. etcd, not our mirror, says.
        current = self.source.get(f"{self.cert_dir}/{name}/cert")
        if current is not None and not renewal_due(current, time.time()):
            self.failures.pop(name, None)
            self.quiet[name] = time.time() + ELSEWHERE_SECONDS
            return
        log.info("certificate for %s: ordering from %s", name, self.directory_url)
        self.orders += 1
        chain, key = self.client.order(name, self._publish, self._withdraw)
        # The chain first: a key without its chain is the half-written pair TLS waits out.
        self.source.put(f"{self.cert_dir}/{name}/cert", chain)
        self.source.put(f"{self.cert_dir}/{name}/key", key)
        self.failures.pop(name, None)
        self.issued[name] = time.time()
        log.info("certificate for %s issued and stored in etcd", name)

    def _failed(self, name: str, reason: str) -> None:
        failure = after_failure(self.failures.get(name), reason, time.time())
        self.failures[name] = failure
        log.warning(
            "certificate order for %s failed (%d in a row), next try not before %s: %s",
            name,
            failure.count,
            _iso(failure.retry_at),
            reason,
        )
        self.stopped_waiting(name)

    def _publish(self, token: str, answer: str) -> None:
        self.source.create(f"{self.challenges.prefix}/{token}", answer, ttl=CHALLENGE_SECONDS)
        deadline = time.monotonic() + SEEN_WAIT
        while self.challenges.answer(token) != answer:
            if time.monotonic() > deadline:
                log.warning("challenge answer %s not seen through the watch: asking anyway", token)
                break
            gevent.sleep(0.02)
        gevent.sleep(FLEET_SETTLE)

    def _withdraw(self, token: str) -> None:
        answer = self.challenges.answer(token)
        try:
            if answer is not None:
                self.source.delete(f"{self.challenges.prefix}/{token}", answer)
        except (SourceDown, WriteRefused) as exc:
            log.info("challenge answer %s left to expire: %s", token, exc)

    def account_key(self) -> str:
        """The fleet's ACME account key from etcd; the first gogeta to need one makes it."""
        key = f"{self.cert_dir}/.acme/account"
        pem = self.source.get(key)
        if pem is None:
            if self.source.create(key, new_account_key()):
                log.info("ACME account key created in etcd at %s", key)
            pem = self.source.get(key)  # ours, or the one another gogeta made first
            if pem is None:
                raise OrderFailed(f"the account key at {key} vanished")
        return pem

    # ------------------------------------------------------------ renewal

    def start(self) -> None:
        if self._scanner is None:
            self._scanner = gevent.spawn(self._scan_forever)

    def stop(self) -> None:
        if self._scanner is not None:
            self._scanner.kill(block=False)
            self._scanner = None
        for greenlet in list(self.running.values()):
            greenlet.kill(block=False)

    def _scan_forever(self) -> None:
        gevent.sleep(FIRST_SCAN_SECONDS)
        while True:
            try:
                self.renew_due()
            except Exception:
                log.exception("the renewal scan failed")
            gevent.sleep(RENEW_SCAN_SECONDS)

    def renew_due(self) -> list[str]:
        """Start renewing every routed domain's certificate past two thirds of its life
        (not those backing off after a failure); the names started."""
        now = time.time()
        started = []
        for name, pair in list(self.stored().items()):
            if pair.cert is None or name in self.running or not self.routed(name):
                continue
            failure = self.failures.get(name)
            if failure is not None and failure.retry_at > now:
                continue
            if self.elsewhere.get(name, 0.0) > now or not renewal_due(pair.cert, now):
                continue
            self._start(name)
            started.append(name)
        return started

    # ------------------------------------------------------------ for /__gogeta/routes

    def describe(self) -> dict[str, Any]:
        now = time.time()
        names: dict[str, dict[str, Any]] = {}
        for name in sorted(self.running.keys() | self.failures.keys() | self.issued.keys()):
            shown: dict[str, Any] = {"state": "ordering" if name in self.running else "idle"}
            failure = self.failures.get(name)
            if failure is not None:
                if name not in self.running:
                    shown["state"] = "backing off" if failure.retry_at > now else "failed"
                shown["failures"] = failure.count
                shown["last_error"] = failure.reason
                shown["failed_at"] = _iso(failure.at)
                shown["retry_at"] = _iso(failure.retry_at)
            if name in self.issued:
                shown["issued_at"] = _iso(self.issued[name])
            names[name] = shown
        for name, until in self.elsewhere.items():
            if until > now and name not in names:
                names[name] = {"state": "ordered by another gogeta"}
        return {"directory": self.directory_url, "orders_sent": self.orders, "names": names}
