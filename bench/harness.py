"""The harness every benchmark runs in: paths, processes, ports, waiting, process measures.

Rule: nothing here knows what a benchmark measures or which program it starts; a process
started through `Processes` is always stopped, whatever happens to the script.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import psutil

from devtools.machine import etcd_binary, free_port

__all__ = ["etcd_binary", "free_port"]  # the repository's one copy, re-exported here

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
T = TypeVar("T")


def say(message: str) -> None:
    """A progress line on stderr, so that stdout holds only the results."""
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- waiting


def wait_for(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    errors: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException),
) -> T:
    """Poll `condition` until it returns something true; `errors` count as not yet."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except errors as exc:
            last = exc
        if time.monotonic() > deadline:
            because = f" (last: {last!r})" if last is not None else ""
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}{because}")
        time.sleep(0.01)


def listening(proc: subprocess.Popen[bytes], port: int, what: str) -> bool:
    """Whether `port` accepts connections; RuntimeError when `proc` has exited."""
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}")
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def wait_listening(proc: subprocess.Popen[bytes], port: int, what: str, timeout: float) -> None:
    wait_for(lambda: listening(proc, port, what), timeout, f"{what} to listen on {port}")


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child before exec: Linux sends it SIGTERM if the script dies first."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


class Processes:
    """Every process a script starts, so that each one is stopped, whatever happens.

    Each child runs in its own process group (a Ctrl-C reaches the script only, which
    stops them in order), dies with the script if the script is killed, and writes its
    output to `<workdir>/<name>.log`.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> subprocess.Popen[bytes]:
        def before_exec() -> None:
            _die_with_parent()
            if preexec_fn is not None:
                preexec_fn()

        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                process_group=0,
                preexec_fn=before_exec,
            )
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
        self._reap(proc)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        """SIGTERM to all, newest first, then wait for each (SIGKILL after 15 s)."""
        for proc in reversed(self.running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.running):
            self._reap(proc)
        self.running.clear()

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_path(name)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- measures


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and its living children (gunicorn's workers...)."""
    total = 0.0
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit towards `wanted`; return the soft limit reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # needs CAP_SYS_RESOURCE
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)
