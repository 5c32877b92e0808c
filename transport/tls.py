"""TLS contexts: one per certificate, chosen by SNI at each handshake (docs/behaviour.md §9).

Every certificate in `certDir` becomes its own `ssl.SSLContext` when it arrives, so a
handshake only looks a name up: the exact name first, then the wildcard one label up
(`a.example.com` → `*.example.com`; never two labels, never the bare domain, RFC 6125
§6.4.3). The listening context holds the default certificate (`-tlsCertFile`), the
session-ticket keys and the SNI callback that swaps the chosen context in.

`ssl` loads certificates only from files: the PEM texts go through anonymous memory files
(`memfd_create`, never on a disk, never named), or where there are none through a 0600
temporary file removed at once. A key is never logged, shown or kept beyond its context.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import gevent
import gevent.event
import gevent.ssl

log = logging.getLogger(__name__)

# TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3's are OpenSSL's, all modern).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN = ("http/1.1",)
EXPIRING_SECONDS = 14 * 86400  # flagged in /__gogeta/routes from this close to the end
# A replacement written as two keys is briefly a mismatched pair: the previous certificate
# keeps serving this long before the new pair counts as broken.
SETTLE_SECONDS = 0.5

_PEM_CERT = re.compile(
    r"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----"
)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class CertificateProblem(ValueError):
    """Why a certificate cannot be served; the message never quotes the PEM."""


class Certificate(Protocol):
    """A hostname's stored PEM texts (resolvers.certs.CertPair): either may be missing."""

    @property
    def cert(self) -> str | None: ...

    @property
    def key(self) -> str | None: ...


def is_certificate_name(name: str) -> bool:
    """A hostname, or `*.` followed by one: the only wildcard covers one whole label."""
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    return bool(labels) and len(name) <= 253 and all(_LABEL.fullmatch(x) for x in labels)


def names_for(server_name: str) -> tuple[str, ...]:
    """The certificate names that may serve `server_name`, in order: exact, then wildcard."""
    name = server_name.lower().rstrip(".")
    parent = name.partition(".")[2]
    return (name, "*." + parent) if parent else (name,)


# ---------------------------------------------------------------- reading a certificate


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at `pos` (X.690 §8.1)."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def not_after_of(der: bytes) -> float:
    """The end of a certificate's validity (RFC 5280 §4.1.2.5), as epoch seconds."""
    _, start, _ = _tlv(der, 0)  # Certificate
    _, pos, _ = _tlv(der, start)  # tbsCertificate
    tag, _, end = _tlv(der, pos)
    if tag == 0xA0:  # [0] version
        pos = end
    for _ in range(3):  # serialNumber, signature, issuer
        pos = _tlv(der, pos)[2]
    _, validity, _ = _tlv(der, pos)
    _, _, end = _tlv(der, validity)  # notBefore
    tag, start, end = _tlv(der, end)  # notAfter
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, 50-99 being the 1900s
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    elif tag != 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
        raise ValueError("no validity time")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC).timestamp()


def leaf_not_after(chain: str) -> float:
    """notAfter of the first certificate of a PEM chain. Raises CertificateProblem."""
    found = _PEM_CERT.search(chain)
    if found is None:
        raise CertificateProblem("cert: no PEM certificate in it")
    try:
        pem = f"-----BEGIN CERTIFICATE-----\n{found.group(1)}-----END CERTIFICATE-----\n"
        return not_after_of(ssl.PEM_cert_to_DER_cert(pem))
    except (ValueError, IndexError) as exc:
        raise CertificateProblem("cert: not a readable X.509 certificate") from exc


# ---------------------------------------------------------------- contexts


def server_context() -> ssl.SSLContext:
    """A server context with gogeta's TLS policy: 1.2 and 1.3, modern suites, ALPN, tickets.

    gevent's SSLContext, so that its sockets wait cooperatively.
    """
    context: ssl.SSLContext = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.set_alpn_protocols(list(ALPN))
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.options &= ~ssl.OP_NO_TICKET  # session tickets, for quick resumption
    return context


def _no_password() -> bytes:
    # Without a callback OpenSSL would ask on the terminal for an encrypted key's password.
    raise CertificateProblem("key: encrypted keys are not supported")


@contextlib.contextmanager
def _memory_file(text: str) -> Iterator[str]:
    """A path to `text` that only this process can open, gone when the block ends."""
    data = text.encode("utf-8")
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        fd, path = memfd("gogeta-pem", os.MFD_CLOEXEC), ""
    else:
        fd, path = tempfile.mkstemp(prefix="gogeta-pem-")  # mode 0600
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield path or f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
        if path:
            os.unlink(path)


def load_into(context: ssl.SSLContext, cert: str, key: str) -> float:
    """Load a PEM chain and key into `context`; their notAfter. Raises CertificateProblem."""
    if "PRIVATE KEY-----" not in key:
        raise CertificateProblem("key: no PEM private key in it")
    not_after = leaf_not_after(cert)
    with _memory_file(cert) as cert_path, _memory_file(key) as key_path:
        try:
            context.load_cert_chain(cert_path, key_path, password=_no_password)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise CertificateProblem("the key does not match the certificate") from None
            raise CertificateProblem(f"invalid PEM ({exc.reason or 'unreadable'})") from None
    return not_after


def context_for_pair(cert: str, key: str) -> tuple[ssl.SSLContext, float]:
    context = server_context()
    return context, load_into(context, cert, key)


def load_files(context: ssl.SSLContext, cert_file: str, key_file: str) -> float:
    """`load_into` from files (-tlsCertFile, -tlsKeyFile)."""
    try:
        with open(cert_file) as cert, open(key_file) as key:
            return load_into(context, cert.read(), key.read())
    except (OSError, UnicodeDecodeError) as exc:
        raise CertificateProblem(f"cannot read: {exc}") from None


# ---------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class Entry:
    """One hostname's certificate as served, or why it is not."""

    context: ssl.SSLContext | None  # None: skipped
    not_after: float | None = None
    problem: str | None = None  # why the stored pair is not served
    previous: bool = False  # the stored pair is broken, the one before it still serves

    def describe(self, now: float) -> dict[str, Any]:
        if self.context is None:
            return {"state": "skipped", "reason": self.problem}
        assert self.not_after is not None
        left = self.not_after - now
        state = "expired" if left <= 0 else "expiring" if left < EXPIRING_SECONDS else "ok"
        shown: dict[str, Any] = {
            "state": state,
            "not_after": datetime.fromtimestamp(self.not_after, UTC).isoformat(),
            "expires_in_days": round(left / 86400, 1),
            "expiring_soon": left < EXPIRING_SECONDS,
        }
        if self.problem:
            shown.update(reason=self.problem, serving_previous=self.previous)
        return shown


class Certificates:
    """The certificates gogeta serves: `context` to listen with, `update` to follow etcd."""

    def __init__(self, default_cert_file: str = "", default_key_file: str = "") -> None:
        self.context = server_context()
        self.default: Entry | None = None
        if default_cert_file:
            not_after = load_files(self.context, default_cert_file, default_key_file)
            self.default = Entry(self.context, not_after)
        self.context.sni_callback = self._choose
        self.entries: dict[str, Entry] = {}
        self._stored: dict[str, Certificate] = {}
        self._settling: dict[str, gevent.Greenlet] = {}
        # Certificates on demand (docs/behaviour.md §10): `on_demand(name)` is asked about a
        # name without one, and says whether one is on its way; the handshake then waits up
        # to `hold` seconds for it (set by `update`, or by `stop_waiting` when an order fails).
        self.on_demand: Callable[[str], bool] | None = None
        self.hold = 0.0
        self._arrivals: dict[str, gevent.event.Event] = {}

    # The SNI callback runs inside each handshake, in the connection's greenlet: a lookup
    # in `entries`, which `update` changes one assignment at a time (atomic for greenlets).
    # Waiting here for a certificate on demand switches to other greenlets like any wait:
    # only this connection's handshake is held.
    def _choose(self, sslobj: Any, server_name: str | None, _: ssl.SSLContext) -> int | None:
        if server_name:
            for name in names_for(server_name):
                entry = self.entries.get(name)
                if entry is not None and entry.context is not None:
                    sslobj.context = entry.context
                    return None
            name = server_name.lower().rstrip(".")
            if self.on_demand is not None and self.on_demand(name):
                self._arrivals.setdefault(name, gevent.event.Event()).wait(self.hold)
                entry = self.entries.get(name)
                if entry is not None and entry.context is not None:
                    sslobj.context = entry.context
                    return None
        if self.default is not None:
            return None  # the listening context's certificate
        # No certificate: refuse with an alert (RFC 6066 §3), the process serves on.
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        """The context a handshake for `server_name` gets (None: the default, if any)."""
        for name in names_for(server_name):
            entry = self.entries.get(name)
            if entry is not None and entry.context is not None:
                return entry.context
        return None

    def stop_waiting(self, host: str) -> None:
        """Wake the handshakes waiting for `host`: its certificate came, or none is coming."""
        arrived = self._arrivals.pop(host, None)
        if arrived is not None:
            arrived.set()

    def update(self, changes: Mapping[str, Certificate | None]) -> None:
        """Follow the stored pairs: `changes` maps each changed hostname to its pair now."""
        for host, pair in changes.items():
            settling = self._settling.pop(host, None)
            if settling is not None:
                settling.kill(block=False)
            if pair is None:
                self._stored.pop(host, None)
                if self.entries.pop(host, None) is not None:
                    log.info("certificate for %s removed", host)
                continue
            self._stored[host] = pair
            self._build(host, pair)

    def _build(self, host: str, pair: Certificate) -> None:
        try:
            if not is_certificate_name(host):
                raise CertificateProblem("not a hostname, nor a wildcard of one whole label")
            if pair.cert is None or pair.key is None:
                raise CertificateProblem("incomplete: no " + ("key" if pair.cert else "cert"))
            context, not_after = context_for_pair(pair.cert, pair.key)
        except CertificateProblem as exc:
            current = self.entries.get(host)
            if current is not None and current.context is not None:
                # Maybe half of a replacement: the other key may be on its way.
                self.entries[host] = Entry(current.context, current.not_after, str(exc), True)
                self._settling[host] = gevent.spawn_later(
                    SETTLE_SECONDS, self._settle, host, pair, str(exc)
                )
                return
            self._skip(host, pair, str(exc))
            return
        replaced = host in self.entries
        self.entries[host] = Entry(context, not_after)
        log.info("certificate for %s %s", host, "replaced" if replaced else "loaded")
        self.stop_waiting(host)  # the handshakes waiting for it go on, now with it

    def _settle(self, host: str, pair: Certificate, problem: str) -> None:
        self._settling.pop(host, None)
        if self._stored.get(host) is pair:
            self._skip(host, pair, problem)

    def _skip(self, host: str, pair: Certificate, problem: str) -> None:
        self.entries[host] = Entry(None, problem=problem)
        # Once per stored pair (update runs when it changes); a pair being written is news
        # only once complete.
        level = logging.INFO if problem.startswith("incomplete") else logging.WARNING
        log.log(level, "certificate for %s skipped: %s", host, problem)

    def describe(self, now: float | None = None) -> dict[str, Any]:
        """For /__gogeta/routes: every hostname's state, the default certificate's."""
        now = time.time() if now is None else now
        return {
            "default": None if self.default is None else self.default.describe(now),
            "hostnames": {h: e.describe(now) for h, e in sorted(self.entries.items())},
        }

    def figures(self) -> tuple[list[tuple[str, float]], dict[str, int]]:
        """For the metrics: `expiries()`, and how many certificates are in each state."""
        now = time.time()
        states: dict[str, int] = {}
        for entry in self.entries.values():
            state = entry.describe(now)["state"]
            states[state] = states.get(state, 0) + 1
        return self.expiries(), states

    def expiries(self) -> list[tuple[str, float]]:
        """(hostname, notAfter) of every certificate served, soonest first."""
        served = [(h, e.not_after) for h, e in self.entries.items() if e.not_after is not None]
        if self.default is not None and self.default.not_after is not None:
            served.append(("(default)", self.default.not_after))
        return sorted(served, key=lambda item: item[1])
