"""The clients a benchmark measures with: wrk (load) and `Probe` (one request at a time).

Rule: a client only talks to a server and times it; it never starts one. Every wrk run is
bounded by its duration (plus a margin), every probe by its timeout.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness import cpu_seconds

# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    mb_s: float
    requests: int
    socket_errors: int
    non_2xx: int
    cpu_us_per_req: float | None = None  # CPU of the server under test, per request


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_UNITS_MB = {"B": 1 / 2**20, "KB": 1 / 2**10, "MB": 1.0, "GB": 2**10, "TB": 2**20}


def parse_wrk(output: str) -> WrkResult:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
        return float(m.group(1)) * _UNITS_MS[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", output)
    total = re.search(r"(\d+) requests in", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if not (rps and total):
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        mb_s=float(transfer.group(1)) * _UNITS_MB[transfer.group(2)] if transfer else 0.0,
        requests=int(total.group(1)),
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(
    wrk: str,
    url: str,
    connections: int,
    seconds: int,
    server_pid: int | None = None,
    script: Path | None = None,
    env: dict[str, str] | None = None,
    extra: list[str] | None = None,
) -> WrkResult:
    """`wrk -t1 -cN -dSs --latency` (and `extra` options); with `server_pid`, the CPU that
    server (and its children) used per request over the run."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *(extra or [])]
    if script is not None:
        argv += ["-s", str(script)]
    before = cpu_seconds(server_pid) if server_pid else 0.0
    out = subprocess.run(
        [*argv, url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, **(env or {})},
    )
    result = parse_wrk(out.stdout)
    if server_pid and result.requests:
        used = cpu_seconds(server_pid) - before
        result.cpu_us_per_req = used / result.requests * 1e6
    return result


# --------------------------------------------------------------------------- probe


class Probe:
    """One keep-alive client connection to a server, reopened after any failure."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def get(self, host: str, path: str = "/") -> tuple[int, bytes]:
        """(status, body); (0, b"") when the server cannot be reached."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, self.timeout)
            self.conn.request("GET", path, headers={"Host": host})
            resp = self.conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, b""

    def get_once(self, host: str, path: str = "/") -> tuple[int, bytes]:
        try:
            return self.get(host, path)
        finally:
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_routed(
    probe: Probe,
    host: str,
    routed: Callable[[int, bytes], bool],
    since: float,
    timeout: float = 10.0,
    interval: float = 0.001,
) -> float | None:
    """Seconds from `since` (perf_counter) to the first answer `routed` accepts, polling
    every `interval`; None after `timeout`."""
    tick = time.perf_counter()
    while True:
        status, body = probe.get(host)
        now = time.perf_counter()
        if routed(status, body):
            return now - since
        if now - since > timeout:
            return None
        tick += interval
        delay = tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            tick = time.perf_counter()


def served(expected: bytes) -> Callable[[int, bytes], bool]:
    return lambda status, body: status == 200 and body == expected
