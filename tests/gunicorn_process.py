"""gunicorn as an operator runs it, for the test files: `Gunicorn` and the `gunicorn` fixture.

Real gunicorn processes, with `gunicorn.conf.py` from the repository (so with its worker
class `gunicorn_hooks.ProxyWorker`; another `-k` where a test says), `--chdir` to the
repository so that `gogeta:create_app()` imports, and gogeta set by GOGETA_* only. A test
file imports the fixture under its own name (`gunicorn as gunicorn`) for pytest to find it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT, LoggedProcess, free_port, request, wait_until


@dataclass
class Gunicorn(LoggedProcess):
    env: dict[str, str]
    options: list[str] = field(default_factory=list)
    worker_class: str = ""  # `-k`; empty: gunicorn.conf.py's
    workers: int = 2
    cwd: Path = ROOT  # where gunicorn starts, and looks for gunicorn.conf.py
    port: int = 0
    answered: set[int] = field(default_factory=set)  # worker pids that served a request
    stop_timeout = 30.0

    def launch(self) -> Gunicorn:
        """Start gunicorn without waiting for it."""
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOGETA_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(self.env, PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "gunicorn", "--chdir", str(ROOT)]  # gogeta importable
        if self.worker_class:
            argv += ["-k", self.worker_class]
        argv += ["-w", str(self.workers), "-b", f"127.0.0.1:{self.port}", "--no-control-socket"]
        self.spawn([*argv, *self.options, "gogeta:create_app()"], env, "gunicorn-", self.cwd)
        return self

    def start(self) -> Gunicorn:
        self.launch()
        wait_until(self.ready, timeout=30, what="every gunicorn worker to answer")
        return self

    def ready(self) -> bool:
        """Every worker has answered a request (a worker serves once its app is loaded)."""
        self.check_running()
        pids = self.worker_pids()
        if len(pids) != self.workers:
            return False
        health = request(self.port, "/__gogeta/health", timeout=5)
        self.answered.add(int(json.loads(health.body)["pid"]))
        return pids <= self.answered

    def check_running(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited {self.proc.returncode}:\n{self.log()}")

    def worker_pids(self) -> set[int]:
        assert self.proc is not None
        return {p.pid for p in psutil.Process(self.proc.pid).children()}


StartGunicorn = Callable[..., Gunicorn]  # the `gunicorn` fixture


@pytest.fixture
def gunicorn() -> Iterator[StartGunicorn]:
    started: list[Gunicorn] = []

    def start(
        env: dict[str, str],
        *options: str,
        worker_class: str = "",
        workers: int = 2,
        cwd: Path = ROOT,
        wait: bool = True,
    ) -> Gunicorn:
        server = Gunicorn(env, list(options), worker_class, workers, cwd)
        started.append(server)
        return server.start() if wait else server.launch()

    yield start
    for server in started:
        server.stop()


def dummy(url: str) -> dict[str, str]:
    return {"GOGETA_RESOLVER_TYPE": "Dummy", "GOGETA_DUMMY_TARGET": url + "/"}
