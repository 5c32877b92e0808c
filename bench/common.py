"""What `bench/run.py` and `bench/soak.py` share: ports, waiting, the processes they start.

Both run as scripts (`python bench/run.py`), so this directory is on `sys.path` and they
import this module as `common`.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RESULTS = ROOT / "bench" / "results"  # the recorded results, tracked by git
RUNS = RESULTS / "runs"  # every run's own copy, git-ignored


def recording(variable: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this run was asked to record its results in the tree (`BENCH_RECORD=1`)."""
    return environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on")


def result_stems(name: str, record: bool, stamp: str) -> list[Path]:
    """Where a run writes `.json` and `.md`: its own copy under runs/, always, and over the
    tracked `name` only when recording, so a quick or noisy run leaves the tree clean."""
    own = RUNS / f"{name}-{stamp}"
    return [RESULTS / name, own] if record else [own]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    errors: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException),
) -> Any:
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


def etcd_argv(
    binary: str, name: str, data_dir: Path, client_port: int, peer_port: int
) -> list[str]:
    """A single-node etcd with the v2 API on loopback ports."""
    url, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        binary,
        "--enable-v2",
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={name}={peer}",
        "--log-level=error",
    ]


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
