"""Part 4, idle connections: gogeta's memory while it holds many keep-alive clients.

Rule: connections are opened in batches below the listen backlog and each carries one
request first, so what is measured is the memory of a held connection, not the backlog.
"""

from __future__ import annotations

import random
import re
import socket
import time
from dataclasses import dataclass

from bench.clients import Probe
from bench.harness import free_port, raise_nofile, rss_mb
from bench.rig import Rig
from bench.servers import SMALL_BODY, start_gogeta

REQUEST = b"GET /small HTTP/1.1\r\nHost: conn.bench\r\n\r\n"
BATCH = 100  # below gevent's default listen backlog (128)
REUSE_SAMPLE = 100


@dataclass(frozen=True)
class ConnectionsResult:
    connections: int
    rss_idle_mb: float
    rss_held_mb: float
    kb_per_connection: float
    open_s: float
    fresh_request_ms: float
    fresh_request_ok: bool
    sample_reused_ok: str  # "answered/asked" among held connections used again
    note: str | None


def run(rig: Rig) -> ConnectionsResult:
    wanted = rig.opts.connections + 512
    limit = raise_nofile(wanted)
    count = min(rig.opts.connections, limit - 512)
    note = (
        None if count == rig.opts.connections else f"open-file limit {limit}: {count} connections"
    )

    def raise_limit() -> None:
        raise_nofile(wanted)

    port = free_port()
    gogeta = start_gogeta(
        rig.procs,
        "gogeta-connections",
        port,
        ["-resolverType", "Dummy", "-dummyTarget", f"http://127.0.0.1:{rig.port_a}/"],
        preexec_fn=raise_limit,
    )
    socks: list[socket.socket] = []
    try:
        if Probe(port).get_once("conn.bench", "/small") != (200, SMALL_BODY):
            raise RuntimeError("gogeta does not serve /small")
        rss_idle = rss_mb(gogeta.pid)
        started = time.perf_counter()
        # A burst beyond the backlog gets SYNs dropped and 1 s retransmits, which would
        # measure the backlog, not the memory.
        for first in range(0, count, BATCH):
            group = []
            for _ in range(min(BATCH, count - first)):
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                s.sendall(REQUEST)
                group.append(s)
            for s in group:
                read_response(s)
            socks.extend(group)
        opened = time.perf_counter() - started
        time.sleep(1)
        rss_held = rss_mb(gogeta.pid)
        t0 = time.perf_counter()
        fresh = Probe(port).get_once("conn.bench", "/small")
        fresh_ms = (time.perf_counter() - t0) * 1000
        # Every held connection is still alive and usable (keep-alive, not closed by gogeta).
        reused = random.sample(socks, min(REUSE_SAMPLE, len(socks)))
        alive = 0
        for s in reused:
            s.sendall(REQUEST)
            alive += read_response(s)
    finally:
        for s in socks:
            s.close()
        rig.procs.stop(gogeta)
    return ConnectionsResult(
        connections=count,
        rss_idle_mb=rss_idle,
        rss_held_mb=rss_held,
        kb_per_connection=(rss_held - rss_idle) * 1024 / count,
        open_s=opened,
        fresh_request_ms=fresh_ms,
        fresh_request_ok=fresh == (200, SMALL_BODY),
        sample_reused_ok=f"{alive}/{len(reused)}",
        note=note,
    )


def read_response(sock: socket.socket) -> bool:
    """Read one response with a Content-Length body; True when it was a 200."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(m.group(1)) if m else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.startswith(b"HTTP/1.1 200")
