"""Signals of the standalone server (docs/behaviour.md §6), sent to a real gogeta process.

SIGUSR1 dumps every stack to the log, SIGUSR2 toggles a CPU profile that pstats reads,
SIGTERM/SIGINT stop accepting, let requests in flight finish (up to -drainTimeout) and exit 0.
"""

from __future__ import annotations

import http.client
import pstats
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from tests.support import (
    Backend,
    GogetaProcess,
    HeldBackend,
    Response,
    Start,
    port_open,
    request,
    through,
    wait_until,
)


@pytest.fixture
def held() -> Iterator[HeldBackend]:
    with HeldBackend() as backend:
        yield backend


def in_background(call: Callable[[], Response]) -> Callable[[], Response | BaseException]:
    """Run `call` in a thread; the returned function joins it and gives its result."""
    result: list[Response | BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # handed to the test, which asserts on it
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> Response | BaseException:
        thread.join(30)
        return result[0]

    return join


def exit_code(proxy: GogetaProcess, timeout: float = 20) -> int:
    assert proxy.proc is not None
    return proxy.proc.wait(timeout=timeout)


def test_sigusr1_logs_the_stack_of_every_thread_and_greenlet(
    gogeta: Start, held: HeldBackend
) -> None:
    proxy = through(gogeta, held.server.url + "/")
    answer = in_background(lambda: proxy.get("/slow"))
    assert held.received.wait(10)
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGUSR1)
    log = wait_until(lambda: "Greenlets" in proxy.log() and proxy.log(), what="a stack dump")
    assert "SIGUSR1" in log
    assert "Threads" in log
    # The greenlet serving the request in flight, blocked in the forwarder.
    assert "proxy/forward.py" in log
    assert "in send" in log
    held.release.set()
    resp = answer()
    assert isinstance(resp, Response) and resp.status == 200


def test_sigusr2_profiles_every_greenlet_into_a_pstats_file(gogeta: Start, tmp_path: Path) -> None:
    profile = tmp_path / "gogeta.prof"
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/", "-cpuProfile", str(profile))
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGUSR2)
        wait_until(lambda: "CPU profiling started" in proxy.log(), what="profiling to start")
        for i in range(20):
            assert proxy.get(f"/p{i}").status == 200
        assert not profile.exists()
        proxy.proc.send_signal(signal.SIGUSR2)
        wait_until(profile.exists, what="the profile file")
        wait_until(lambda: "CPU profile written" in proxy.log(), what="the profile log line")
        assert proxy.get("/after").status == 200  # still serving

    stats = pstats.Stats(str(profile))
    functions = {
        (Path(f).as_posix(), name): calls
        for (f, _, name), (calls, *_) in stats.stats.items()  # type: ignore[attr-defined]
    }
    served = {n for (f, n), c in functions.items() if f.endswith("proxy/app.py") and c >= 20}
    forwarded = {n for (f, n), c in functions.items() if f.endswith("proxy/forward.py")}
    # Request greenlets, not only the one that handled the signal.
    assert "__call__" in served
    assert "send" in forwarded

    viewer = subprocess.run(
        [sys.executable, "-m", "pstats", str(profile)],
        input="sort tottime\nstats 5\nquit\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert viewer.returncode == 0
    assert "function calls" in viewer.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(
    gogeta: Start, held: HeldBackend, signum: int
) -> None:
    proxy = through(gogeta, held.server.url + "/")
    answer = in_background(lambda: proxy.get("/slow"))
    assert held.received.wait(10)
    assert proxy.proc is not None
    proxy.proc.send_signal(signum)

    wait_until(lambda: not port_open(proxy.port), what="the listener to close")
    with pytest.raises(ConnectionRefusedError):
        request(proxy.port, "/new", timeout=2)
    assert proxy.proc.poll() is None  # still draining

    held.release.set()
    resp = answer()
    assert isinstance(resp, Response), resp
    assert (resp.status, resp.body) == (200, b"done")
    assert exit_code(proxy) == 0


def test_idle_keep_alive_connections_do_not_hold_the_drain(gogeta: Start) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/", "-drainTimeout", "60")
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("GET", "/one", headers={"Host": "example.com"})
        assert conn.getresponse().read() == b"GET /one"
        assert proxy.proc is not None
        started = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        assert exit_code(proxy) == 0
        assert time.monotonic() - started < 30  # well before the 60 s drain timeout
        conn.close()


def test_drain_timeout_cuts_what_is_left_and_still_exits_0(
    gogeta: Start, held: HeldBackend
) -> None:
    proxy = through(gogeta, held.server.url + "/", "-drainTimeout", "1")
    answer = in_background(lambda: proxy.get("/never"))
    assert held.received.wait(10)
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGTERM)
    assert exit_code(proxy) == 0
    cut = answer()
    # Killed mid-request: pywsgi answers 500 if nothing was sent yet, else the socket closes.
    assert (
        isinstance(cut, (OSError, http.client.HTTPException)) or cast(Response, cut).status == 500
    ), cut
    assert "drain timeout: 1 connection(s) cut" in proxy.log()
