"""Child processes of the tests, and waiting for them: gogeta as a user starts it.

`LoggedProcess` runs a child with its output in a log file of LOG_DIR (removed at exit) and
stops it by SIGTERM; `GogetaProcess` is `python gogeta.py -flags...`. Waiting is always
`wait_until`, a poll until a deadline, never a fixed sleep.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from devtools.machine import free_port
from tests.http_client import Response, request

ROOT = Path(__file__).resolve().parent.parent
# The test run's process logs (gogeta, gunicorn, etcd), in one directory removed at exit.
LOG_DIR = Path(tempfile.mkdtemp(prefix="gogeta-tests-"))
atexit.register(shutil.rmtree, LOG_DIR, ignore_errors=True)
T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | Literal[False] | None],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "",
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may fail until the thing is up
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or condition}"
                + (f" (last error: {last_error!r})" if last_error else "")
            )
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class LoggedProcess:
    """A child process with its output in a log file of LOG_DIR, stopped by SIGTERM."""

    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    stop_timeout = 15.0  # seconds after SIGTERM before SIGKILL

    def spawn(self, argv: list[str], env: dict[str, str], prefix: str, cwd: Path = ROOT) -> None:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".log", dir=LOG_DIR)
        os.close(fd)
        self.log_path = Path(name)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after `stop_timeout`; the exit code, None if not started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


@dataclass
class GogetaProcess(LoggedProcess):
    """gogeta started as a user starts it: `python gogeta.py -flags...`."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0

    def start(self, wait: bool = True) -> GogetaProcess:
        self.port = self.port or free_port()
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        argv = [sys.executable, str(ROOT / "gogeta.py"), "-listenAddress", "127.0.0.1"]
        self.spawn([*argv, "-port", str(self.port), *self.args], env, "gogeta-")
        if wait:
            wait_until(self._listening_or_exited, timeout=20, what="gogeta to listen")
            assert self.proc is not None
            if self.proc.poll() is not None:  # fail now, not after the whole timeout
                raise AssertionError(f"gogeta exited {self.proc.returncode}:\n{self.log()}")
        return self

    def _listening_or_exited(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None or port_open(self.port)

    def get(self, path: str = "/", host: str | None = "example.com", **kw: Any) -> Response:
        return request(self.port, path, host, **kw)


Start = Callable[..., GogetaProcess]  # the `gogeta` fixture (conftest.py)


def through(gogeta: Start, target: str, *flags: str) -> GogetaProcess:
    """gogeta with the Dummy resolver: every request goes to `target`."""
    return gogeta("-resolverType", "Dummy", "-dummyTarget", target, *flags)
