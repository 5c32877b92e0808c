"""gunicorn stopping with gogeta's workers (SIGTERM to the arbiter), at any moment.

A request in flight finishes while idle keep-alive connections close at once, and a stop
signal arriving while a worker is still starting (before gunicorn's worker sets its own
handlers) stops it long before the graceful timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time

import psutil

from tests.gunicorn_process import Gunicorn, StartGunicorn, dummy

# The `gunicorn` fixture, imported under its own name so that pytest finds it here.
from tests.gunicorn_process import gunicorn as gunicorn
from tests.support import Backend, HeldBackend, port_open, request, wait_until


def test_sigterm_to_the_arbiter_finishes_the_request_in_flight(gunicorn: StartGunicorn) -> None:
    with HeldBackend() as backend:
        server = gunicorn(dummy(backend.server.url))
        result: list[object] = []
        thread = threading.Thread(
            target=lambda: result.append(request(server.port, "/slow", timeout=30)), daemon=True
        )
        thread.start()
        assert backend.received.wait(10)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not port_open(server.port), what="the listener to close")
        backend.release.set()
        thread.join(30)
        assert server.proc.wait(timeout=30) == 0
    resp = result[0]
    assert (resp.status, resp.body) == (200, b"done")  # type: ignore[attr-defined]


def test_sigterm_closes_idle_keep_alive_connections_at_once(gunicorn: StartGunicorn) -> None:
    """A stopping worker does not wait for idle clients until the graceful timeout."""
    with Backend() as backend:
        server = gunicorn({**dummy(backend.url), "GOGETA_DRAIN_TIMEOUT": "60"})
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        with idle:
            idle.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\nGET /"):  # the backend echoes "GET /"
                chunk = idle.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            assert idle.recv(65536) == b""  # closed by gogeta, not by the 60 s timeout
            assert server.proc.wait(timeout=30) == 0


GRACEFUL = 40  # seconds: gunicorn.conf.py's graceful_timeout, from GOGETA_DRAIN_TIMEOUT
# A lost stop signal leaves its worker to be killed at the graceful timeout; a stop that is
# only slow (a loaded machine: a few seconds) stays well under this.
HUNG = GRACEFUL * 3 / 4


def listening(server: Gunicorn) -> None:
    """The arbiter has bound its port; its workers are about to be forked."""

    def bound() -> bool:
        server.check_running()
        return port_open(server.port)

    wait_until(bound, timeout=30)


def forked(server: Gunicorn) -> None:
    """Every worker process exists; none has necessarily set its own signal handlers."""
    wait_until(lambda: len(server.worker_pids()) == server.workers, timeout=30)


def serving(server: Gunicorn) -> None:
    wait_until(server.ready, timeout=30, what="every worker to answer")


def respawned(server: Gunicorn) -> None:
    """One worker killed and its replacement just forked."""
    serving(server)
    dead = min(server.worker_pids())
    os.kill(dead, signal.SIGKILL)
    wait_until(
        lambda: dead not in (pids := server.worker_pids()) and len(pids) == server.workers,
        timeout=30,
        what="the replacement worker",
    )


def test_sigterm_at_any_moment_of_a_start_stops_long_before_the_graceful_timeout(
    gunicorn: StartGunicorn,
) -> None:
    """Until gunicorn's worker sets its own handlers (after gevent's patching), a worker
    just forked has the arbiter's: a stop signal arriving then must still stop it, not
    leave it to be killed at the graceful timeout. SIGTERM from the bind onwards, at
    start and right after a worker is replaced."""
    moments = [listening, forked, respawned] * 4 + [serving]
    stops: list[tuple[str, float]] = []
    with Backend() as backend:
        env = {**dummy(backend.url), "GOGETA_DRAIN_TIMEOUT": str(GRACEFUL)}
        for moment in moments:
            server = gunicorn(env, wait=False)
            moment(server)
            assert server.proc is not None
            workers = psutil.Process(server.proc.pid).children()
            sent = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            try:
                code = server.proc.wait(timeout=HUNG)
            except subprocess.TimeoutExpired:
                code = None
                for process in [*workers, psutil.Process(server.proc.pid)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        process.kill()
            stops.append((moment.__name__, round(time.monotonic() - sent, 2)))
            assert code in (0, None), server.log()
    slow = [(name, took) for name, took in stops if took >= HUNG]
    assert not slow, f"stops that waited for the graceful timeout: {slow} (all: {stops})"
