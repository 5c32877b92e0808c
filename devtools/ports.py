"""Loopback ports as `make run` checks them: free or not, who holds one, a GET to it.

Before starting anything the example refuses, in one line, a port that is taken, naming
the process that holds it when /proc tells (no privileges needed). Rule: standard library
only, no process started, nothing of gogeta imported.
"""

from __future__ import annotations

import http.client
import os
import socket
from pathlib import Path


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port. Connections of an earlier run in TIME_WAIT do not
    count: the servers started here bind with SO_REUSEADDR, as this check does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def holder_of(port: int) -> str:
    """Who listens on a TCP port, as far as /proc tells without privileges: "pid N (argv)"."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # local address is HEXIP:HEXPORT, state 0A is LISTEN
            if len(fields) > 9 and fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return "a process this script cannot see"
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if not any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                continue
            argv = (fd_dir.parent / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:  # gone, or another user's
            continue
        command = " ".join(" ".join(a.decode(errors="replace") for a in argv).split())
        return f"pid {fd_dir.parent.name} ({command[:120]})"
    return "a process of another user"


def check_free(port: int, whose: str, fix: str) -> None:
    if not port_free(port):
        raise RuntimeError(f"{whose} port {port} is taken by {holder_of(port)}: {fix}")


def http_get(host: str, port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()
