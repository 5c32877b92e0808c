"""The soak's load: client threads over keep-alive connections, and what they saw.

Rule: a client classifies every answer as it comes (expected or not, by group); it never
retries, so that every connection-level error is counted.
"""

from __future__ import annotations

import array
import http.client
import json
import random
import threading
import time
from collections import Counter
from datetime import datetime

from bench.soak_churn import CHURN_SERVICES, STABLE_SERVICES, churn_domain, stable_domain

GROUPS = ("stable", "churn", "unknown")
CLIENT_TIMEOUT = 15.0
SCANNER_SHARE = 0.02
POST_SHARE = 0.1


class Stats:
    """Every answer and error, by group (stable, churn, unknown), thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: dict[str, Counter[str]] = {g: Counter() for g in GROUPS}
        self.errors: dict[str, Counter[str]] = {g: Counter() for g in GROUPS}
        self.unexpected: Counter[str] = Counter()
        self.examples: list[str] = []
        self.latencies: dict[str, array.array[float]] = {g: array.array("d") for g in GROUPS}
        self.total = 0

    def answer(self, group: str, kind: str, latency: float, unexpected: str | None) -> None:
        with self.lock:
            self.total += 1
            self.answers[group][kind] += 1
            self.latencies[group].append(latency)
            if unexpected:
                self._unexpected(f"{group}: {kind}", unexpected)

    def error(self, group: str, kind: str, detail: str) -> None:
        with self.lock:
            self.total += 1
            self.errors[group][kind] += 1
            self._unexpected(f"{group}: {kind}", detail)

    def _unexpected(self, key: str, detail: str) -> None:
        self.unexpected[key] += 1
        if len(self.examples) < 50:
            self.examples.append(f"{datetime.now():%H:%M:%S.%f} {key}: {detail}")

    def unexpected_total(self) -> int:
        with self.lock:
            return sum(self.unexpected.values())


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed without answer"
    if isinstance(exc, http.client.IncompleteRead):
        return "truncated body"
    if isinstance(exc, http.client.HTTPException):
        return f"broken answer ({type(exc).__name__})"
    return type(exc).__name__


class Load:
    """`concurrency` threads, each with one keep-alive connection to gogeta."""

    def __init__(
        self, port: int, concurrency: int, backend_names: set[bytes], stats: Stats, seed: int
    ) -> None:
        self.port = port
        self.backend_names = backend_names
        self.stats = stats
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(seed + n,), name=f"client-{n}", daemon=True)
            for n in range(concurrency)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=CLIENT_TIMEOUT + 5)

    def _target(self, rng: random.Random) -> tuple[str, str]:
        draw = rng.random()
        if draw < SCANNER_SHARE:
            return "unknown", f"scan-{rng.randrange(10**9)}.soak.test"
        if draw < 0.5:
            return "stable", stable_domain(rng.randrange(STABLE_SERVICES))
        return "churn", churn_domain(rng.randrange(CHURN_SERVICES))

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            group, host = self._target(rng)
            post = rng.random() < POST_SHARE
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
            started = time.perf_counter()
            try:
                headers = {"Host": host, "Accept": "application/json"}
                if post:
                    conn.request(
                        "POST", "/soak", body=b"x" * rng.randrange(1, 4096), headers=headers
                    )
                else:
                    conn.request("GET", "/soak", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.stats.error(
                    group, error_kind(exc), f"{'POST' if post else 'GET'} {host} {exc!r}"
                )
                conn.close()
                conn = None
                continue
            latency = time.perf_counter() - started
            kind, unexpected = self._classify(group, host, resp.status, body)
            self.stats.answer(group, kind, latency, unexpected)
            if resp.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _classify(self, group: str, host: str, status: int, body: bytes) -> tuple[str, str | None]:
        if status == 200:
            if body in self.backend_names:
                return "200", None
            return "200 wrong body", f"{host} {body[:80]!r}"
        try:
            page = str(json.loads(body)["status"])
        except (ValueError, KeyError, TypeError):
            page = "?"
        kind = f"{status} {page}"
        if (
            group == "stable"
            or page in ("internal_error", "?", "bad_request")
            or (group == "unknown" and kind != "404 notfound")
        ):
            return kind, f"{host} {body[:120]!r}"
        return kind, None
